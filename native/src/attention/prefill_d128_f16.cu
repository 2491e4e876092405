// Prefill kernels for head dims (qk 128, vo 128), q in f16 (KV in f16 or float8): see prefill_kernels.cuh.
#include "prefill_kernels.cuh"

namespace fi {
namespace prefill_detail {
FI_PREFILL_INSTANTIATE(128, 128, __half)
}  // namespace prefill_detail
}  // namespace fi

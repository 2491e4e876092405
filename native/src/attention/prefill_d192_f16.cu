// Prefill kernels for head dims (qk 192, vo 128), q in f16 (KV in f16 or float8): see prefill_kernels.cuh.
#include "prefill_kernels.cuh"

namespace fi {
namespace prefill_detail {
FI_PREFILL_INSTANTIATE(192, 128, __half)
}  // namespace prefill_detail
}  // namespace fi

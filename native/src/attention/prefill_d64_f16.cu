// Prefill kernels for head dims (qk 64, vo 64), q in f16 (KV in f16 or float8): see prefill_kernels.cuh.
#include "prefill_kernels.cuh"

namespace fi {
namespace prefill_detail {
FI_PREFILL_INSTANTIATE(64, 64, __half)
}  // namespace prefill_detail
}  // namespace fi

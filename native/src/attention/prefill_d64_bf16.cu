// Prefill kernels for head dims (qk 64, vo 64), q in bf16 (KV in bf16 or float8): see prefill_kernels.cuh.
#include "prefill_kernels.cuh"

namespace fi {
namespace prefill_detail {
FI_PREFILL_INSTANTIATE(64, 64, __nv_bfloat16)
}  // namespace prefill_detail
}  // namespace fi

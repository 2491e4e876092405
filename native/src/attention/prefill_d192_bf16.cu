// Prefill kernels for head dims (qk 192, vo 128), q in bf16 (KV in bf16 or float8): see prefill_kernels.cuh.
#include "prefill_kernels.cuh"

namespace fi {
namespace prefill_detail {
FI_PREFILL_INSTANTIATE(192, 128, __nv_bfloat16)
}  // namespace prefill_detail
}  // namespace fi

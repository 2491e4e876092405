// Decode kernels for head_dim 128, q in bf16 (KV in bf16 or float8): see decode_kernels.cuh.
#include "decode_kernels.cuh"

namespace fi {
namespace decode_detail {
FI_DECODE_INSTANTIATE(128, __nv_bfloat16)
}  // namespace decode_detail
}  // namespace fi

// Decode kernels for head_dim 128, q in f16 (KV in f16 or float8): see decode_kernels.cuh.
#include "decode_kernels.cuh"

namespace fi {
namespace decode_detail {
FI_DECODE_INSTANTIATE(128, __half)
}  // namespace decode_detail
}  // namespace fi

// Prefill kernels for head dims (qk 256, vo 256), q in f16 (KV in f16 or float8): see prefill_kernels.cuh.
#include "prefill_kernels.cuh"

namespace fi {
namespace prefill_detail {
FI_PREFILL_INSTANTIATE(256, 256, __half)
}  // namespace prefill_detail
}  // namespace fi

#include "../common/runtime.h"
#include "tensor_ops.h"

using namespace fi;

extern "C" FI_API int32_t fi_tensor_random(const fi_tensor_desc* dst, int32_t distribution,
                                           uint64_t seed, uint64_t offset, double a, double b,
                                           void* stream) {
  return guard([&] {
    validate_desc(dst, "dst");
    require(distribution == FI_RANDOM_UNIFORM || distribution == FI_RANDOM_NORMAL,
            "distribution: expected FI_RANDOM_UNIFORM (0) or FI_RANDOM_NORMAL (1), got ", distribution);
    if (numel(*dst) == 0) return;
    if (dst->device == FI_DEVICE_CPU) return random_cpu(*dst, distribution, seed, offset, a, b);
#ifdef FI_WITH_CUDA
    set_device(dst->device);
    random_cuda(*dst, distribution, seed, offset, a, b, stream);
#endif
  });
}

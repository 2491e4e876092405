#include "../common/runtime.h"
#include "tensor_ops.h"

using namespace fi;

extern "C" FI_API int32_t fi_tensor_fill(const fi_tensor_desc* dst, double value, void* stream) {
  return guard([&] {
    validate_desc(dst, "dst");
    if (numel(*dst) == 0) return;
    const uint64_t bits = double_to_bits(value, dst->dtype);  // rounded once, on the host
    if (dst->device == FI_DEVICE_CPU) return fill_bits_cpu(*dst, bits);
#ifdef FI_WITH_CUDA
    set_device(dst->device);
    fill_bits_cuda(*dst, bits, stream);
#endif
  });
}

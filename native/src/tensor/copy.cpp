#include "../common/runtime.h"
#include "tensor_ops.h"

using namespace fi;

extern "C" FI_API int32_t fi_tensor_copy(const fi_tensor_desc* dst, const fi_tensor_desc* src,
                                         void* stream) {
  return guard([&] {
    validate_desc(dst, "dst");
    validate_desc(src, "src");
    require_same_shape_and_device(*dst, "dst", *src, "src");
    if (numel(*dst) == 0) return;
    if (dst->device == FI_DEVICE_CPU) return copy_cpu(*dst, *src);
#ifdef FI_WITH_CUDA
    set_device(dst->device);
    copy_cuda(*dst, *src, stream);
#endif
  });
}

// fi_quantization_packbits / fi_quantization_segment_packbits: validate every argument, then
// dispatch to the CPU or CUDA backend. Nothing is written unless every check passes.
#include "../common/runtime.h"
#include "quantization.h"

using namespace fi;

namespace {

void require_bits_input(const fi_tensor_desc& x) {
  require(x.dtype == FI_BOOL || x.dtype == FI_UINT8, "x: dtype must be bool or uint8, got ", dtype_name(x.dtype));
  require(x.ndim == 1, "x: expected 1 dimension, got shape ", shape_string(x));
}

void require_1d(const fi_tensor_desc& t, const char* name, int32_t dtype, int64_t n, const fi_tensor_desc& x) {
  require(t.dtype == dtype, name, ": dtype must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  require(t.ndim == 1 && t.shape[0] == n, name, ": shape must be [", n, "], got ", shape_string(t));
  require(t.device == x.device, name, ": on ", device_string(t.device), " but x is on ", device_string(x.device),
          "; all tensors must be on one device");
}

void require_bitorder(int32_t bitorder) {
  require(bitorder == 0 || bitorder == 1, "bitorder: must be 0 (big) or 1 (little), got ", bitorder);
}

}  // namespace

extern "C" FI_API int32_t fi_quantization_packbits(const fi_tensor_desc* x, const fi_tensor_desc* y, int32_t bitorder,
                                                   void* stream) {
  return guard([&] {
    validate_desc(x, "x");
    validate_desc(y, "y");
    require_bits_input(*x);
    require_bitorder(bitorder);
    const int64_t n = x->shape[0];
    require_1d(*y, "y", FI_UINT8, (n + 7) / 8, *x);
    require((n + 7) / 8 <= 1 || y->strides[0] != 0, "y: is written, so it must not be a broadcast view");
    if (n == 0) return;
    if (x->device == FI_DEVICE_CPU) return packbits_cpu(*x, *y, bitorder == 1);
#ifdef FI_WITH_CUDA
    set_device(x->device);
    packbits_cuda(*x, *y, bitorder == 1, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_quantization_segment_packbits(const fi_tensor_desc* x, const fi_tensor_desc* indptr,
                                                           const fi_tensor_desc* indptr_new, const fi_tensor_desc* y,
                                                           int32_t bitorder, void* stream) {
  return guard([&] {
    validate_desc(x, "x");
    validate_desc(indptr, "indptr");
    validate_desc(indptr_new, "indptr_new");
    validate_desc(y, "y");
    require_bits_input(*x);
    require_bitorder(bitorder);
    require(indptr->ndim == 1 && indptr->shape[0] >= 1, "indptr: expected shape [segments + 1], got ",
            shape_string(*indptr));
    const int64_t segments = indptr->shape[0] - 1;
    require_1d(*indptr, "indptr", FI_INT32, segments + 1, *x);
    require_1d(*indptr_new, "indptr_new", FI_INT32, segments + 1, *x);
    require(y->dtype == FI_UINT8, "y: dtype must be uint8, got ", dtype_name(y->dtype));
    require(y->ndim == 1, "y: expected 1 dimension, got shape ", shape_string(*y));
    require(y->device == x->device, "y: on ", device_string(y->device), " but x is on ", device_string(x->device),
            "; all tensors must be on one device");
    require(y->shape[0] <= 1 || y->strides[0] != 0, "y: is written, so it must not be a broadcast view");
    require(indptr_new->shape[0] <= 1 || indptr_new->strides[0] != 0,
            "indptr_new: is written, so it must not be a broadcast view");
    if (x->device == FI_DEVICE_CPU) {
      // Host memory: check the offsets here. On CUDA the caller checks them (lib/quantization.ts
      // does, from host copies) since reading them here would synchronize.
      const int32_t* ip = static_cast<const int32_t*>(indptr->data);
      const int64_t st = indptr->strides[0];
      require(ip[0] >= 0, "indptr: indptr[0] must be >= 0, got ", ip[0]);
      for (int64_t s = 0; s < segments; ++s) {
        require(ip[(s + 1) * st] >= ip[s * st], "indptr: must be non-decreasing, but indptr[", s + 1, "] = ",
                ip[(s + 1) * st], " < indptr[", s, "] = ", ip[s * st]);
      }
      require(ip[segments * st] <= x->shape[0], "indptr: indptr[", segments, "] = ", ip[segments * st],
              " exceeds the length of x (", x->shape[0], ")");
      int64_t total = 0;
      for (int64_t s = 0; s < segments; ++s) total += (int64_t(ip[(s + 1) * st]) - ip[s * st] + 7) / 8;
      require(y->shape[0] == total, "y: shape must be [", total, "] (sum of ceil(segment length / 8)), got ",
              shape_string(*y));
      return segment_packbits_cpu(*x, *indptr, *indptr_new, *y, bitorder == 1);
    }
#ifdef FI_WITH_CUDA
    set_device(x->device);
    segment_packbits_cuda(*x, *indptr, *indptr_new, *y, bitorder == 1, stream);
#endif
  });
}

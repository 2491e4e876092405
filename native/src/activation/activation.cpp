// fi_activation_{silu,gelu,gelu_tanh}_and_mul: validate every argument, then dispatch to the
// CPU or CUDA backend. Nothing is written unless every check passes.
#include <string>

#include "../common/runtime.h"
#include "activation.h"

using namespace fi;

namespace {

int32_t act_and_mul(ActKind kind, const fi_tensor_desc* input, const fi_tensor_desc* out, void* stream) {
  return guard([&] {
    validate_desc(input, "input");
    validate_desc(out, "out");
    const int32_t dt = input->dtype;
    if (!(dt == FI_FLOAT16 || dt == FI_BFLOAT16 || dt == FI_FLOAT32)) {
      fail(is_integral(dt) ? FI_ERR_INVALID_ARGUMENT : FI_ERR_UNSUPPORTED,
           "input: dtype must be float16, bfloat16 or float32, got ", dtype_name(dt));
    }
    require(input->ndim >= 1, "input: expected at least 1 dimension [..., 2 * d], got a scalar");
    const int nd = input->ndim;
    const int64_t last = input->shape[nd - 1];
    require(last % 2 == 0, "input: last dimension must be even (2 * d), got ", last);
    const int64_t d = last / 2;
    require(out->ndim == nd, "out: shape must be [..., ", d, "] (input's with the last dimension halved), got ",
            shape_string(*out));
    for (int k = 0; k < nd - 1; ++k) {
      require(out->shape[k] == input->shape[k], "out: shape must be input's with the last dimension halved, got ",
              shape_string(*out), " for input ", shape_string(*input));
    }
    require(out->shape[nd - 1] == d, "out: last dimension must be ", d, " (half of input's), got ",
            out->shape[nd - 1]);
    require(out->dtype == dt, "out: dtype must be ", dtype_name(dt), " (the dtype of input), got ",
            dtype_name(out->dtype));
    require(out->device == input->device, "out: on ", device_string(out->device), " but input is on ",
            device_string(input->device), "; all tensors must be on one device");
    if (numel(*out) == 0) return;
    require(input->strides[nd - 1] == 1, "input: last dimension must be contiguous (stride 1), got stride ",
            input->strides[nd - 1]);
    require(out->strides[nd - 1] == 1 || d == 1, "out: last dimension must be contiguous (stride 1), got stride ",
            out->strides[nd - 1]);
    for (int k = 0; k < nd - 1; ++k) {
      require(out->shape[k] <= 1 || out->strides[k] != 0, "out: is written, so it must not be a broadcast view ",
              "(stride 0 in dimension ", k, ")");
    }
    if (input->device == FI_DEVICE_CPU) return act_and_mul_cpu(kind, *input, *out);
#ifdef FI_WITH_CUDA
    set_device(input->device);
    act_and_mul_cuda(kind, *input, *out, stream);
#endif
  });
}

}  // namespace

extern "C" FI_API int32_t fi_activation_silu_and_mul(const fi_tensor_desc* input, const fi_tensor_desc* out,
                                                     void* stream) {
  return act_and_mul(kActSilu, input, out, stream);
}
extern "C" FI_API int32_t fi_activation_gelu_and_mul(const fi_tensor_desc* input, const fi_tensor_desc* out,
                                                     void* stream) {
  return act_and_mul(kActGelu, input, out, stream);
}
extern "C" FI_API int32_t fi_activation_gelu_tanh_and_mul(const fi_tensor_desc* input, const fi_tensor_desc* out,
                                                          void* stream) {
  return act_and_mul(kActGeluTanh, input, out, stream);
}

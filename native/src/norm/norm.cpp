// fi_norm_rmsnorm / fi_norm_fused_add_rmsnorm / fi_norm_layernorm: validate every argument,
// collapse each tensor to rows, then dispatch to the CPU or CUDA backend. Nothing is written
// unless every check passes.
#include <cmath>
#include <string>

#include "../common/runtime.h"
#include "norm.h"

using namespace fi;

namespace {

void require_same_device(const fi_tensor_desc& t, const char* name, const fi_tensor_desc& ref) {
  require(t.device == ref.device, name, ": on ", device_string(t.device), " but input is on ",
          device_string(ref.device), "; all tensors must be on one device");
}

void require_eps(double eps) {
  require(std::isfinite(eps) && eps > 0, "eps: must be finite and > 0, got ", eps);
}

// The input's shape [..., hidden]: at least one dimension.
void require_input(const fi_tensor_desc& t) {
  require_float_dtype(t, "input");
  require(t.ndim >= 1, "input: expected shape [..., hidden], got a 0-dimensional tensor");
}

// Same shape as input, same dtype and device.
void require_like_input(const fi_tensor_desc& t, const char* name, const fi_tensor_desc& in) {
  require(t.ndim == in.ndim, name, ": shape must be ", shape_string(in), " (the shape of input), got ",
          shape_string(t));
  for (int d = 0; d < t.ndim; ++d) {
    require(t.shape[d] == in.shape[d], name, ": shape must be ", shape_string(in),
            " (the shape of input), got ", shape_string(t));
  }
  require(t.dtype == in.dtype, name, ": dtype must be ", dtype_name(in.dtype), " (the dtype of input), got ",
          dtype_name(t.dtype));
  require_same_device(t, name, in);
}

// A [hidden] vector on input's device.
void require_vector(const fi_tensor_desc& t, const char* name, int64_t hidden, const fi_tensor_desc& in) {
  require(t.ndim == 1 && t.shape[0] == hidden, name, ": shape must be [", hidden,
          "] (the hidden size of input), got ", shape_string(t));
  require_same_device(t, name, in);
}

// Collapses a [..., hidden] tensor into rows of a single stride; the last dimension must be
// contiguous. `written`: rows must not alias each other.
NormRows collapse(const fi_tensor_desc& t, const char* name, bool written) {
  const int n = t.ndim;
  const int64_t hidden = t.shape[n - 1];
  NormRows r{t.data, 0};
  if (numel(t) == 0) return r;
  require(hidden == 1 || t.strides[n - 1] == 1, name, ": the last dimension must be contiguous (stride 1), got stride ",
          t.strides[n - 1]);
  // Leading dimensions of size 1 do not matter; the others must nest into one stride.
  int64_t stride = 0;
  bool have = false;
  int64_t expect_next = 0;  // stride the next (outer) non-unit dimension must have
  for (int d = n - 2; d >= 0; --d) {
    if (t.shape[d] == 1) continue;
    if (!have) {
      stride = t.strides[d];
      have = true;
    } else {
      require(t.strides[d] == expect_next, name, ": the leading dimensions must collapse into one row stride ",
              "(dimension ", d, " has stride ", t.strides[d], ", expected ", expect_next, ")");
    }
    expect_next = t.strides[d] * t.shape[d];
  }
  if (!have) stride = hidden;  // a single row
  if (written) {
    require(!have || stride >= hidden || stride <= -hidden, name,
            ": is written, so its rows must not overlap (row stride ", stride, ", hidden ", hidden, ")");
    require(hidden == 1 || t.strides[n - 1] != 0, name, ": is written, so it must not be a broadcast view");
  }
  r.stride = stride;
  return r;
}

int64_t rows_of(const fi_tensor_desc& t) {
  int64_t rows = 1;
  for (int d = 0; d < t.ndim - 1; ++d) rows *= t.shape[d];
  return rows;
}

// The fields both RMSNorm entries share, after checking weight and eps against input.
NormArgs rms_args(const fi_tensor_desc& input, const fi_tensor_desc& weight, double eps, int32_t gemma) {
  const int64_t hidden = input.shape[input.ndim - 1];
  require_vector(weight, "weight", hidden, input);
  require(weight.dtype == input.dtype, "weight: dtype must be ", dtype_name(input.dtype),
          " (the dtype of input), got ", dtype_name(weight.dtype));
  require(hidden <= 1 || weight.strides[0] == 1, "weight: must be contiguous, got stride ", weight.strides[0]);
  require_eps(eps);
  NormArgs a{};
  a.rows = rows_of(input);
  a.hidden = hidden;
  a.dtype = input.dtype;
  a.weight_dtype = weight.dtype;
  a.eps = eps;
  a.gemma = gemma != 0;
  a.weight = weight.data;
  return a;
}

}  // namespace

extern "C" FI_API int32_t fi_norm_rmsnorm(const fi_tensor_desc* input, const fi_tensor_desc* weight,
                                          const fi_tensor_desc* out, double eps, int32_t gemma,
                                          void* stream) {
  return guard([&] {
    validate_desc(input, "input");
    validate_desc(weight, "weight");
    validate_desc(out, "out");
    require_input(*input);
    NormArgs a = rms_args(*input, *weight, eps, gemma);
    require_like_input(*out, "out", *input);
    a.input = collapse(*input, "input", false);
    a.out = collapse(*out, "out", true);
    if (a.rows == 0 || a.hidden == 0) return;
    if (input->device == FI_DEVICE_CPU) return rmsnorm_cpu(a);
#ifdef FI_WITH_CUDA
    set_device(input->device);
    rmsnorm_cuda(a, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_norm_fused_add_rmsnorm(const fi_tensor_desc* input, const fi_tensor_desc* residual,
                                                    const fi_tensor_desc* weight, double eps, int32_t gemma,
                                                    void* stream) {
  return guard([&] {
    validate_desc(input, "input");
    validate_desc(residual, "residual");
    validate_desc(weight, "weight");
    require_input(*input);
    require_like_input(*residual, "residual", *input);
    NormArgs a = rms_args(*input, *weight, eps, gemma);
    a.input = collapse(*input, "input", true);
    a.out = a.input;
    a.residual = collapse(*residual, "residual", true);
    require(a.rows * a.hidden == 0 || input->data != residual->data, "residual: must not be input itself");
    if (a.rows == 0 || a.hidden == 0) return;
    if (input->device == FI_DEVICE_CPU) return fused_add_rmsnorm_cpu(a);
#ifdef FI_WITH_CUDA
    set_device(input->device);
    fused_add_rmsnorm_cuda(a, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_norm_layernorm(const fi_tensor_desc* input, const fi_tensor_desc* gamma,
                                            const fi_tensor_desc* beta, const fi_tensor_desc* out, double eps,
                                            void* stream) {
  return guard([&] {
    validate_desc(input, "input");
    validate_desc(gamma, "gamma");
    validate_desc(beta, "beta");
    validate_desc(out, "out");
    require_input(*input);
    const int64_t hidden = input->shape[input->ndim - 1];
    require_vector(*gamma, "gamma", hidden, *input);
    require_vector(*beta, "beta", hidden, *input);
    require(gamma->dtype == FI_FLOAT32 || gamma->dtype == input->dtype, "gamma: dtype must be float32 or ",
            dtype_name(input->dtype), " (the dtype of input), got ", dtype_name(gamma->dtype));
    require(beta->dtype == gamma->dtype, "beta: dtype must be ", dtype_name(gamma->dtype),
            " (the dtype of gamma), got ", dtype_name(beta->dtype));
    require_like_input(*out, "out", *input);
    require_eps(eps);
    NormArgs a{};
    a.rows = rows_of(*input);
    a.hidden = hidden;
    a.dtype = input->dtype;
    a.weight_dtype = gamma->dtype;
    a.eps = eps;
    a.input = collapse(*input, "input", false);
    a.out = collapse(*out, "out", true);
    require(hidden <= 1 || gamma->strides[0] == 1, "gamma: must be contiguous, got stride ", gamma->strides[0]);
    require(hidden <= 1 || beta->strides[0] == 1, "beta: must be contiguous, got stride ", beta->strides[0]);
    a.weight = gamma->data;
    a.beta = beta->data;
    if (a.rows == 0 || hidden == 0) return;
    if (input->device == FI_DEVICE_CPU) return layernorm_cpu(a);
#ifdef FI_WITH_CUDA
    set_device(input->device);
    layernorm_cuda(a, stream);
#endif
  });
}

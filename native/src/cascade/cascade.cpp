// fi_cascade_merge_state / fi_cascade_merge_states: validate every argument, then dispatch to
// the CPU or CUDA backend. Nothing is written unless every check passes.
#include <initializer_list>
#include <string>

#include "../common/runtime.h"
#include "cascade.h"

using namespace fi;

namespace {

void require_dtype(const fi_tensor_desc& t, int32_t dtype, const char* name) {
  require(t.dtype == dtype, name, ": dtype must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
}

void require_same_device(const fi_tensor_desc& t, const char* name, const fi_tensor_desc& ref,
                         const char* ref_name) {
  require(t.device == ref.device, name, ": on ", device_string(t.device), " but ", ref_name, " is on ",
          device_string(ref.device), "; all tensors must be on one device");
}

// Exactly `ndim` dimensions with the given sizes; `dims` names them for the message.
void require_shape(const fi_tensor_desc& t, const char* name, std::initializer_list<int64_t> shape,
                   const char* dims) {
  bool ok = t.ndim == int32_t(shape.size());
  int d = 0;
  for (const int64_t n : shape) ok = ok && t.shape[d++] == n;
  if (ok) return;
  std::string want = "[";
  d = 0;
  for (const int64_t n : shape) want += (d++ ? ", " : "") + std::to_string(n);
  fail(FI_ERR_INVALID_ARGUMENT, name, ": shape must be ", want, "] (", dims, "), got ",
       shape_string(t));
}

// An output written by one thread per element: no two indices may share an address.
void require_not_broadcast(const fi_tensor_desc& t, const char* name) {
  if (numel(t) == 0) return;  // nothing is written (and contiguous strides may be 0)
  for (int d = 0; d < t.ndim; ++d) {
    require(t.shape[d] <= 1 || t.strides[d] != 0, name, ": is written, so it must not be a broadcast ",
            "view (stride 0 in dimension ", d, ")");
  }
}

}  // namespace

extern "C" FI_API int32_t fi_cascade_merge_state(const fi_tensor_desc* v_a, const fi_tensor_desc* s_a,
                                                 const fi_tensor_desc* v_b, const fi_tensor_desc* s_b,
                                                 const fi_tensor_desc* v_out,
                                                 const fi_tensor_desc* s_out,
                                                 const fi_tensor_desc* mask, void* stream) {
  return guard([&] {
    validate_desc(v_a, "v_a");
    validate_desc(s_a, "s_a");
    validate_desc(v_b, "v_b");
    validate_desc(s_b, "s_b");
    validate_desc(v_out, "v_out");
    validate_desc(s_out, "s_out");
    if (mask) validate_desc(mask, "mask");

    require_float_dtype(*v_a, "v_a");
    require(v_a->ndim == 3, "v_a: expected 3 dimensions [seq_len, num_heads, head_dim], got shape ",
            shape_string(*v_a));
    const int64_t seq_len = v_a->shape[0], num_heads = v_a->shape[1], head_dim = v_a->shape[2];
    const char* v_dims = "[seq_len, num_heads, head_dim] of v_a";
    const char* s_dims = "[seq_len, num_heads] of v_a";
    require_shape(*v_b, "v_b", {seq_len, num_heads, head_dim}, v_dims);
    require_shape(*v_out, "v_out", {seq_len, num_heads, head_dim}, v_dims);
    require_shape(*s_a, "s_a", {seq_len, num_heads}, s_dims);
    require_shape(*s_b, "s_b", {seq_len, num_heads}, s_dims);
    require_shape(*s_out, "s_out", {seq_len, num_heads}, s_dims);
    require_dtype(*v_b, v_a->dtype, "v_b");
    require_dtype(*v_out, v_a->dtype, "v_out");
    require_dtype(*s_a, FI_FLOAT32, "s_a");
    require_dtype(*s_b, FI_FLOAT32, "s_b");
    require_dtype(*s_out, FI_FLOAT32, "s_out");
    require_same_device(*s_a, "s_a", *v_a, "v_a");
    require_same_device(*v_b, "v_b", *v_a, "v_a");
    require_same_device(*s_b, "s_b", *v_a, "v_a");
    require_same_device(*v_out, "v_out", *v_a, "v_a");
    require_same_device(*s_out, "s_out", *v_a, "v_a");
    require_not_broadcast(*v_out, "v_out");
    require_not_broadcast(*s_out, "s_out");
    if (mask) {
      require(mask->dtype == FI_BOOL || mask->dtype == FI_UINT8, "mask: dtype must be bool or uint8, got ",
              dtype_name(mask->dtype));
      require_shape(*mask, "mask", {seq_len}, "[seq_len] of v_a");
      require_same_device(*mask, "mask", *v_a, "v_a");
    }

    if (seq_len == 0 || num_heads == 0) return;
    if (v_a->device == FI_DEVICE_CPU) return merge_state_cpu(*v_a, *s_a, *v_b, *s_b, *v_out, *s_out, mask);
#ifdef FI_WITH_CUDA
    set_device(v_a->device);
    merge_state_cuda(*v_a, *s_a, *v_b, *s_b, *v_out, *s_out, mask, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_cascade_merge_states(const fi_tensor_desc* v, const fi_tensor_desc* s,
                                                  const fi_tensor_desc* v_out,
                                                  const fi_tensor_desc* s_out, void* stream) {
  return guard([&] {
    validate_desc(v, "v");
    validate_desc(s, "s");
    validate_desc(v_out, "v_out");
    validate_desc(s_out, "s_out");

    require_float_dtype(*v, "v");
    require(v->ndim == 4, "v: expected 4 dimensions [seq_len, num_states, num_heads, head_dim], got shape ",
            shape_string(*v));
    const int64_t seq_len = v->shape[0], num_states = v->shape[1], num_heads = v->shape[2],
                  head_dim = v->shape[3];
    require_shape(*s, "s", {seq_len, num_states, num_heads}, "[seq_len, num_states, num_heads] of v");
    require_shape(*v_out, "v_out", {seq_len, num_heads, head_dim}, "[seq_len, num_heads, head_dim] of v");
    require_shape(*s_out, "s_out", {seq_len, num_heads}, "[seq_len, num_heads] of v");
    require_dtype(*s, FI_FLOAT32, "s");
    require_dtype(*v_out, v->dtype, "v_out");
    require_dtype(*s_out, FI_FLOAT32, "s_out");
    require_same_device(*s, "s", *v, "v");
    require_same_device(*v_out, "v_out", *v, "v");
    require_same_device(*s_out, "s_out", *v, "v");
    require_not_broadcast(*v_out, "v_out");
    require_not_broadcast(*s_out, "s_out");

    if (seq_len == 0 || num_heads == 0) return;
    if (v->device == FI_DEVICE_CPU) return merge_states_cpu(*v, *s, *v_out, *s_out);
#ifdef FI_WITH_CUDA
    set_device(v->device);
    merge_states_cuda(*v, *s, *v_out, *s_out, stream);
#endif
  });
}

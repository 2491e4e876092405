#include "tensor_desc.h"

#include <string>

#include "runtime.h"
#include "status.h"

namespace fi {

Strided layout_of(const fi_tensor_desc& t) {
  Strided s{};
  s.ndim = t.ndim;
  for (int d = 0; d < t.ndim; ++d) {
    s.shape[d] = t.shape[d];
    s.strides[d] = t.strides[d];
  }
  return s;
}

int64_t numel(const fi_tensor_desc& t) {
  int64_t n = 1;
  for (int d = 0; d < t.ndim; ++d) n *= t.shape[d];
  return n;
}

bool is_contiguous(const fi_tensor_desc& t) {
  int64_t expected = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    if (t.shape[d] != 1 && t.strides[d] != expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

std::string shape_string(const fi_tensor_desc& t) {
  std::string s = "[";
  for (int d = 0; d < t.ndim; ++d) s += (d ? ", " : "") + std::to_string(t.shape[d]);
  return s + "]";
}

void validate_desc(const fi_tensor_desc* t, const char* name) {
  require(t != nullptr, name, ": descriptor is null");
  require(t->dtype >= 0 && t->dtype < FI_DTYPE_COUNT, name, ": unknown dtype code ", t->dtype);
  require(t->ndim >= 0 && t->ndim <= FI_MAX_DIMS, name, ": ndim must be in [0, ", FI_MAX_DIMS,
          "], got ", t->ndim);
  for (int d = 0; d < t->ndim; ++d) {
    require(t->shape[d] >= 0, name, ": shape[", d, "] must be >= 0, got ", t->shape[d]);
    require(t->strides[d] >= 0, name, ": strides[", d, "] must be >= 0, got ", t->strides[d]);
  }
  require(t->data != nullptr || numel(*t) == 0, name, ": data pointer is null");
  require_valid_device(t->device, name);
}

void require_float_dtype(const fi_tensor_desc& t, const char* name) {
  if (t.dtype == FI_FLOAT16 || t.dtype == FI_BFLOAT16 || t.dtype == FI_FLOAT32) return;
  const int32_t code = is_integral(t.dtype) ? FI_ERR_INVALID_ARGUMENT : FI_ERR_UNSUPPORTED;
  fail(code, name, ": dtype must be float16, bfloat16 or float32, got ", dtype_name(t.dtype));
}

void require_same_shape_and_device(const fi_tensor_desc& a, const char* a_name,
                                   const fi_tensor_desc& b, const char* b_name) {
  require(a.device == b.device, a_name, " and ", b_name, " must be on one device, got ",
          device_string(a.device), " and ", device_string(b.device));
  bool same = a.ndim == b.ndim;
  for (int d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
  require(same, b_name, ": shape ", shape_string(b), " must equal ", a_name, "'s shape ",
          shape_string(a));
}

namespace {

// First and one-past-last byte t can touch (its data pointer when empty).
void byte_span(const fi_tensor_desc& t, uintptr_t& lo, uintptr_t& hi) {
  int64_t min_off = 0, max_off = 0;
  bool empty = false;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] == 0) empty = true;
    const int64_t reach = (t.shape[d] - 1) * t.strides[d];
    (reach < 0 ? min_off : max_off) += reach;
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.data);
  const int64_t size = itemsize(t.dtype);
  lo = empty ? base : base + uintptr_t(min_off * size);
  hi = empty ? base : base + uintptr_t((max_off + 1) * size);
}

}  // namespace

void require_no_overlap(const fi_tensor_desc& out, const char* out_name, const fi_tensor_desc& in, const char* in_name) {
  if (out.device != in.device) return;
  uintptr_t a0, a1, b0, b1;
  byte_span(out, a0, a1);
  byte_span(in, b0, b1);
  require(a1 <= b0 || b1 <= a0, out_name, ": must not overlap ", in_name, " (it is written while ", in_name, " is read)");
}

}  // namespace fi

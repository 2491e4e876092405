// Validation and indexing of fi_tensor_desc, shared by every op.
#pragma once
#include <cstdint>
#include <string>

#include "dtype.h"
#include "flashinfer.h"

namespace fi {

// A strided layout that kernels take by value (no pointers to host memory).
struct Strided {
  int32_t ndim;
  int64_t shape[FI_MAX_DIMS];
  int64_t strides[FI_MAX_DIMS];
};

// Element offset (in elements) of row-major linear index `linear`.
FI_HD int64_t strided_offset(const Strided& s, int64_t linear) {
  int64_t offset = 0;
  for (int d = s.ndim - 1; d >= 0; --d) {
    const int64_t n = s.shape[d];
    offset += (linear % n) * s.strides[d];
    linear /= n;
  }
  return offset;
}

Strided layout_of(const fi_tensor_desc& t);
int64_t numel(const fi_tensor_desc& t);
bool is_contiguous(const fi_tensor_desc& t);
// Throws FI_ERR_INVALID_ARGUMENT naming `name` unless the descriptor is well formed.
void validate_desc(const fi_tensor_desc* t, const char* name);
// Throws unless both descriptors have the same shape and device.
void require_same_shape_and_device(const fi_tensor_desc& a, const char* a_name,
                                   const fi_tensor_desc& b, const char* b_name);
std::string shape_string(const fi_tensor_desc& t);
// Throws unless `out` (written) and `in` (read) touch disjoint bytes; different devices never overlap.
void require_no_overlap(const fi_tensor_desc& out, const char* out_name, const fi_tensor_desc& in, const char* in_name);
// Throws unless t holds float16, bfloat16 or float32 (the dtypes the float ops instantiate): an
// integer dtype is an invalid argument, another float one unsupported.
void require_float_dtype(const fi_tensor_desc& t, const char* name);

}  // namespace fi

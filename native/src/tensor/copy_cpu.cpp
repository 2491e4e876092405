#include <cstring>

#include "tensor_ops.h"

namespace fi {

void copy_cpu(const fi_tensor_desc& dst, const fi_tensor_desc& src) {
  const int64_t n = numel(dst);
  if (dst.dtype == src.dtype && is_contiguous(dst) && is_contiguous(src)) {
    std::memmove(dst.data, src.data, size_t(n) * itemsize(dst.dtype));
    return;
  }
  if (is_contiguous(dst) && is_contiguous(src)) {
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) cast_element(dst.data, dst.dtype, i, src.data, src.dtype, i);
    return;
  }
  const Strided dl = layout_of(dst), sl = layout_of(src);
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    cast_element(dst.data, dst.dtype, strided_offset(dl, i), src.data, src.dtype, strided_offset(sl, i));
  }
}

}  // namespace fi

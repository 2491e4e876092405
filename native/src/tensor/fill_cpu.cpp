#include "tensor_ops.h"

namespace fi {

void fill_bits_cpu(const fi_tensor_desc& dst, uint64_t bits) {
  const int64_t n = numel(dst);
  const Strided dl = layout_of(dst);
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) store_bits(dst.data, dst.dtype, strided_offset(dl, i), bits);
}

}  // namespace fi

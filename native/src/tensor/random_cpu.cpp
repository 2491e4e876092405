// Compiled with floating-point contraction off (see CMakeLists.txt) to match random.cu bit for bit.
#include <cmath>

#include "../common/philox.h"
#include "tensor_ops.h"

namespace fi {

void random_cpu(const fi_tensor_desc& dst, int32_t distribution, uint64_t seed, uint64_t offset,
                double a, double b) {
  const int64_t n = numel(dst);
  const Strided dl = layout_of(dst);
#pragma omp parallel for if (n > (1 << 14))
  for (int64_t i = 0; i < n; ++i) {
    const double v = random_value(distribution, seed, offset, uint64_t(i), a, b);
    store_bits(dst.data, dst.dtype, strided_offset(dl, i), double_to_bits(v, dst.dtype));
  }
}

}  // namespace fi

// CPU reference of the activation family: act(x) * y in float64 per element, rounded to the
// output dtype (nearest even). OpenMP over rows.
#include <cmath>

#include "activation.h"

namespace fi {
namespace {

double act(ActKind kind, double x) {
  switch (kind) {
    case kActSilu:
      return x / (1.0 + std::exp(-x));
    case kActGelu:
      return 0.5 * x * (1.0 + std::erf(x * M_SQRT1_2));
    case kActGeluTanh:
    default: {
      const double k = 0.7978845608028654;  // sqrt(2 / pi)
      return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
    }
  }
}

// Layout of the leading dimensions (all but the last) of t.
Strided leading(const fi_tensor_desc& t) {
  Strided s{};
  s.ndim = t.ndim - 1;
  for (int k = 0; k < s.ndim; ++k) {
    s.shape[k] = t.shape[k];
    s.strides[k] = t.strides[k];
  }
  return s;
}

}  // namespace

void act_and_mul_cpu(ActKind kind, const fi_tensor_desc& input, const fi_tensor_desc& out) {
  const int nd = input.ndim;
  const int64_t d = out.shape[nd - 1];
  int64_t rows = 1;
  for (int k = 0; k < nd - 1; ++k) rows *= input.shape[k];
  const Strided in_rows = leading(input), out_rows = leading(out);
  const int32_t dtype = input.dtype;
#pragma omp parallel for if (rows * d > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t io = strided_offset(in_rows, r), oo = strided_offset(out_rows, r);
    for (int64_t j = 0; j < d; ++j) {
      const double x = load_as_double(input.data, dtype, io + j);
      const double y = load_as_double(input.data, dtype, io + d + j);
      store_bits(out.data, dtype, oo + j, double_to_bits(act(kind, x) * y, dtype));
    }
  }
}

}  // namespace fi

// CPU reference of the norm family: each row in float64 (sums, mean, variance), results
// rounded to the dtype (nearest even). OpenMP over rows. Each row is read into a float64 buffer
// before anything of it is written, so out may be input itself.
#include <cmath>
#include <vector>

#include "norm.h"

namespace fi {
namespace {

double at(const void* data, int32_t dtype, int64_t i) { return load_as_double(data, dtype, i); }
void put(void* data, int32_t dtype, int64_t i, double x) { store_bits(data, dtype, i, double_to_bits(x, dtype)); }

template <class F>
void for_rows(const NormArgs& a, F&& body) {
#pragma omp parallel if (a.rows * a.hidden > (1 << 15))
  {
    std::vector<double> x(size_t(a.hidden));
#pragma omp for
    for (int64_t r = 0; r < a.rows; ++r) body(r, x);
  }
}

// x holds the row; writes x * rsqrt(mean(x^2) + eps) * w to out row r.
void rms_row(const NormArgs& a, const std::vector<double>& x, int64_t r) {
  double ss = 0;
  for (int64_t i = 0; i < a.hidden; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / double(a.hidden) + a.eps);
  const int64_t o = r * a.out.stride;
  for (int64_t i = 0; i < a.hidden; ++i) {
    const double w = at(a.weight, a.weight_dtype, i);
    put(a.out.data, a.dtype, o + i, x[i] * inv * (a.gemma ? 1.0 + w : w));
  }
}

}  // namespace

void rmsnorm_cpu(const NormArgs& a) {
  for_rows(a, [&](int64_t r, std::vector<double>& x) {
    const int64_t in = r * a.input.stride;
    for (int64_t i = 0; i < a.hidden; ++i) x[i] = at(a.input.data, a.dtype, in + i);
    rms_row(a, x, r);
  });
}

void fused_add_rmsnorm_cpu(const NormArgs& a) {
  for_rows(a, [&](int64_t r, std::vector<double>& x) {
    const int64_t in = r * a.input.stride, res = r * a.residual.stride;
    for (int64_t i = 0; i < a.hidden; ++i) {
      const uint64_t bits = double_to_bits(at(a.input.data, a.dtype, in + i) + at(a.residual.data, a.dtype, res + i), a.dtype);
      store_bits(a.residual.data, a.dtype, res + i, bits);
      x[i] = at(a.residual.data, a.dtype, res + i);  // the norm sees the rounded sum
    }
    rms_row(a, x, r);  // out is input
  });
}

void layernorm_cpu(const NormArgs& a) {
  for_rows(a, [&](int64_t r, std::vector<double>& x) {
    const int64_t in = r * a.input.stride, o = r * a.out.stride;
    double sum = 0;
    for (int64_t i = 0; i < a.hidden; ++i) sum += x[i] = at(a.input.data, a.dtype, in + i);
    const double mean = sum / double(a.hidden);
    double var = 0;
    for (int64_t i = 0; i < a.hidden; ++i) var += (x[i] - mean) * (x[i] - mean);
    const double inv = 1.0 / std::sqrt(var / double(a.hidden) + a.eps);
    for (int64_t i = 0; i < a.hidden; ++i) {
      put(a.out.data, a.dtype, o + i,
          (x[i] - mean) * inv * at(a.weight, a.weight_dtype, i) + at(a.beta, a.weight_dtype, i));
    }
  });
}

}  // namespace fi

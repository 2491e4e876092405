// CPU backend of GEMM: each output row accumulated in float64 over k (rows of op(b) streamed in
// order, so b is read along its rows), rounded once to the output dtype. Parallel over (batch,
// row) above a work threshold.
#include <vector>

#include "../common/dtype.h"
#include "../common/runtime.h"  // kCpuParallelWork
#include "gemm.h"

namespace fi {

void gemm_cpu(const GemmArgs& g) {
  const int64_t rows = g.batch * g.m;
  const bool parallel = rows > 1 && rows * g.n * g.k > kCpuParallelWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t br = 0; br < rows; ++br) {
    const int64_t b = br / g.m, i = br % g.m;
    std::vector<double> acc(size_t(g.n), 0.0);
    const int64_t a0 = b * g.a.batch + i * g.a.row, b0 = b * g.b.batch, o0 = b * g.out.batch + i * g.out.row;
    for (int64_t k = 0; k < g.k; ++k) {
      const double aik = load_as_double(g.a.data, g.dtype, a0 + k * g.a.col);
      const int64_t bk = b0 + k * g.b.row;
      for (int64_t j = 0; j < g.n; ++j) acc[size_t(j)] += aik * load_as_double(g.b.data, g.b_dtype, bk + j * g.b.col);
    }
    for (int64_t j = 0; j < g.n; ++j) {
      double v = g.alpha * acc[size_t(j)];
      if (g.beta != 0.0) v += g.beta * load_as_double(g.out.data, g.out_dtype, o0 + j * g.out.col);
      store_bits(g.out.data, g.out_dtype, o0 + j * g.out.col, double_to_bits(v, g.out_dtype));
    }
  }
}

}  // namespace fi

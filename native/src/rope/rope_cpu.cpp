// CPU reference of the rope family: angles and rotations in float64, results rounded to the
// dtype (nearest even). OpenMP over tokens. Each pair is read before it is written, so the
// output may be the input itself.
#include <cmath>

#include "rope.h"

namespace fi {
namespace {

int64_t idx(const void* p, int32_t dtype, int64_t i) { return load_as_int64(p, dtype, i); }

int64_t position_of(const RopeArgs& a, int64_t t) {
  if (a.pos_ids) return idx(a.pos_ids, a.index_dtype, t * a.pos_stride);
  // the request b with indptr[b] <= t < indptr[b + 1] (indptr validated: non-decreasing, 0..nnz)
  int64_t lo = 0, hi = a.batch - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (idx(a.indptr, a.index_dtype, mid * a.indptr_stride) <= t) lo = mid; else hi = mid - 1;
  }
  return idx(a.offsets, a.index_dtype, lo * a.offsets_stride) + t - idx(a.indptr, a.index_dtype, lo * a.indptr_stride);
}

void rotate(const RopeArgs& a, const RopeTensor& in, const RopeTensor& out, int64_t t, int64_t pos) {
  const int64_t half = a.rotary_dim / 2;
  for (int64_t h = 0; h < in.heads; ++h) {
    const int64_t i0 = t * in.s_tok + h * in.s_head, o0 = t * out.s_tok + h * out.s_head;
    for (int64_t i = 0; i < half; ++i) {
      const int64_t da = a.interleave ? 2 * i : i, db = a.interleave ? 2 * i + 1 : i + half;
      double c, s;
      if (a.cos_sin) {
        const float* row = a.cos_sin + pos * a.cos_sin_stride;
        c = row[i];
        s = row[half + i];
      } else {
        const double ang = double(pos) * a.freq[i];
        c = std::cos(ang);
        s = std::sin(ang);
      }
      const double xa = load_as_double(in.data, a.dtype, i0 + da), xb = load_as_double(in.data, a.dtype, i0 + db);
      store_bits(out.data, a.dtype, o0 + da, double_to_bits(xa * c - xb * s, a.dtype));
      store_bits(out.data, a.dtype, o0 + db, double_to_bits(xb * c + xa * s, a.dtype));
    }
    if (out.data != in.data || o0 != i0) {
      for (int64_t d = a.rotary_dim; d < a.head_dim; ++d) {
        store_bits(out.data, a.dtype, o0 + d, double_to_bits(load_as_double(in.data, a.dtype, i0 + d), a.dtype));
      }
    }
  }
}

}  // namespace

void rope_cpu(const RopeArgs& a) {
#pragma omp parallel for if (a.nnz * (a.q.heads + a.k.heads) * a.head_dim > (1 << 15))
  for (int64_t t = 0; t < a.nnz; ++t) {
    const int64_t pos = position_of(a, t);
    rotate(a, a.q, a.q_out, t, pos);
    rotate(a, a.k, a.k_out, t, pos);
  }
}

}  // namespace fi

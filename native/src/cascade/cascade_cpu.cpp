// CPU reference of the cascade family: each (row, head) merges its states in float64, then
// rounds v to its dtype (nearest even) and s to float32. OpenMP over (row, head) pairs.
#include <cmath>
#include <limits>
#include <vector>

#include "cascade.h"

namespace fi {
namespace {

// Where one state's v row lives: element d is at data + (offset + d * dim_stride) * itemsize.
struct StateRow {
  const void* data;
  int64_t offset;
  int64_t dim_stride;
};

// Merges the states of one (row, head): s[i] their log-sum-exps, rows[i] their v rows. Writes
// head_dim elements of v_out starting at element `out_offset` (stride `out_stride`) and returns
// the merged s. Reads every input before writing, so the output may be one of the inputs.
// `w` is scratch of s.size() elements.
double merge_one(const std::vector<double>& s, const std::vector<StateRow>& rows, int32_t dtype,
                 int64_t head_dim, void* v_out, int64_t out_offset, int64_t out_stride,
                 std::vector<double>& w) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const size_t n = s.size();
  double m = neg_inf;
  for (const double x : s) m = (x > m || x != x) ? x : m;  // a NaN propagates
  if (m == neg_inf) {  // no states, or only empty ones
    const uint64_t zero = double_to_bits(0.0, dtype);
    for (int64_t d = 0; d < head_dim; ++d) store_bits(v_out, dtype, out_offset + d * out_stride, zero);
    return neg_inf;
  }
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    w[i] = s[i] == neg_inf ? 0.0 : std::exp(s[i] - m);
    sum += w[i];
  }
  for (size_t i = 0; i < n; ++i) w[i] /= sum;
  for (int64_t d = 0; d < head_dim; ++d) {
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      if (s[i] == neg_inf) continue;  // an empty state's v is ignored, whatever it holds
      acc += w[i] * load_as_double(rows[i].data, dtype, rows[i].offset + d * rows[i].dim_stride);
    }
    store_bits(v_out, dtype, out_offset + d * out_stride, double_to_bits(acc, dtype));
  }
  return m + std::log(sum);
}

float load_float(const fi_tensor_desc& t, int64_t offset) { return static_cast<const float*>(t.data)[offset]; }
void store_float(const fi_tensor_desc& t, int64_t offset, double x) {
  static_cast<float*>(t.data)[offset] = float(x);
}

}  // namespace

void merge_state_cpu(const fi_tensor_desc& v_a, const fi_tensor_desc& s_a, const fi_tensor_desc& v_b,
                     const fi_tensor_desc& s_b, const fi_tensor_desc& v_out,
                     const fi_tensor_desc& s_out, const fi_tensor_desc* mask) {
  const int64_t seq_len = v_a.shape[0], num_heads = v_a.shape[1], head_dim = v_a.shape[2];
  const int64_t pairs = seq_len * num_heads;
#pragma omp parallel if (pairs * head_dim > (1 << 15))
  {
    std::vector<double> s(2), w(2);
    std::vector<StateRow> rows(2);
#pragma omp for
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t r = p / num_heads, h = p % num_heads;
      if (mask && load_as_int64(mask->data, mask->dtype, r * mask->strides[0]) == 0) continue;
      s[0] = load_float(s_a, r * s_a.strides[0] + h * s_a.strides[1]);
      s[1] = load_float(s_b, r * s_b.strides[0] + h * s_b.strides[1]);
      rows[0] = {v_a.data, r * v_a.strides[0] + h * v_a.strides[1], v_a.strides[2]};
      rows[1] = {v_b.data, r * v_b.strides[0] + h * v_b.strides[1], v_b.strides[2]};
      const double merged = merge_one(s, rows, v_a.dtype, head_dim, v_out.data,
                                      r * v_out.strides[0] + h * v_out.strides[1], v_out.strides[2], w);
      store_float(s_out, r * s_out.strides[0] + h * s_out.strides[1], merged);
    }
  }
}

void merge_states_cpu(const fi_tensor_desc& v, const fi_tensor_desc& s, const fi_tensor_desc& v_out,
                      const fi_tensor_desc& s_out) {
  const int64_t seq_len = v.shape[0], num_states = v.shape[1], num_heads = v.shape[2],
                head_dim = v.shape[3];
  const int64_t pairs = seq_len * num_heads;
#pragma omp parallel if (pairs * (num_states + 1) * head_dim > (1 << 15))
  {
    const size_t n = static_cast<size_t>(num_states);
    std::vector<double> sv(n), w(n);
    std::vector<StateRow> rows(n);
#pragma omp for
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t r = p / num_heads, h = p % num_heads;
      for (int64_t i = 0; i < num_states; ++i) {
        sv[i] = load_float(s, r * s.strides[0] + i * s.strides[1] + h * s.strides[2]);
        rows[i] = {v.data, r * v.strides[0] + i * v.strides[1] + h * v.strides[2], v.strides[3]};
      }
      const double merged = merge_one(sv, rows, v.dtype, head_dim, v_out.data,
                                      r * v_out.strides[0] + h * v_out.strides[1], v_out.strides[2], w);
      store_float(s_out, r * s_out.strides[0] + h * s_out.strides[1], merged);
    }
  }
}

}  // namespace fi

// CPU backend of the sampling family: each request finds its exact threshold (the kept tokens are
// those with probability >= the threshold), then inverts the CDF of the kept tokens in index
// order with one uniform (uniform 0 of the request). Sums are float64. Selection is by
// partitioning (expected linear time), not sorting. OpenMP over requests.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sampling.h"

namespace fi {
namespace {

template <typename T>
T at(const Vec1<T>& v, int64_t i) { return v.data[i * v.stride]; }

// The k-th largest of `v` (k >= 1; v is reordered). k > size: -inf (everything is kept).
float kth_largest(std::vector<float>& v, int64_t k) {
  if (k > int64_t(v.size())) return -std::numeric_limits<float>::infinity();
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
  return v[size_t(k - 1)];
}

// The largest value x of `v` (non-negative values; reordered) with sum(v[v >= x]) >= target;
// 0 when no such value exists (everything is kept).
float mass_threshold(std::vector<float>& v, double target) {
  double acc = 0;  // mass of the values above the active range
  size_t lo = 0, hi = v.size();
  while (lo < hi) {
    // Median of three as the pivot; three-way partition of [lo, hi) into > | == | <.
    float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi - 1];
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
    size_t gt = lo, i = lo, lt = hi;
    while (i < lt) {
      if (v[i] > pivot) std::swap(v[gt++], v[i++]);
      else if (v[i] < pivot) std::swap(v[i], v[--lt]);
      else ++i;
    }
    double mg = 0;
    for (size_t j = lo; j < gt; ++j) mg += v[j];
    const double me = double(pivot) * double(lt - gt);
    if (acc + mg >= target) {
      hi = gt;
    } else if (acc + mg + me >= target) {
      return pivot;
    } else {
      acc += mg + me;
      lo = lt;
    }
  }
  return 0.f;
}

// Inverse CDF over the tokens with p >= tau and p > 0, in index order; u in [0, 1).
int32_t draw(const float* p, int64_t vocab, float tau, float u) {
  double total = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (p[v] > 0 && p[v] >= tau) total += p[v];
  }
  const double target = double(u) * total;
  double acc = 0;
  int32_t last = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (p[v] > 0 && p[v] >= tau) {
      acc += p[v];
      last = int32_t(v);
      if (acc > target) return last;
    }
  }
  return last;  // rounding left the target at the very end
}

// The threshold of request b's filters over row p.
float threshold(const SampleArgs& a, int64_t b, const float* p, std::vector<float>& scratch) {
  const int32_t f = a.filters;
  if (f == 0) return 0.f;
  if (f & FI_SAMPLING_MIN_P) {
    const float min_p = a.min_p.data ? at(a.min_p, b) : a.min_p_val;
    const float mx = *std::max_element(p, p + a.vocab);
    return min_p * mx;  // float32, as the CUDA kernel computes it
  }
  float tau = 0.f;
  double total = 0;
  for (int64_t v = 0; v < a.vocab; ++v) total += p[v];
  if (f & FI_SAMPLING_TOP_K) {
    const int64_t k = a.top_k.data ? at(a.top_k, b) : a.top_k_val;
    scratch.assign(p, p + a.vocab);
    tau = std::max(tau, kth_largest(scratch, k));
    if (f & FI_SAMPLING_TOP_K_FIRST) {  // top-p is measured within the top k
      total = 0;
      for (int64_t v = 0; v < a.vocab; ++v) total += p[v] >= tau ? p[v] : 0.f;
    }
  }
  if (f & FI_SAMPLING_TOP_P) {
    const float top_p = a.top_p.data ? at(a.top_p, b) : a.top_p_val;
    scratch.clear();
    for (int64_t v = 0; v < a.vocab; ++v) {
      if (p[v] > 0) scratch.push_back(p[v]);
    }
    tau = std::max(tau, mass_threshold(scratch, double(top_p) * total));
  }
  return tau;
}

}  // namespace

void sample_cpu(const SampleArgs& a) {
#pragma omp parallel if (a.batch * a.vocab > (1 << 16))
  {
    std::vector<float> scratch;
    std::vector<double> w;
#pragma omp for
    for (int64_t b = 0; b < a.batch; ++b) {
      const int64_t row = a.indices.data ? at(a.indices, b) : b;
      const float* p = a.probs + row * a.row_stride;
      const float u = sampling_uniform(request_seed(a, b), request_base(a, b), 0);
      int32_t token;
      if (a.from_logits) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t v = 0; v < a.vocab; ++v) mx = std::max(mx, p[v]);
        w.resize(size_t(a.vocab));
        double total = 0;
        for (int64_t v = 0; v < a.vocab; ++v) total += w[v] = std::exp(double(p[v]) - double(mx));
        const double target = double(u) * total;
        double acc = 0;
        token = 0;
        for (int64_t v = 0; v < a.vocab; ++v) {
          if (w[v] > 0) {
            acc += w[v];
            token = int32_t(v);
            if (acc > target) break;
          }
        }
      } else {
        token = draw(p, a.vocab, threshold(a, b, p, scratch), u);
      }
      a.out[b * a.out_stride] = token;
    }
  }
}

void softmax_cpu(const SoftmaxArgs& a) {
#pragma omp parallel if (a.rows * a.vocab > (1 << 16))
  {
    std::vector<double> e;
#pragma omp for
    for (int64_t r = 0; r < a.rows; ++r) {
      const float* x = a.logits + r * a.in_stride;
      float* y = a.out + r * a.out_stride;
      const double t = a.temperature.data ? at(a.temperature, r) : a.temperature_val;
      double mx = -INFINITY;
      for (int64_t v = 0; v < a.vocab; ++v) mx = std::max(mx, double(x[v]) / t);
      e.resize(size_t(a.vocab));
      double sum = 0;
      for (int64_t v = 0; v < a.vocab; ++v) sum += e[v] = mx == -INFINITY ? 0.0 : std::exp(double(x[v]) / t - mx);
      for (int64_t v = 0; v < a.vocab; ++v) y[v] = sum > 0 ? float(e[v] / sum) : 0.f;
    }
  }
}

void renorm_cpu(const RenormArgs& a) {
#pragma omp parallel if (a.rows * a.vocab > (1 << 16))
  {
    std::vector<float> scratch;
#pragma omp for
    for (int64_t r = 0; r < a.rows; ++r) {
      const float* x = a.in + r * a.in_stride;
      float* y = a.out + r * a.out_stride;
      if (a.mask) {
        const int64_t k = a.top_k.data ? at(a.top_k, r) : a.top_k_val;
        scratch.resize(size_t(a.vocab));
        for (int64_t v = 0; v < a.vocab; ++v) scratch[v] = std::isnan(x[v]) ? -INFINITY : x[v];
        const float tau = kth_largest(scratch, k);
        for (int64_t v = 0; v < a.vocab; ++v) y[v] = !std::isnan(x[v]) && x[v] >= tau ? x[v] : -INFINITY;
        continue;
      }
      float tau;
      double total = 0;
      for (int64_t v = 0; v < a.vocab; ++v) total += x[v];
      if (a.filter == FI_SAMPLING_TOP_K) {
        scratch.assign(x, x + a.vocab);
        tau = kth_largest(scratch, a.top_k.data ? at(a.top_k, r) : a.top_k_val);
      } else {
        scratch.clear();
        for (int64_t v = 0; v < a.vocab; ++v) {
          if (x[v] > 0) scratch.push_back(x[v]);
        }
        tau = mass_threshold(scratch, double(a.top_p.data ? at(a.top_p, r) : a.top_p_val) * total);
      }
      double kept = 0;
      for (int64_t v = 0; v < a.vocab; ++v) kept += x[v] >= tau ? x[v] : 0.f;
      // Read the row fully before writing: out may be the input itself.
      for (int64_t v = 0; v < a.vocab; ++v) y[v] = x[v] >= tau && kept > 0 ? float(double(x[v]) / kept) : 0.f;
    }
  }
}

void chain_speculative_cpu(const ChainArgs& a) {
#pragma omp parallel if (a.batch * a.n * a.vocab > (1 << 16))
  {
    std::vector<float> w;
#pragma omp for
    for (int64_t b = 0; b < a.batch; ++b) {
      const uint64_t base = a.offset + uint64_t(b) * chain_counters(a.n);
      int32_t accepted = 0, emitted = 0;
      for (int64_t i = 0; i < a.n; ++i) {
        const int32_t id = a.draft_ids[b * a.ids_s0 + i * a.ids_s1];
        const float q = a.draft[b * a.draft_s0 + i * a.draft_s1 + id];
        const float p = a.target[b * a.target_s0 + i * a.target_s1 + id];
        const bool accept = sampling_uniform(a.seed, base, uint32_t(i)) * q < p;
        accepted += accept;
        if (accept && emitted == i) ++emitted;
      }
      const float* t = a.target + b * a.target_s0 + emitted * a.target_s1;
      w.assign(t, t + a.vocab);
      if (emitted < a.n) {  // the residual distribution max(p - q, 0) at the first rejection
        const float* q = a.draft + b * a.draft_s0 + emitted * a.draft_s1;
        bool any = false;
        for (int64_t v = 0; v < a.vocab; ++v) {
          w[v] = std::max(t[v] - q[v], 0.f);
          any = any || w[v] > 0;
        }
        if (!any) w.assign(t, t + a.vocab);
      }
      const int32_t token = draw(w.data(), a.vocab, 0.f, sampling_uniform(a.seed, base, uint32_t(a.n)));
      for (int64_t i = 0; i <= a.n; ++i) {
        a.out_ids[b * a.out_s0 + i * a.out_s1] =
            i < emitted ? a.draft_ids[b * a.ids_s0 + i * a.ids_s1] : i == emitted ? token : -1;
      }
      a.accepted[b * a.acc_s] = accepted;
      a.emitted[b * a.emit_s] = emitted;
    }
  }
}

}  // namespace fi

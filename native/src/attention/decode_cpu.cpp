// CPU backend of decode attention: the plan's work items computed in double precision, then
// the merge of split requests. Readable first; parallel over (work item, qo head).
#include <cmath>
#include <limits>
#include <vector>

#include "../common/tensor_desc.h"
#include "decode.h"

namespace fi {
namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

double element(const fi_tensor_desc& t, int64_t offset) { return load_as_double(t.data, t.dtype, offset); }

}  // namespace

void decode_run_cpu(const fi_decode_run_args& a) {
  const fi_decode_plan_info& p = a.plan;
  const int D = p.head_dim, Hq = p.num_qo_heads, group = p.num_qo_heads / p.num_kv_heads;
  const DecodePlanView plan = decode_plan_view(a.workspace, p.num_work, p.batch_size, p.off_indices);
  float* partial_o = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + p.off_partial_o);
  float* partial_lse = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + p.off_partial_lse);
  const int32_t valid_work = plan.header[0];
  const double q_scale = double(a.sm_scale) * a.k_scale;
  const double cap = a.logits_soft_cap;

  auto write_output = [&](int32_t r, int h, const std::vector<double>& o, double lse_nat) {
    for (int d = 0; d < D; ++d)
      store_bits(a.out.data, a.out.dtype, r * a.out.strides[0] + h * a.out.strides[1] + d, double_to_bits(o[d], a.out.dtype));
    if (a.lse.data) static_cast<float*>(a.lse.data)[r * a.lse.strides[0] + h * a.lse.strides[1]] = float(lse_nat);
  };

  // Threads only for enough work: waking them costs more than a small batch takes alone
  // (issue 16: 11 us on one thread against 80-100 us with the default threads, busy 2-core host).
  int64_t work = 0;
  for (int32_t w = 0; w < valid_work; ++w) work += int64_t(plan.work_end[w] - plan.work_begin[w]) * Hq * D;
#pragma omp parallel for schedule(dynamic) collapse(2) if (work > kCpuParallelWork)
  for (int32_t w = 0; w < valid_work; ++w) {
    for (int h = 0; h < Hq; ++h) {
      const int32_t r = plan.work_request[w], begin = plan.work_begin[w], end = plan.work_end[w];
      const int32_t len = plan.kv_len[r], kvh = h / group;
      std::vector<double> q(D), k(D), o(D, 0.0);
      for (int d = 0; d < D; ++d) q[d] = element(a.q, r * a.q.strides[0] + h * a.q.strides[1] + d);
      if (a.pos_encoding_mode == FI_POS_ENCODING_ROPE_LLAMA) apply_rope_cpu(q.data(), int(q.size()), len - 1, a.rope_scale, a.rope_theta);
      const double slope = a.pos_encoding_mode == FI_POS_ENCODING_ALIBI ? alibi_slope(h, Hq) : 0.0;
      double m = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (int32_t t = begin; t < end; ++t) {
        if (a.window_left >= 0 && t + a.window_left < len - 1) continue;
        const int64_t page = plan.indices[plan.page_indptr[r] + t / p.page_size], pos = t % p.page_size;
        const int64_t kbase = page * a.k.strides[0] + pos * a.k.strides[1] + kvh * a.k.strides[2];
        const int64_t vbase = page * a.v.strides[0] + pos * a.v.strides[1] + kvh * a.v.strides[2];
        for (int d = 0; d < D; ++d) k[d] = element(a.k, kbase + d);
        if (a.pos_encoding_mode == FI_POS_ENCODING_ROPE_LLAMA) apply_rope_cpu(k.data(), int(k.size()), t, a.rope_scale, a.rope_theta);
        double dot = 0.0;
        for (int d = 0; d < D; ++d) dot += q[d] * k[d];
        double logit = q_scale * dot + slope * (t - (len - 1));
        if (cap > 0) logit = cap * std::tanh(logit / cap);
        // Online softmax in natural units.
        const double m_new = std::max(m, logit);
        const double rescale = std::exp(m - m_new), weight = std::exp(logit - m_new);
        sum = sum * rescale + weight;
        for (int d = 0; d < D; ++d) o[d] = o[d] * rescale + weight * element(a.v, vbase + d);
        m = m_new;
      }
      double lse_nat = -std::numeric_limits<double>::infinity();
      if (sum > 0) {
        for (int d = 0; d < D; ++d) o[d] = o[d] / sum * a.v_scale;
        lse_nat = m + std::log(sum);
      }
      const int32_t slot = plan.work_slot[w];
      if (slot < 0) {
        write_output(r, h, o, lse_nat);
      } else {
        for (int d = 0; d < D; ++d) partial_o[(int64_t(slot) * Hq + h) * D + d] = float(o[d]);
        partial_lse[int64_t(slot) * Hq + h] = float(lse_nat * kLog2e);  // log2 units, as the CUDA backend
      }
    }
  }

  // Merge the partial states of split requests.
#pragma omp parallel for collapse(2) if (int64_t(p.num_partials) * Hq * D > kCpuParallelWork)
  for (int32_t r = 0; r < p.batch_size; ++r) {
    for (int h = 0; h < Hq; ++h) {
      const int32_t s0 = plan.merge_indptr[r], s1 = plan.merge_indptr[r + 1];
      if (s1 - s0 < 1) continue;
      double m = -std::numeric_limits<double>::infinity();
      for (int32_t s = s0; s < s1; ++s) m = std::max(m, double(partial_lse[int64_t(s) * Hq + h]));
      std::vector<double> o(D, 0.0);
      double sum = 0.0;
      if (std::isfinite(m)) {
        for (int32_t s = s0; s < s1; ++s) {
          const double weight = std::exp2(partial_lse[int64_t(s) * Hq + h] - m);
          sum += weight;
          for (int d = 0; d < D; ++d) o[d] += weight * partial_o[(int64_t(s) * Hq + h) * D + d];
        }
        for (int d = 0; d < D; ++d) o[d] /= sum;
      }
      write_output(r, h, o, std::isfinite(m) ? (m + std::log2(sum)) * kLn2 : m);
    }
  }
}

}  // namespace fi

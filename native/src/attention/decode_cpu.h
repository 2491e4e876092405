// CPU backend of decode attention as a template over an attention variant (variant_cpu.h): the
// plan's work items computed in double precision, then the merge of split requests. Readable
// first; parallel over (work item, qo head). The built-in backend (decode_cpu.cpp) instantiates it
// with BuiltinVariant; the kernel generator (lib/jit.ts) compiles user variants against it, with
// the same hooks as the prefill engine (one query row per request: qo_idx 0, qo_len 1, qo_row the
// request).
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "decode.h"
#include "variant_cpu.h"

namespace fi {

// What a hook sees of a decode run (the fields BuiltinVariant reads).
struct DecodeHookParams {
  int32_t pos_encoding;
  int32_t num_qo_heads;
  float logits_soft_cap;
};

template <class Variant>
void decode_run_cpu_variant(const fi_decode_run_args& a, const typename Variant::Params& vp) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;
  const fi_decode_plan_info& p = a.plan;
  const int D = p.head_dim, Hq = p.num_qo_heads, group = p.num_qo_heads / p.num_kv_heads;
  const DecodePlanView plan = decode_plan_view(a.workspace, p.num_work, p.batch_size, p.off_indices);
  float* partial_o = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + p.off_partial_o);
  float* partial_lse = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + p.off_partial_lse);
  const int32_t valid_work = plan.header[0];
  const double q_scale = double(a.sm_scale) * a.k_scale;
  const DecodeHookParams hp{a.pos_encoding_mode, p.num_qo_heads, a.logits_soft_cap};
  const bool rope = a.pos_encoding_mode == FI_POS_ENCODING_ROPE_LLAMA;
  auto element = [](const fi_tensor_desc& t, int64_t offset) { return load_as_double(t.data, t.dtype, offset); };

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
      if (rope) apply_rope_cpu(q.data(), D, len - 1, a.rope_scale, a.rope_theta);
      VariantIndex ix{r, 0, 0, h, kvh, 1, len, r};
      double m = kNegInf, sum = 0.0;
      for (int32_t t = begin; t < end; ++t) {
        ix.kv_idx = t;
        if (a.window_left >= 0 && t + a.window_left < len - 1) continue;
        if (!Variant::mask(hp, vp, ix)) continue;
        const int64_t page = plan.indices[plan.page_indptr[r] + t / p.page_size], pos = t % p.page_size;
        const int64_t kbase = page * a.k.strides[0] + pos * a.k.strides[1] + kvh * a.k.strides[2];
        const int64_t vbase = page * a.v.strides[0] + pos * a.v.strides[1] + kvh * a.v.strides[2];
        for (int d = 0; d < D; ++d) k[d] = element(a.k, kbase + d);
        if (rope) apply_rope_cpu(k.data(), D, t, a.rope_scale, a.rope_theta);
        double dot = 0.0;
        for (int d = 0; d < D; ++d) dot += q[d] * k[d];
        const double logit = Variant::logits(hp, vp, q_scale * dot, ix);
        if constexpr (!Variant::kUseSoftmax) {  // the transformed logit is the weight itself
          for (int d = 0; d < D; ++d) o[d] += logit * element(a.v, vbase + d);
          continue;
        }
        // Online softmax in natural units.
        const double m_new = std::max(m, logit);
        const double rescale = std::exp(m - m_new), weight = std::exp(logit - m_new);
        sum = sum * rescale + weight;
        for (int d = 0; d < D; ++d) o[d] = o[d] * rescale + weight * element(a.v, vbase + d);
        m = m_new;
      }
      double lse_nat = kNegInf;
      if constexpr (!Variant::kUseSoftmax) {
        for (int d = 0; d < D; ++d) o[d] *= a.v_scale;
        lse_nat = 0.0;  // partial states then add up
      } else if (sum > 0) {
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

  // Merge the partial states of split requests (softmax: weighted by their lse; else summed).
#pragma omp parallel for collapse(2) if (int64_t(p.num_partials) * Hq * D > kCpuParallelWork)
  for (int32_t r = 0; r < p.batch_size; ++r) {
    for (int h = 0; h < Hq; ++h) {
      const int32_t s0 = plan.merge_indptr[r], s1 = plan.merge_indptr[r + 1];
      if (s1 - s0 < 1) continue;
      std::vector<double> o(D, 0.0);
      if constexpr (!Variant::kUseSoftmax) {
        for (int32_t s = s0; s < s1; ++s)
          for (int d = 0; d < D; ++d) o[d] += partial_o[(int64_t(s) * Hq + h) * D + d];
        write_output(r, h, o, 0.0);
        continue;
      }
      double m = kNegInf;
      for (int32_t s = s0; s < s1; ++s) m = std::max(m, double(partial_lse[int64_t(s) * Hq + h]));
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

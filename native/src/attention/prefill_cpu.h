// CPU backend of the attention engine (prefill and decode plans) as a template over an attention variant: executes the plan
// exactly as the CUDA backend does (work items of packed query rows x a key range, per kv head;
// partial states for split requests, then the merge), in double precision, parallel over (work
// item, kv head). The built-in backend (prefill_cpu.cpp) instantiates it with BuiltinVariant; the
// kernel generator (lib/jit.ts) compiles user variants against this header.
//
// A variant provides (FlashInfer's hooks):
//   using Params = ...;                       extra per-launch parameters (any POD)
//   static constexpr bool kUseSoftmax;         false: out = sum_j w_j v_j with w_j the transformed
//                                              logit, no normalization, no lse
//   static double logits(const R&, const Params&, double logits, const VariantIndex&)
//       the logit of one (query row, key) from q.k * sm_scale * k_scale (natural-log domain)
//   static bool mask(const R&, const Params&, const VariantIndex&)
//       whether the key stays visible (checked after the plan's causal / custom / window mask)
//   static double query / key / output(const R&, const Params&, double x, const VariantIndex&, int dim)
//       element transforms of q and k (after RoPE) and of the output (normalized, merged, times
//       v_scale), applied when kQueryTransform / kKeyTransform / kOutputTransform
// (R: the run's parameters, PrefillParams; see variant_cpu.h.)
// RoPE (pos_encoding ROPE_LLAMA) rotates q and k before either hook, for every variant.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "../common/runtime.h"  // kCpuParallelWork
#include "prefill.h"
#include "variant_cpu.h"

namespace fi {

namespace prefill_cpu_detail {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Element offset of key j of request r (kv head h) in a K or V tensor.
inline int64_t kv_offset(const PrefillParams& p, int32_t r, int32_t j, int h, int64_t stride_page, int64_t stride_n, int64_t stride_h) {
  if (p.page_size == 0) return int64_t(p.plan.kv_indptr[r] + j) * stride_n + h * stride_h;
  const int64_t page = p.plan.indices[p.plan.kv_indptr[r] + j / p.page_size];
  return page * stride_page + int64_t(j % p.page_size) * stride_n + h * stride_h;
}

// The plan's own mask (causal, custom bits, window) for row i (position qpos) and key j.
inline bool plan_visible(const PrefillParams& p, int32_t r, int32_t i, int64_t qpos, int64_t j, int32_t kv_len) {
  bool visible = true;
  if (p.mask_mode == kMaskCausal) visible = j <= qpos;
  if (p.mask_mode == kMaskCustom) {
    const int64_t bit = int64_t(i) * kv_len + j;
    visible = (p.custom_mask[p.plan.mask_offset[r] + (bit >> 3)] >> (bit & 7)) & 1;
  }
  if (p.window_left >= 0 && j < qpos - p.window_left) visible = false;
  return visible;
}

}  // namespace prefill_cpu_detail

template <class Variant>
void prefill_run_cpu_variant(const PrefillParams& p, const typename Variant::Params& vp) {
  using namespace prefill_cpu_detail;
  const PrefillPlanView& plan = p.plan;
  const int G = p.num_qo_heads / p.num_kv_heads, Dqk = p.head_dim_qk, Dvo = p.head_dim_vo, Hq = p.num_qo_heads;
  const int tile = p.cta_tile_q;
  const double q_scale = double(p.sm_scale) * p.k_scale;
  const bool rope = p.pos_encoding == FI_POS_ENCODING_ROPE_LLAMA;

  // Writes global row n, qo head h (of request r): the output transform, then out and lse.
  auto write_out = [&](int32_t r, int64_t n, int h, const double* o, double lse) {
    const int32_t qo_len = plan.qo_indptr[r + 1] - plan.qo_indptr[r];
    const VariantIndex ix{r, int(n - plan.qo_indptr[r]), -1, h, h / G, qo_len, plan.kv_len[r], n};
    for (int d = 0; d < Dvo; ++d) {
      const double x = Variant::kOutputTransform ? Variant::output(p, vp, o[d], ix, d) : o[d];
      store_bits(p.out, p.q_dtype, n * p.out_stride_n + h * p.out_stride_h + d, double_to_bits(x, p.q_dtype));
    }
    if (p.lse) p.lse[n * p.lse_stride_n + h * p.lse_stride_h] = float(lse);
  };

  // Threads only for enough work (kCpuParallelWork): keys x packed rows x head dim per item.
  int64_t work = 0;
  for (int32_t w = 0; w < p.num_work; ++w) {
    const int32_t r = plan.work_request[w], rows = (plan.qo_indptr[r + 1] - plan.qo_indptr[r]) * G - plan.work_qo_begin[w];
    work += int64_t(plan.work_kv_end[w] - plan.work_kv_begin[w]) * std::min(rows, tile) * Dqk * p.num_kv_heads;
  }
#pragma omp parallel for schedule(dynamic) collapse(2) if (work > kCpuParallelWork)
  for (int32_t w = 0; w < p.num_work; ++w) {
    for (int hk = 0; hk < p.num_kv_heads; ++hk) {
      const int32_t r = plan.work_request[w], kb = plan.work_kv_begin[w], ke = plan.work_kv_end[w], chunk = plan.work_chunk[w];
      const int32_t qo_len = plan.qo_indptr[r + 1] - plan.qo_indptr[r], kv_len = plan.kv_len[r];
      const int64_t d_off = int64_t(kv_len) - qo_len;
      const int32_t keys = ke - kb;
      // This item's keys and values as doubles (keys rotated when RoPE is on).
      std::vector<double> K(size_t(keys) * Dqk), V(size_t(keys) * Dvo);
      const int Dk = Dqk - p.rope_dim;  // dims from k (MLA: the latent; the rest from k_rope)
      for (int32_t t = 0; t < keys; ++t) {
        const int64_t ko = kv_offset(p, r, kb + t, hk, p.k_stride_page, p.k_stride_n, p.k_stride_h);
        const int64_t vo = kv_offset(p, r, kb + t, hk, p.v_stride_page, p.v_stride_n, p.v_stride_h);
        for (int d = 0; d < Dk; ++d) K[size_t(t) * Dqk + d] = load_as_double(p.k, p.kv_dtype, ko + d);
        if (p.rope_dim > 0) {
          const int64_t kro = kv_offset(p, r, kb + t, hk, p.k_rope_stride_page, p.k_rope_stride_n, p.k_rope_stride_h);
          for (int d = Dk; d < Dqk; ++d) K[size_t(t) * Dqk + d] = load_as_double(p.k_rope, p.kv_dtype, kro + d - Dk);
        }
        for (int d = 0; d < Dvo; ++d) V[size_t(t) * Dvo + d] = load_as_double(p.v, p.kv_dtype, vo + d);
        if (rope) apply_rope_cpu(&K[size_t(t) * Dqk], Dqk, kb + t, p.rope_scale, p.rope_theta);
        if constexpr (Variant::kKeyTransform) {
          const VariantIndex kx{r, -1, kb + t, -1, hk, qo_len, kv_len, -1};
          for (int d = 0; d < Dqk; ++d) K[size_t(t) * Dqk + d] = Variant::key(p, vp, K[size_t(t) * Dqk + d], kx, d);
        }
      }
      std::vector<double> q(Dqk), logits(keys), o(Dvo);
      const int64_t packed_end = std::min<int64_t>(int64_t(plan.work_qo_begin[w]) + tile, int64_t(qo_len) * G);
      for (int64_t pr = plan.work_qo_begin[w]; pr < packed_end; ++pr) {
        const int32_t i = int32_t(pr / G);
        const int h = hk * G + int(pr % G);
        const int64_t n = int64_t(plan.qo_indptr[r]) + i;
        const int64_t qpos = i + d_off;
        for (int d = 0; d < Dqk - p.rope_dim; ++d) q[d] = load_as_double(p.q, p.q_dtype, n * p.q_stride_n + h * p.q_stride_h + d);
        for (int d = Dqk - p.rope_dim; d < Dqk; ++d)
          q[d] = load_as_double(p.q_rope, p.q_dtype, n * p.q_rope_stride_n + h * p.q_rope_stride_h + d - (Dqk - p.rope_dim));
        if (rope) apply_rope_cpu(q.data(), Dqk, double(qpos), p.rope_scale, p.rope_theta);
        VariantIndex ix{r, i, -1, h, hk, qo_len, kv_len, n};
        if constexpr (Variant::kQueryTransform)
          for (int d = 0; d < Dqk; ++d) q[d] = Variant::query(p, vp, q[d], ix, d);
        double m = kNegInf;
        for (int32_t t = 0; t < keys; ++t) {
          const int64_t j = kb + t;
          ix.kv_idx = int(j);
          if (!plan_visible(p, r, i, qpos, j, kv_len) || !Variant::mask(p, vp, ix)) {
            logits[t] = kNegInf;
            continue;
          }
          double dot = 0.0;
          for (int d = 0; d < Dqk; ++d) dot += q[d] * K[size_t(t) * Dqk + d];
          logits[t] = Variant::logits(p, vp, q_scale * dot, ix);
          if (Variant::kUseSoftmax) m = std::max(m, logits[t]);
        }
        std::fill(o.begin(), o.end(), 0.0);
        double lse = kNegInf;
        if constexpr (Variant::kUseSoftmax) {
          double sum = 0.0;
          if (m != kNegInf) {
            for (int32_t t = 0; t < keys; ++t) {
              if (logits[t] == kNegInf) continue;
              const double e = std::exp(logits[t] - m);
              sum += e;
              for (int d = 0; d < Dvo; ++d) o[d] += e * V[size_t(t) * Dvo + d];
            }
            for (int d = 0; d < Dvo; ++d) o[d] = o[d] / sum * p.v_scale;
            lse = m + std::log(sum);
          }
        } else {
          // The transformed logit is the weight itself; masked keys add nothing.
          for (int32_t t = 0; t < keys; ++t) {
            if (logits[t] == kNegInf) continue;
            for (int d = 0; d < Dvo; ++d) o[d] += logits[t] * V[size_t(t) * Dvo + d];
          }
          for (int d = 0; d < Dvo; ++d) o[d] *= p.v_scale;
          lse = 0.0;  // partial states of split rows are plain sums
        }
        if (chunk < 0) {
          write_out(r, n, h, o.data(), lse);
        } else {
          const int64_t slot = int64_t(plan.merge_indptr[n]) + chunk;
          for (int d = 0; d < Dvo; ++d) p.partial_o[(slot * Hq + h) * Dvo + d] = float(o[d]);
          p.partial_lse[slot * Hq + h] = float(lse);  // natural log on this backend
        }
      }
    }
  }
  if (!p.any_split) return;

  // Merge the partial states of split rows (softmax: weighted by their lse; else summed).
#pragma omp parallel for collapse(2) if (int64_t(p.total_qo) * Hq * Dvo > kCpuParallelWork)
  for (int32_t n = 0; n < p.total_qo; ++n) {
    for (int h = 0; h < Hq; ++h) {
      const int32_t s0 = plan.merge_indptr[n], s1 = plan.merge_indptr[n + 1];
      if (s1 == s0) continue;
      // The request of row n: the last r with qo_indptr[r] <= n.
      const int32_t r = int32_t(std::upper_bound(plan.qo_indptr, plan.qo_indptr + p.batch_size + 1, n) - plan.qo_indptr) - 1;
      std::vector<double> o(Dvo, 0.0);
      if constexpr (!Variant::kUseSoftmax) {
        for (int32_t s = s0; s < s1; ++s)
          for (int d = 0; d < Dvo; ++d) o[d] += p.partial_o[(int64_t(s) * Hq + h) * Dvo + d];
        write_out(r, n, h, o.data(), 0.0);
        continue;
      }
      double m = kNegInf;
      for (int32_t s = s0; s < s1; ++s) m = std::max(m, double(p.partial_lse[int64_t(s) * Hq + h]));
      double sum = 0.0;
      if (m != kNegInf) {
        for (int32_t s = s0; s < s1; ++s) {
          const double lse = p.partial_lse[int64_t(s) * Hq + h];
          if (lse == kNegInf) continue;  // an empty piece: its partial output is not used
          const double e = std::exp(lse - m);
          sum += e;
          for (int d = 0; d < Dvo; ++d) o[d] += e * p.partial_o[(int64_t(s) * Hq + h) * Dvo + d];
        }
        for (int d = 0; d < Dvo; ++d) o[d] /= sum;
      }
      write_out(r, n, h, o.data(), m == kNegInf ? m : m + std::log(sum));
    }
  }
}

}  // namespace fi

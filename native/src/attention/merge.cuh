// The attention engine's merge (CUDA): a plan that splits a query row's keys across work items
// has each item write a float32 partial state (output and log2 log-sum-exp, at the slots
// merge_indptr gives the row); this kernel combines them into the row's output and lse. Every
// kernel of the engine (decode, mma.sync prefill, Hopper prefill) writes the same partial states.
#pragma once
#include <cuda_runtime.h>

#include "../common/convert.cuh"
#include "../common/mma.cuh"  // pack2
#include "../common/runtime.h"
#include "prefill.h"

namespace fi {

// Merges the partial states of split rows: one warp per (global query row, qo head). Weighted
// by their lse with softmax; summed without (every piece's lse is then 0).
template <int DVO, typename DT, bool SOFTMAX = true>
__global__ void __launch_bounds__(128) attention_merge_kernel(const __grid_constant__ PrefillParams a) {
  const int64_t item = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int H = a.num_qo_heads;
  if (item >= int64_t(a.total_qo) * H) return;
  const int n = int(item / H), h = int(item % H);
  const int s0 = a.plan.merge_indptr[n], s1 = a.plan.merge_indptr[n + 1];
  if (s1 <= s0) return;  // written directly by the attention kernel
  float mx = -INFINITY;
  for (int s = s0; s < s1; ++s) mx = fmaxf(mx, a.partial_lse[int64_t(s) * H + h]);
  float sum = 0.0f;
  if (mx != -INFINITY)
    for (int s = s0; s < s1; ++s) sum += exp2f(a.partial_lse[int64_t(s) * H + h] - mx);
  DT* out = static_cast<DT*>(a.out) + int64_t(n) * a.out_stride_n + int64_t(h) * a.out_stride_h;
  for (int d = lane * 2; d < DVO; d += 64) {
    float2 acc = make_float2(0.0f, 0.0f);
    if (sum > 0.0f) {
      for (int s = s0; s < s1; ++s) {
        const float weight = SOFTMAX ? exp2f(a.partial_lse[int64_t(s) * H + h] - mx) / sum : 1.0f;
        const float2 x = *reinterpret_cast<const float2*>(a.partial_o + (int64_t(s) * H + h) * DVO + d);
        acc.x = fmaf(weight, x.x, acc.x);
        acc.y = fmaf(weight, x.y, acc.y);
      }
    }
    *reinterpret_cast<uint32_t*>(out + d) = pack2<DT>(acc.x, acc.y);
  }
  if (a.lse != nullptr && lane == 0)
    a.lse[int64_t(n) * a.lse_stride_n + int64_t(h) * a.lse_stride_h] = sum > 0.0f ? (mx + log2f(sum)) * kLn2 : -INFINITY;
}

// Launches the merge when the plan split any row.
template <int DVO, typename DT, bool SOFTMAX>
void attention_merge(const PrefillParams& a, cudaStream_t stream) {
  if (!a.any_split || a.total_qo == 0) return;
  const int64_t items = int64_t(a.total_qo) * a.num_qo_heads;
  attention_merge_kernel<DVO, DT, SOFTMAX><<<unsigned((items + 3) / 4), 128, 0, stream>>>(a);
  check_launch("attention merge kernel");
}

}  // namespace fi

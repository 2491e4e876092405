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

// Where an output element sits, as a variant's output transform sees it.
struct OutputIndex {
  int batch_idx, qo_idx, qo_head_idx, kv_head_idx, qo_len, kv_len;
  int64_t qo_row;  // global query row
};

// The output transform of a variant without one (every built-in variant). A generated variant's
// has its parameter struct as Params and apply() running the user's outputTransform.
struct NoOutputTransform {
  struct Params {};
  static constexpr bool kActive = false;
  static __device__ __forceinline__ float apply(const Params&, float o, const OutputIndex&, int) { return o; }
};

// The OutputIndex of global query row n, qo head h (the request by binary search of qo_indptr).
__device__ __forceinline__ OutputIndex output_index(const PrefillParams& a, int64_t n, int h) {
  int lo = 0, hi = a.batch_size;  // the last r with qo_indptr[r] <= n
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (a.plan.qo_indptr[mid] <= n) lo = mid;
    else hi = mid;
  }
  const int qo0 = a.plan.qo_indptr[lo];
  return OutputIndex{lo, int(n - qo0), h, h / (a.num_qo_heads / a.num_kv_heads), a.plan.qo_indptr[lo + 1] - qo0, a.plan.kv_len[lo], n};
}

// Merges the partial states of split rows: one warp per (global query row, qo head), or with
// WARPS > 1 a block of WARPS warps per (row, head) that share its pieces, VEC consecutive dims per
// lane per step. A batch-1 decode splits a row into ~32 pieces and this walk is on its critical
// path, so no load waits on another: the lanes read 32 pieces' lse at once (maximum and weights
// by shuffles), then the outputs are summed four pieces per step (16-byte loads, independent),
// each warp taking every WARPS-th piece, and the division by the sum comes last (H100, batch 1 x
// 32768 keys in 32 pieces, 32 heads: one warp per row 13.8 us, as long as a third of the split
// decode kernel itself).
// Weighted by their lse with softmax; summed without (every piece's lse is then 0). Then the
// variant's output transform, if any.
template <int DVO, typename DT, bool SOFTMAX, class Output, int WARPS>
__global__ void __launch_bounds__(128) attention_merge_kernel(const __grid_constant__ PrefillParams a,
                                                              const __grid_constant__ typename Output::Params vp) {
  static_assert(WARPS == 1 || WARPS == 4, "merge: one warp per row, or the block's four");
  constexpr int VEC = DVO % 128 == 0 ? 4 : 2;  // floats per lane per step
  constexpr int STEPS = DVO / (32 * VEC);
  static_assert(STEPS * 32 * VEC == DVO, "merge: head dim must be a multiple of 64");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t item = WARPS == 1 ? int64_t(blockIdx.x) * 4 + warp : int64_t(blockIdx.x);
  const int first = WARPS == 1 ? 0 : warp;  // this warp's first piece of each group of 32
  const int H = a.num_qo_heads;
  if (item >= int64_t(a.total_qo) * H) return;  // uniform in a block when WARPS > 1
  const int n = int(item / H), h = int(item % H);
  const int s0 = a.plan.merge_indptr[n], s1 = a.plan.merge_indptr[n + 1];
  if (s1 <= s0) return;  // written directly by the attention kernel
  const float* lse = a.partial_lse + h;
  float mx = -INFINITY;
  for (int s = s0 + lane; s < s1; s += 32) mx = fmaxf(mx, lse[int64_t(s) * H]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float acc[STEPS][VEC] = {};
  float sum = 0.0f;
  if (mx != -INFINITY) {
    for (int base = s0; base < s1; base += 32) {
      const int count = min(32, s1 - base);
      const float e = lane < count ? exp2f(lse[int64_t(base + lane) * H] - mx) : 0.0f;
      sum += e;
      const float* pieces = a.partial_o + (int64_t(base) * H + h) * DVO + lane * VEC;
#pragma unroll 4
      for (int j = first; j < count; j += WARPS) {
        const float weight = SOFTMAX ? __shfl_sync(0xffffffffu, e, j) : 1.0f;
        const float* piece = pieces + int64_t(j) * H * DVO;
#pragma unroll
        for (int k = 0; k < STEPS; ++k) {
          float x[VEC];
          if constexpr (VEC == 4) {
            const float4 v = *reinterpret_cast<const float4*>(piece + k * 32 * VEC);
            x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
          } else {
            const float2 v = *reinterpret_cast<const float2*>(piece + k * 32 * VEC);
            x[0] = v.x, x[1] = v.y;
          }
#pragma unroll
          for (int e2 = 0; e2 < VEC; ++e2) acc[k][e2] = fmaf(weight, x[e2], acc[k][e2]);
        }
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  if constexpr (WARPS > 1) {  // warp 0 adds the other warps' sums and writes the row
    __shared__ float others[WARPS - 1][DVO];
    if (warp > 0) {
#pragma unroll
      for (int k = 0; k < STEPS; ++k)
#pragma unroll
        for (int e2 = 0; e2 < VEC; ++e2) others[warp - 1][k * 32 * VEC + lane * VEC + e2] = acc[k][e2];
    }
    __syncthreads();
    if (warp > 0) return;
#pragma unroll
    for (int w = 0; w < WARPS - 1; ++w)
#pragma unroll
      for (int k = 0; k < STEPS; ++k)
#pragma unroll
        for (int e2 = 0; e2 < VEC; ++e2) acc[k][e2] += others[w][k * 32 * VEC + lane * VEC + e2];
  }
  const float scale = sum > 0.0f ? (SOFTMAX ? 1.0f / sum : 1.0f) : 0.0f;
  DT* out = static_cast<DT*>(a.out) + int64_t(n) * a.out_stride_n + int64_t(h) * a.out_stride_h;
#pragma unroll
  for (int k = 0; k < STEPS; ++k) {
    const int d = k * 32 * VEC + lane * VEC;
#pragma unroll
    for (int e2 = 0; e2 < VEC; e2 += 2) {
      float x = acc[k][e2] * scale, y = acc[k][e2 + 1] * scale;
      if constexpr (Output::kActive) {
        const OutputIndex ix = output_index(a, n, h);
        x = Output::apply(vp, x, ix, d + e2);
        y = Output::apply(vp, y, ix, d + e2 + 1);
      }
      *reinterpret_cast<uint32_t*>(out + d + e2) = pack2<DT>(x, y);
    }
  }
  if (a.lse != nullptr && lane == 0)
    a.lse[int64_t(n) * a.lse_stride_n + int64_t(h) * a.lse_stride_h] = sum > 0.0f ? (mx + log2f(sum)) * kLn2 : -INFINITY;
}

// Launches the merge when the plan split any row: a variant's (Variant::kUseSoftmax, its output
// transform with the parameters in its kernel parameters' vp).
template <int DVO, typename DT, class Variant, class KernelParams>
void attention_merge(const PrefillParams& a, const KernelParams& kp, cudaStream_t stream) {
  if (!a.any_split || a.total_qo == 0) return;
  const int64_t items = int64_t(a.total_qo) * a.num_qo_heads;
  using Output = typename Variant::Output;
  typename Output::Params vp{};
  if constexpr (Output::kActive) vp = kp.vp;
  // A block per row and head where rows are few and split into many pieces (a small decode
  // batch over long requests); else a warp each.
  if (a.kv_chunks_max >= 8 && items <= 4096)
    attention_merge_kernel<DVO, DT, Variant::kUseSoftmax, Output, 4><<<unsigned(items), 128, 0, stream>>>(a, vp);
  else
    attention_merge_kernel<DVO, DT, Variant::kUseSoftmax, Output, 1><<<unsigned((items + 3) / 4), 128, 0, stream>>>(a, vp);
  check_launch("attention merge kernel");
}

}  // namespace fi

// CUDA decode attention kernels (templates). The instantiations are spread over
// decode_d<head_dim>_<q dtype>.cu so that they compile in parallel; decode.cu launches them.
//
// One CTA computes one work item (a request, or a chunk of a long request) for the HPC query
// heads of one GQA group that share a KV head: the KV tile is read from DRAM once for all of
// them. Threads: tx spans head_dim in 16-byte vectors, ty the query heads, tz the tokens of a
// tile. K and V tiles stream through a cp.async pipeline of kStages shared-memory stages;
// softmax is online (log2 domain). Split requests write float32 partial states that the
// engine's merge kernel (merge.cuh, shared with prefill) combines.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <type_traits>

#include "../common/convert.cuh"
#include "../common/cp_async.cuh"
#include "../common/dispatch.h"
#include "../common/fastdiv.cuh"
#include "../common/runtime.h"
#include "builtin_variant.generated.h"
#include "decode.h"
#include "merge.cuh"

namespace fi {
namespace decode_detail {

struct DecodeKernelParams {
  const void* q;
  void* out;
  float* lse;
  const void* k;
  const void* v;
  int64_t q_stride_b, q_stride_h, out_stride_b, out_stride_h, lse_stride_b, lse_stride_h;
  int64_t k_stride_page, k_stride_pos, k_stride_head;
  int64_t v_stride_page, v_stride_pos, v_stride_head;
  PrefillPlanView plan;
  float* partial_o;
  float* partial_lse;
  int num_qo_heads, group_size, head_chunks;
  FastDiv page_div;  // token -> (page, slot): the loaders split every token index
  int pos_encoding, window_left;
  float q_scale;       // folded into q: sm_scale * k_scale (logit() takes natural logits)
  float soft_cap;      // 0: off
  float soft_cap_rcp;  // 1 / soft_cap (0: off)
  float v_scale;
  float rope_rcp_scale, rope_theta;
};

// The partial-state slot of work item w of request r, or -1: it writes the output directly. A
// decode plan has one query row per request, so the request's row is r.
FI_HD int partial_slot(const PrefillPlanView& plan, int w, int r) {
  const int chunk = plan.work_chunk[w];
  return chunk < 0 ? -1 : plan.merge_indptr[r] + chunk;
}

// Where one logit of a decode kernel sits (one query row per request), as a variant's hooks see
// it; set up once per row (the slope's powf is not paid per key).
struct DecodeRow {
  int request, qo_head, kv_head, kv_len;
  float alibi;  // the head's ALiBi slope (0: off)
};

// The hooks of the decode kernels (FlashInfer's attention-variant hooks, for one query row per
// request). The built-in variant is the C API's: RoPE, the ALiBi / soft-cap logits transform
// (generated from lib/jit_builtin.ts), the sliding window as the mask, each behind a
// run-time-uniform branch. A generated variant (lib/jit.ts,
// prefill_variant.cuh) derives from it, extends KernelParams with its own parameters (`vp`) and
// replaces logit() and/or visible(). Hooks are called only for keys inside the request (key <
// kv_len) and for real query heads, except the built-in logit() (harmless on padding).
struct DecodeDefaultVariant {
  using KernelParams = DecodeKernelParams;
  // false: the transformed logit is the weight of its key (no max, no exp, no normalization).
  static constexpr bool kUseSoftmax = true;
  // true: logit() replaces the built-in ALiBi / soft cap (x is the natural logit, as for the
  // built-in one, and logit() returns the log2-domain value when kUseSoftmax); the hooks then see
  // only real keys and heads.
  static constexpr bool kCustomLogits = false;
  // true: visible() tests more than the built-in window (the kernels then call it only for real
  // heads and keys).
  static constexpr bool kCustomMask = false;
  // true: query() / key() transform each element of q and k (after RoPE), and Output::apply each
  // element of the output (normalized, merged, times v_scale). A variant with any of them runs
  // on the CUDA-core kernel (the tensor-core kernel has no such hooks).
  static constexpr bool kQueryTransform = false, kKeyTransform = false;
  using Output = NoOutputTransform;
  static __device__ __forceinline__ bool rope(const KernelParams& p) { return p.pos_encoding == FI_POS_ENCODING_ROPE_LLAMA; }
  static __device__ __forceinline__ DecodeRow row(const KernelParams& p, int request, int qo_head, int kv_head, int kv_len) {
    return {request, qo_head, kv_head, kv_len, p.pos_encoding == FI_POS_ENCODING_ALIBI ? alibi_slope(qo_head, p.num_qo_heads) : 0.0f};
  }
  static __device__ __forceinline__ float query(const KernelParams&, float q, const DecodeRow&, int dim) { return q; }
  static __device__ __forceinline__ float key(const KernelParams&, float k, const DecodeRow&, int key, int dim) { return k; }
  // x: the natural logit (the dot product times q_scale); the log2-domain logit out, from the
  // built-in transform generated from lib/jit_builtin.ts. Natural units here, not the prefill
  // kernels' log2 units, and no branch on whether ALiBi or the cap is on: with either, ptxas spilled
  // 16-60 bytes in the 80- and 128-register kernels (sm_90a), and with this, nothing new.
  static __device__ __forceinline__ float logit(const KernelParams& p, float x, const DecodeRow& row, int key) {
    return kLog2e * builtin_logits<float>(x, row.alibi, p.soft_cap, p.soft_cap_rcp, row.request, 0, row.kv_len - 1, key, row.qo_head, row.kv_head, 1,
                                          row.kv_len, row.request);
  }
  static __device__ __forceinline__ bool visible(const KernelParams& p, const DecodeRow& row, int key) {
    return p.window_left < 0 || key + p.window_left >= row.kv_len - 1;
  }
};

// The cp.async pipeline both decode kernels run: STAGES - 1 tiles in flight ahead of the one being
// computed. load(tile, stage) issues a tile's copies; compute(tile, stage) consumes a landed one.
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void run_kv_pipeline(int num_tiles, Load&& load, Compute&& compute) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) load(s, s);
    cp_async_commit();
  }
  for (int t = 0; t < num_tiles; ++t) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile t landed for every thread; stage (t - 1) % STAGES is free again
    const int next = t + STAGES - 1;
    if (next < num_tiles) load(next, next % STAGES);
    cp_async_commit();
    compute(t, t % STAGES);
  }
  cp_async_wait<0>();
}

// Adds the element offsets of KV token `tok`, on cache page `page`, to k and v.
template <typename T>
__device__ __forceinline__ void seek_token(const DecodeKernelParams& p, int64_t page, int tok, const T*& k, const T*& v) {
  uint32_t q, slot;
  p.page_div.divmod(uint32_t(tok), q, slot);
  const int64_t pos = slot;
  k += page * p.k_stride_page + pos * p.k_stride_pos;
  v += page * p.v_stride_page + pos * p.v_stride_pos;
}

// The page indices of a thread's N token rows, read one tile ahead of the copies that use them.
// Read when the tile's copies are issued, each index is a dependent load in front of them; with
// pages of one token (vector-sparse) every 32-token tile needs a new 128-byte line of indices,
// a miss per tile (H100: 72% of page 16's bandwidth). The pipeline loads tiles in order, so
// each load reads the next tile's indices into registers for the call after it.
template <int N>
struct PageLookahead {
  int32_t page[N];
  // Reads the pages of tokens token_of(0..N-1) of a tile (0 for tokens at or past end).
  template <class TokenOf>
  __device__ __forceinline__ void fetch(const int32_t* pages, const FastDiv& page_div, int end, TokenOf&& token_of) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int tok = token_of(i);
      page[i] = tok < end ? __ldg(pages + page_div.div(uint32_t(tok))) : 0;
    }
  }
};

// ---- launch shape

template <int HEAD_DIM, int HPC, typename DKV>
struct DecodeShape {
  static constexpr int kVec = 16 / sizeof(DKV);   // KV elements per 16-byte vector
  static constexpr int kBdx = HEAD_DIM / kVec;     // threads across head_dim
  static constexpr int kBdy = HPC;                 // query heads
  static constexpr int kBdz = kBdx * kBdy >= 128 ? 1 : 128 / (kBdx * kBdy);
  static constexpr int kThreads = kBdx * kBdy * kBdz;
  // Tokens per stage: at most 16 KiB of K + V, and at most 8 per tz thread (registers; each
  // thread keeps one logit per token and reduces them together).
  static constexpr int kMaxTile = 8192 / (HEAD_DIM * int(sizeof(DKV)));
  static constexpr int kTile = kMaxTile < 8 * kBdz ? kMaxTile : 8 * kBdz;
  static constexpr int kTokensPerZ = kTile / kBdz;
  static constexpr int kStages = kTile * HEAD_DIM * int(sizeof(DKV)) * 2 <= 8192 ? 4 : 3;
  static constexpr int kStageElems = kTile * HEAD_DIM;
  static constexpr int kLoadsPerThread = kTile * kBdx / kThreads;  // 16-byte vectors of K (and of V)
  static constexpr size_t kPipelineBytes = size_t(kStages) * 2 * kStageElems * sizeof(DKV);
  static constexpr size_t kMergeBytes = size_t(kBdz) * kBdy * (HEAD_DIM + 2) * sizeof(float);
  static constexpr size_t kSmemBytes = kPipelineBytes > kMergeBytes ? kPipelineBytes : kMergeBytes;
  static_assert(kBdx <= 32 && (kBdx & (kBdx - 1)) == 0, "head_dim lanes must fit a warp");
  static_assert(kTokensPerZ >= 1 && kTile % kBdz == 0, "tile");
  static_assert(kThreads % kBdx == 0 && kTile * kBdx % kThreads == 0, "loads");
};

// Rotate-half RoPE of the VEC elements this lane holds (dims tx*VEC..), at position pos; the
// partner half lives in lane tx ^ (BDX/2).
template <int BDX, int VEC, int HEAD_DIM>
__device__ __forceinline__ void rope_rotate(float (&x)[VEC], int tx, int pos, const float (&freq)[VEC]) {
  const bool low = tx < BDX / 2;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const float partner = __shfl_xor_sync(0xffffffffu, x[e], BDX / 2);
    // Reduce the angle in double (positions reach 10^5 rad), then a float sincos is exact enough.
    double angle = double(pos) * double(freq[e]);
    angle -= 6.283185307179586 * rint(angle * 0.15915494309189535);
    float sn, cs;
    sincosf(float(angle), &sn, &cs);
    x[e] = low ? x[e] * cs - partner * sn : x[e] * cs + partner * sn;
  }
}

template <int HEAD_DIM, int HPC, typename DQ, typename DKV, class Variant>
__global__ void __launch_bounds__(DecodeShape<HEAD_DIM, HPC, DKV>::kThreads)
    decode_kernel(const __grid_constant__ typename Variant::KernelParams p) {
  using S = DecodeShape<HEAD_DIM, HPC, DKV>;
  constexpr int VEC = S::kVec, BDX = S::kBdx, BDY = S::kBdy, BDZ = S::kBdz, TILE = S::kTile;
  extern __shared__ __align__(16) uint8_t smem[];
  DKV* k_smem = reinterpret_cast<DKV*>(smem);
  DKV* v_smem = k_smem + S::kStages * S::kStageElems;

  const int w = blockIdx.x;
  if (w >= p.plan.header[0]) return;  // padding of a CUDA-graph launch
  const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
  const int tid = (tz * BDY + ty) * BDX + tx;
  const int kv_head = blockIdx.y / p.head_chunks;
  const int head_in_group = (blockIdx.y % p.head_chunks) * HPC + ty;
  const bool head_valid = head_in_group < p.group_size;
  const int qo_head = kv_head * p.group_size + (head_valid ? head_in_group : p.group_size - 1);
  const int r = p.plan.work_request[w], begin = p.plan.work_kv_begin[w], end = p.plan.work_kv_end[w];
  const int len = p.plan.kv_len[r];
  const int32_t* pages = p.plan.indices + p.plan.kv_indptr[r];
  const bool rope = Variant::rope(p);
  const DecodeRow row = Variant::row(p, r, qo_head, kv_head, len);

  float freq[VEC];
  if (rope) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const int i = (tx * VEC + e) % (HEAD_DIM / 2);
      freq[e] = p.rope_rcp_scale * powf(p.rope_theta, -2.0f * i / HEAD_DIM);
    }
  }
  float q[VEC];
  load_float<DQ, VEC>(static_cast<const DQ*>(p.q) + r * p.q_stride_b + qo_head * p.q_stride_h + tx * VEC, q);
  if (rope) rope_rotate<BDX, VEC, HEAD_DIM>(q, tx, len - 1, freq);
  if constexpr (Variant::kQueryTransform) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) q[e] = Variant::query(p, q[e], row, tx * VEC + e);
  }
#pragma unroll
  for (int e = 0; e < VEC; ++e) q[e] *= p.q_scale;

  // Loader: this thread's vector lane and first row within a tile.
  const int load_part = tid % BDX, load_row = tid / BDX;
  constexpr int kRowStep = S::kThreads / BDX;
  const DKV* k_head = static_cast<const DKV*>(p.k) + kv_head * p.k_stride_head + load_part * VEC;
  const DKV* v_head = static_cast<const DKV*>(p.v) + kv_head * p.v_stride_head + load_part * VEC;
  PageLookahead<S::kLoadsPerThread> ahead;
  auto token_of = [&](int tile) { return [&, tile](int i) { return begin + tile * TILE + load_row + i * kRowStep; }; };
  ahead.fetch(pages, p.page_div, end, token_of(0));
  auto load_tile = [&](int tile, int stage) {
    const PageLookahead<S::kLoadsPerThread> now = ahead;
    ahead.fetch(pages, p.page_div, end, token_of(tile + 1));
#pragma unroll
    for (int i = 0; i < S::kLoadsPerThread; ++i) {
      const int row = load_row + i * kRowStep;
      const int tok = begin + tile * TILE + row;
      const bool valid = tok < end;
      const DKV* kg = k_head;
      const DKV* vg = v_head;
      if (valid) seek_token(p, now.page[i], tok, kg, vg);
      const int offset = stage * S::kStageElems + row * HEAD_DIM + load_part * VEC;
      cp_async_16(k_smem + offset, kg, valid);
      cp_async_16(v_smem + offset, vg, valid);
    }
  };

  float o[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) o[e] = 0.0f;
  float m = -INFINITY, dsum = 0.0f;
  const int num_tiles = (end - begin + TILE - 1) / TILE;
  run_kv_pipeline<S::kStages>(num_tiles, load_tile, [&](int t, int stage) {
    const DKV* ks = k_smem + stage * S::kStageElems;
    const DKV* vs = v_smem + stage * S::kStageElems;
    const int tok0 = begin + t * TILE + tz * S::kTokensPerZ;
    // Dot products of all this thread's tokens first (independent chains), then their
    // reductions across the head_dim lanes level by level, so shuffles overlap.
    float s[S::kTokensPerZ];
#pragma unroll
    for (int i = 0; i < S::kTokensPerZ; ++i) {
      float kf[VEC];
      load_float<DKV, VEC>(ks + (tz * S::kTokensPerZ + i) * HEAD_DIM + tx * VEC, kf);
      if (rope) rope_rotate<BDX, VEC, HEAD_DIM>(kf, tx, tok0 + i, freq);
      if constexpr (Variant::kKeyTransform) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) kf[e] = Variant::key(p, kf[e], row, tok0 + i, tx * VEC + e);
      }
      float even = 0.0f, odd = 0.0f;
#pragma unroll
      for (int e = 0; e < VEC; e += 2) {
        even = fmaf(q[e], kf[e], even);
        odd = fmaf(q[e + 1], kf[e + 1], odd);
      }
      s[i] = even + odd;
    }
#pragma unroll
    for (int offset = BDX / 2; offset >= 1; offset /= 2) {
#pragma unroll
      for (int i = 0; i < S::kTokensPerZ; ++i) s[i] += __shfl_xor_sync(0xffffffffu, s[i], offset);
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int i = 0; i < S::kTokensPerZ; ++i) {
      const int tok = tok0 + i;
      const float logit = (!Variant::kCustomLogits || tok < end) ? Variant::logit(p, s[i], row, tok) : 0.0f;
      const bool visible = tok < end && Variant::visible(p, row, tok);
      if constexpr (!Variant::kUseSoftmax) {
        s[i] = visible ? logit : 0.0f;
      } else {
        s[i] = visible ? logit : -INFINITY;
        tile_max = fmaxf(tile_max, s[i]);
      }
    }
    if constexpr (!Variant::kUseSoftmax) {  // the logits are the weights
#pragma unroll
      for (int i = 0; i < S::kTokensPerZ; ++i) {
        float vf[VEC];
        load_float<DKV, VEC>(vs + (tz * S::kTokensPerZ + i) * HEAD_DIM + tx * VEC, vf);
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[e] = fmaf(s[i], vf[e], o[e]);
      }
      return;
    }
    const float m_new = fmaxf(m, tile_max);
    if (m_new == -INFINITY) return;  // nothing visible yet
    const float rescale = exp2f(m - m_new);
    dsum *= rescale;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] *= rescale;
#pragma unroll
    for (int i = 0; i < S::kTokensPerZ; ++i) {
      const float weight = exp2f(s[i] - m_new);
      dsum += weight;
      float vf[VEC];
      load_float<DKV, VEC>(vs + (tz * S::kTokensPerZ + i) * HEAD_DIM + tx * VEC, vf);
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[e] = fmaf(weight, vf[e], o[e]);
    }
    m = m_new;
  });

  // Combine the token slices of the tz threads.
  if constexpr (BDZ > 1) {
    __syncthreads();
    float* scratch = reinterpret_cast<float*>(smem);
    float* so = scratch + (tz * BDY + ty) * (HEAD_DIM + 2);
#pragma unroll
    for (int e = 0; e < VEC; ++e) so[tx * VEC + e] = o[e];
    if (tx == 0) {
      so[HEAD_DIM] = m;
      so[HEAD_DIM + 1] = dsum;
    }
    __syncthreads();
    if (tz != 0) return;
    float mz[BDZ];
    m = -INFINITY;
#pragma unroll
    for (int z = 0; z < BDZ; ++z) {
      mz[z] = scratch[(z * BDY + ty) * (HEAD_DIM + 2) + HEAD_DIM];
      m = fmaxf(m, mz[z]);
    }
    dsum = 0.0f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] = 0.0f;
    if (!Variant::kUseSoftmax || m != -INFINITY) {
#pragma unroll
      for (int z = 0; z < BDZ; ++z) {
        const float* sz = scratch + (z * BDY + ty) * (HEAD_DIM + 2);
        const float weight = Variant::kUseSoftmax ? exp2f(mz[z] - m) : 1.0f;
        dsum += weight * sz[HEAD_DIM + 1];
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[e] = fmaf(weight, sz[tx * VEC + e], o[e]);
      }
    }
  }
  if (!head_valid) return;

  float lse2 = -INFINITY;
  if constexpr (!Variant::kUseSoftmax) {  // partial states then add up (lse 0: equal weight)
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] *= p.v_scale;
    lse2 = 0.0f;
  } else if (dsum > 0.0f) {
    const float scale = p.v_scale / dsum;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] *= scale;
    lse2 = m + log2f(dsum);
  }
  const int slot = partial_slot(p.plan, w, r);
  if (slot < 0) {
    if constexpr (Variant::Output::kActive) {
      const OutputIndex ix{r, 0, qo_head, kv_head, 1, len, r};
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[e] = Variant::Output::apply(p.vp, o[e], ix, tx * VEC + e);
    }
    store_float<DQ, VEC>(static_cast<DQ*>(p.out) + r * p.out_stride_b + qo_head * p.out_stride_h + tx * VEC, o);
    if (p.lse != nullptr && tx == 0) p.lse[r * p.lse_stride_b + qo_head * p.lse_stride_h] = lse2 * kLn2;
  } else {
    float* po = p.partial_o + (int64_t(slot) * p.num_qo_heads + qo_head) * HEAD_DIM + tx * VEC;
#pragma unroll
    for (int e = 0; e < VEC; e += 4) *reinterpret_cast<float4*>(po + e) = make_float4(o[e], o[e + 1], o[e + 2], o[e + 3]);
    if (tx == 0) p.partial_lse[int64_t(slot) * p.num_qo_heads + qo_head] = lse2;
  }
}

}  // namespace decode_detail
}  // namespace fi

#include "decode_tc.cuh"

namespace fi {
namespace decode_detail {

// ---- per (head_dim, q dtype) entry points, instantiated in decode_d*.cu
// (Which of the two kernels a plan runs is decided by the scheduler: decode_uses_tensor_cores.)

template <int HEAD_DIM>
constexpr bool kTensorCoreHeadDim = HEAD_DIM <= 128;  // head dim 256: too many accumulator registers

template <int HEAD_DIM, typename DT, typename DKV, class Variant = DecodeDefaultVariant>
auto decode_tc_kernel_ptr() {
  auto kernel = decode_tc_kernel<HEAD_DIM, DT, DKV, Variant>;
  static const cudaError_t configured = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(DecodeTcShape<HEAD_DIM, DKV>::kSmemBytes));
  cuda_check(configured, "cudaFuncSetAttribute(decode_tc)");
  return kernel;
}

// Calls f(IntTag<HPC>, TypeTag<DKV>) for the run-time KV dtype and heads per CTA; KV kinds not
// in KV_KINDS are refused.
template <typename DQ, int KV_KINDS = kKvAll, class F>
void dispatch_kv_hpc(int32_t kv_dtype, int hpc, F&& f) {
  auto with_hpc = [&](auto kv) {
    switch (hpc) {
      case 1: return f(IntTag<1>{}, kv);
      case 2: return f(IntTag<2>{}, kv);
      case 4: return f(IntTag<4>{}, kv);
      default: return f(IntTag<8>{}, kv);
    }
  };
  if constexpr ((KV_KINDS & kKvFp8) != 0) {
    if (kv_dtype == FI_FLOAT8_E4M3FN) return with_hpc(TypeTag<__nv_fp8_e4m3>{});
    if (kv_dtype == FI_FLOAT8_E5M2) return with_hpc(TypeTag<__nv_fp8_e5m2>{});
  }
  if constexpr ((KV_KINDS & kKv16) != 0) {
    if (kv_dtype != FI_FLOAT8_E4M3FN && kv_dtype != FI_FLOAT8_E5M2) return with_hpc(TypeTag<DQ>{});
  }
  fail(FI_ERR_UNSUPPORTED, "decode: this kernel is not built for kv dtype ", dtype_name(kv_dtype));
}

template <int HEAD_DIM, int HPC, typename DQ, typename DKV, class Variant = DecodeDefaultVariant>
auto decode_kernel_ptr() {
  using S = DecodeShape<HEAD_DIM, HPC, DKV>;
  auto kernel = decode_kernel<HEAD_DIM, HPC, DQ, DKV, Variant>;
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S::kSmemBytes));
  cuda_check(configured, "cudaFuncSetAttribute(decode)");
  return kernel;
}

// Calls f(TypeTag<DKV>) for the tensor-core kernel's instantiation serving the run-time KV dtype
// (16-bit: q's dtype; fp8 at head dim 128, the shape its fp8 fragments are laid out for) and
// returns true, or returns false where none is built.
template <int HEAD_DIM, typename DQ, int KV_KINDS = kKvAll, class F>
bool dispatch_tc_kv(int32_t kv_dtype, F&& f) {
  if constexpr (kTensorCoreHeadDim<HEAD_DIM>) {
    const bool fp8 = kv_dtype == FI_FLOAT8_E4M3FN || kv_dtype == FI_FLOAT8_E5M2;
    if constexpr ((KV_KINDS & kKv16) != 0) {
      if (!fp8) return f(TypeTag<DQ>{}), true;
    }
    if constexpr (HEAD_DIM == 128 && (KV_KINDS & kKvFp8) != 0) {
      if (kv_dtype == FI_FLOAT8_E4M3FN) return f(TypeTag<__nv_fp8_e4m3>{}), true;
      if (kv_dtype == FI_FLOAT8_E5M2) return f(TypeTag<__nv_fp8_e5m2>{}), true;
    }
  }
  return false;
}

template <int HEAD_DIM, typename DQ>
int decode_occupancy(int32_t kv_dtype, int group_size, bool tensor_cores) {
  int blocks = 1;
  if (tensor_cores && dispatch_tc_kv<HEAD_DIM, DQ>(kv_dtype, [&](auto kv) {
        using DKV = typename decltype(kv)::type;
        using S = DecodeTcShape<HEAD_DIM, DKV>;
        cuda_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_tc_kernel_ptr<HEAD_DIM, DQ, DKV>(), S::kThreads, S::kSmemBytes),
                   "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      }))
    return blocks;
  dispatch_kv_hpc<DQ>(kv_dtype, decode_heads_per_cta(group_size), [&](auto h, auto kv) {
    using DKV = typename decltype(kv)::type;
    using S = DecodeShape<HEAD_DIM, decltype(h)::value, DKV>;
    cuda_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_kernel_ptr<HEAD_DIM, decltype(h)::value, DQ, DKV>(),
                                                             S::kThreads, S::kSmemBytes),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  });
  return blocks;
}

// The plan's kernel (tensor-core or CUDA-core; a run with RoPE on the fly takes the CUDA-core one
// whatever the plan assumed, at the same grid width, and so would a variant with element
// transforms, which the plan already sends to the CUDA-core kernel),
// then the engine's merge of split requests. A
// generated variant (prefill_variant.cuh) instantiates it with its own Variant and KV kinds.
template <int HEAD_DIM, typename DQ, class Variant = DecodeDefaultVariant, int KV_KINDS = kKvAll>
void decode_launch(const typename Variant::KernelParams& p, const PrefillParams& a, cudaStream_t s) {
  bool launched = false;
  constexpr bool kHooksOnly = Variant::kQueryTransform || Variant::kKeyTransform || Variant::Output::kActive;
  if (a.kernel == FI_KERNEL_DECODE_TC && a.pos_encoding != FI_POS_ENCODING_ROPE_LLAMA && !kHooksOnly)
    launched = dispatch_tc_kv<HEAD_DIM, DQ, KV_KINDS>(a.kv_dtype, [&](auto kv) {
      using DKV = typename decltype(kv)::type;
      using S = DecodeTcShape<HEAD_DIM, DKV>;
      typename Variant::KernelParams tp = p;
      tp.head_chunks = (p.group_size + S::kRows - 1) / S::kRows;
      const dim3 grid(a.num_work, a.num_kv_heads * tp.head_chunks);
      decode_tc_kernel_ptr<HEAD_DIM, DQ, DKV, Variant>()<<<grid, S::kThreads, S::kSmemBytes, s>>>(tp);
      check_launch("decode tensor-core kernel");
    });
  if (!launched) dispatch_kv_hpc<DQ, KV_KINDS>(a.kv_dtype, decode_heads_per_cta(p.group_size), [&](auto h, auto kv) {
    using DKV = typename decltype(kv)::type;
    using S = DecodeShape<HEAD_DIM, decltype(h)::value, DKV>;
    auto kernel = decode_kernel_ptr<HEAD_DIM, decltype(h)::value, DQ, DKV, Variant>();
    const dim3 grid(a.num_work, a.num_kv_heads * p.head_chunks), block(S::kBdx, S::kBdy, S::kBdz);
    kernel<<<grid, block, S::kSmemBytes, s>>>(p);
    check_launch("decode kernel");
  });
  attention_merge<HEAD_DIM, DQ, Variant>(a, p, s);
}

inline void require_aligned(const void* ptr, std::initializer_list<int64_t> strides, int vec, const char* name) {
  bool ok = reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
  for (int64_t s : strides) ok = ok && s % vec == 0;
  require(ok, name, ": the CUDA decode kernels read 16-byte vectors, so the data pointer must be 16-byte aligned and every "
                    "stride a multiple of ", vec, " elements");
}

// Kernel parameters of a validated run (the library's decode_run_cuda and a generated variant's
// entry). q is scaled by sm_scale * k_scale: every logit() takes the natural logit.
// custom_logits: the variant's logit() replaces the built-in one, so the run's soft cap is off.
inline DecodeKernelParams make_decode_kernel_params(const PrefillParams& a, bool custom_logits) {
  const int group = a.num_qo_heads / a.num_kv_heads;
  const int hpc = decode_heads_per_cta(group);
  const int vec_kv = 16 / itemsize(a.kv_dtype), vec_q = 16 / itemsize(a.q_dtype);
  require_aligned(a.k, {a.k_stride_page, a.k_stride_n, a.k_stride_h}, vec_kv, "k");
  require_aligned(a.v, {a.v_stride_page, a.v_stride_n, a.v_stride_h}, vec_kv, "v");
  require_aligned(a.q, {a.q_stride_n, a.q_stride_h}, vec_q, "q");
  require_aligned(a.out, {a.out_stride_n, a.out_stride_h}, vec_q, "out");

  DecodeKernelParams p{};
  p.q = a.q;
  p.out = a.out;
  p.lse = a.lse;
  p.k = a.k;
  p.v = a.v;
  p.q_stride_b = a.q_stride_n;
  p.q_stride_h = a.q_stride_h;
  p.out_stride_b = a.out_stride_n;
  p.out_stride_h = a.out_stride_h;
  p.lse_stride_b = a.lse_stride_n;
  p.lse_stride_h = a.lse_stride_h;
  p.k_stride_page = a.k_stride_page;
  p.k_stride_pos = a.k_stride_n;
  p.k_stride_head = a.k_stride_h;
  p.v_stride_page = a.v_stride_page;
  p.v_stride_pos = a.v_stride_n;
  p.v_stride_head = a.v_stride_h;
  p.plan = a.plan;
  p.partial_o = a.partial_o;
  p.partial_lse = a.partial_lse;
  p.num_qo_heads = a.num_qo_heads;
  p.group_size = group;
  p.head_chunks = (group + hpc - 1) / hpc;
  p.page_div = FastDiv::of(uint32_t(a.page_size));
  p.pos_encoding = a.pos_encoding;
  p.window_left = a.window_left;
  p.soft_cap = !custom_logits && a.logits_soft_cap > 0 ? a.logits_soft_cap : 0.0f;
  p.soft_cap_rcp = p.soft_cap > 0 ? 1.0f / p.soft_cap : 0.0f;
  p.q_scale = a.sm_scale * a.k_scale;
  p.v_scale = a.v_scale;
  p.rope_rcp_scale = 1.0f / a.rope_scale;
  p.rope_theta = a.rope_theta;
  return p;
}

#define FI_DECODE_INSTANTIATE(HEAD_DIM, DQ)                      \
  template int decode_occupancy<HEAD_DIM, DQ>(int32_t, int, bool); \
  template void decode_launch<HEAD_DIM, DQ, DecodeDefaultVariant, kKvAll>(const DecodeKernelParams&, const PrefillParams&, cudaStream_t);

#define FI_DECODE_FOR_EACH_INSTANCE(X) \
  X(64, __half) X(64, __nv_bfloat16) X(128, __half) X(128, __nv_bfloat16) X(256, __half) X(256, __nv_bfloat16)

#define FI_DECODE_EXTERN(HEAD_DIM, DQ)                                  \
  extern template int decode_occupancy<HEAD_DIM, DQ>(int32_t, int, bool); \
  extern template void decode_launch<HEAD_DIM, DQ, DecodeDefaultVariant, kKvAll>(const DecodeKernelParams&, const PrefillParams&, cudaStream_t);
FI_DECODE_FOR_EACH_INSTANCE(FI_DECODE_EXTERN)

}  // namespace decode_detail
}  // namespace fi

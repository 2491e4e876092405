// CUDA prefill attention kernels (templates), FlashAttention-2 style on mma.sync m16n8k16.
// The instantiations are spread over prefill_d<qk>_<dtype>.cu so that they compile in parallel;
// prefill.cu launches them.
//
// One CTA of 4 warps computes CTA_ROWS = 64 * MQ packed query rows of one work item for one KV
// head; each warp owns 16 * MQ rows and keeps their softmax state and output in registers. K/V
// tiles of KV_TILE = 16 * MKV keys stream through two shared-memory stages (cp.async, K and V
// in separate commit groups so that QK^T starts while V still lands). Shared tiles are
// XOR-swizzled by 16-byte chunk (chunk c of row r sits at c ^ (r % 8)) so ldmatrix is
// conflict-free; V is read with ldmatrix.trans. Logits live in the log2 domain (exp2f).
//
// A plan tile (cta_tile_q packed rows) larger than CTA_ROWS is covered by gridDim.z CTAs; a
// smaller one leaves the CTA's extra rows idle. fp8 caches are converted to 16 bits while they
// are copied into shared memory (synchronous loads: a slower path).
//
// Variant hooks (Variant template argument): query/key transforms (RoPE), logit transform
// (scale, ALiBi, soft cap) and visibility (causal, custom mask, window). DefaultVariant serves
// every variant of the C API with run-time-uniform branches; a generated variant can replace it.
// On Hopper, prefill_launch runs the wgmma kernel of prefill_sm90.cuh for the cases it serves.
#pragma once
#include <cuda.h>

#include <atomic>
#include <cstring>
#include <string>

#include "../common/convert.cuh"
#include "../common/mma.cuh"
#include "builtin_variant.generated.h"
#include "decode_kernels.cuh"
#include "prefill.h"

namespace fi {
namespace prefill_detail {

struct PrefillKernelParams {
  PrefillParams a;
  int group;          // GQA group size
  float q_scale;      // sm_scale * k_scale * log2e: plain tiles' logits in the log2 domain
  float cap_log2e;      // soft cap * log2e (0: no cap)
  float cap_rcp_log2e;  // its reciprocal (0: no cap)
  float rope_rcp_scale;
};

// ---- shape

// Tuning knobs, overridable when building the check harness to compare variants.
#ifndef FI_PREFILL_MAX_STAGES
#define FI_PREFILL_MAX_STAGES 4
#endif
#ifndef FI_PREFILL_MKV128
#define FI_PREFILL_MKV128 4  // head dim 128 only; H100, 8192 causal: 307 TFLOP/s with 64-key tiles, 269 with 32
#endif

template <int DQK, int DVO, int MQ, int MKV, bool KV_FP8>
struct PrefillShape {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * MQ * kWarps;  // packed query rows per CTA
  static constexpr int kKvTile = 16 * MKV;
  static constexpr int kChunksQK = DQK / 8, kChunksVO = DVO / 8;  // 16-byte chunks per row
  static constexpr int kQElems = kRows * DQK;
  static constexpr int kKElems = kKvTile * DQK, kVElems = kKvTile * DVO;
  // As many K/V stages (2 to 4) as keep two CTAs within an H100 SM's shared memory: loads of
  // up to 3 tiles ahead hide L2/DRAM latency behind the short per-tile compute.
  static constexpr int kStageBudget = (113 * 1024 - kQElems * 2) / ((kKElems + kVElems) * 2);
  static constexpr int kStages = kStageBudget > FI_PREFILL_MAX_STAGES ? FI_PREFILL_MAX_STAGES : kStageBudget < 2 ? 2 : kStageBudget;
  // K/V loads: kRowThreads threads share one key row, so each thread looks up one key per tile.
  static constexpr int kRowThreads = kThreads / kKvTile;
  static_assert(kThreads % kKvTile == 0 && kChunksVO % kRowThreads == 0, "K/V load mapping");
  static constexpr size_t kSmemBytes = size_t(kQElems + kStages * (kKElems + kVElems)) * 2;
  static_assert(kChunksQK % 8 == 0 && kChunksVO % 8 == 0, "swizzle needs multiples of 64 dims");
  static_assert(DVO % 16 == 0 && DQK % 16 == 0, "mma tiles");
};

// ldmatrix lane addresses. A lane addresses row `row` (row % 8 == lane % 8 in every use) and
// chunk 2 * j + x of a swizzled tile; since the swizzle only permutes chunks within groups of 8,
// chunk 2 * j + x + 8 * q sits 8 * q chunks after chunk 2 * j + x. So 4 byte offsets per operand
// (j = 0..3) plus compile-time offsets cover every k step: few live registers.
template <int CHUNKS>
__device__ __forceinline__ void lane_offsets(uint32_t (&off)[4], int row, int x) {
#pragma unroll
  for (int j = 0; j < 4; ++j) off[j] = uint32_t(row * CHUNKS * 8 + (((2 * j + x) ^ (row & 7)) << 3)) * 2u;
}
// Byte offset of chunk pair `step` (chunks 2 * step, 2 * step + 1) given the lane offsets.
template <int STEP>
__device__ __forceinline__ uint32_t step_offset(const uint32_t (&off)[4]) {
  return off[STEP % 4] + (STEP / 4) * 128u;
}

// ---- RoPE (rotate half, as the decode kernels and the CPU backend): element c < D/2 pairs with
// c + D/2; frequency (1 / rope_scale) * theta^(-2c / D); angle reduced in double.
__device__ __forceinline__ void rope_sincos(int pos, float freq, float& sn, float& cs) {
  double angle = double(pos) * double(freq);
  angle -= 6.283185307179586 * rint(angle * 0.15915494309189535);
  __sincosf(float(angle), &sn, &cs);  // |angle| <= pi: the fast form is accurate here
}

// Eight fp8 values (e4m3 or e5m2, as kv_dtype says) as eight DT values in one 16-byte word: exact,
// since every fp8 value is a float16 and a bfloat16.
template <typename DT>
__device__ __forceinline__ uint4 fp8x8_to_16bit(uint2 raw, int32_t kv_dtype) {
  uint32_t out[4];
  const uint32_t words[2] = {raw.x, raw.y};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint16_t bits = uint16_t(words[i / 2] >> (16 * (i % 2)));
    const float2 f = kv_dtype == FI_FLOAT8_E4M3FN ? fp8x2_to_float2<__NV_E4M3>(bits) : fp8x2_to_float2<__NV_E5M2>(bits);
    out[i] = pack2<DT>(f.x, f.y);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// Replaces element (row, c) of rows [0, rows) of a swizzled 16-bit tile by f(row, c, value): a
// variant's query or key transform.
template <int D, typename DT, class F>
__device__ __forceinline__ void transform_tile(DT* tile, int rows, F&& f) {
  for (int item = threadIdx.x; item < rows * D; item += blockDim.x) {
    const int row = item / D, c = item % D;
    DT* e = tile + swizzle_elem<D / 8>(row, c);
    *e = from_float<DT>(f(row, c, to_float(*e)));
  }
}

// Rotates rows [0, rows) of a swizzled 16-bit tile in place; pos_of(row) gives the position.
template <int D, typename DT, class Pos>
__device__ __forceinline__ void rope_tile(DT* tile, int rows, const PrefillKernelParams& p, Pos&& pos_of) {
  constexpr int kHalf = D / 2;
  for (int item = threadIdx.x; item < rows * kHalf; item += blockDim.x) {
    const int row = item / kHalf, c = item % kHalf;
    const float freq = p.rope_rcp_scale * powf(p.a.rope_theta, -2.0f * c / D);
    float sn, cs;
    rope_sincos(pos_of(row), freq, sn, cs);
    DT* lo = tile + swizzle_elem<D / 8>(row, c);
    DT* hi = tile + swizzle_elem<D / 8>(row, c + kHalf);
    const float x = to_float(*lo), y = to_float(*hi);
    *lo = from_float<DT>(x * cs - y * sn);
    *hi = from_float<DT>(y * cs + x * sn);
  }
}

// The value of x, hidden from the compiler's loop-invariant code motion: what is computed from
// it inside the KV loop stays there instead of occupying registers across the whole loop (a
// few integer instructions per tile are cheaper than the spills they avoid).
__device__ __forceinline__ int opaque(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

template <int N, int I = 0, class F>
__device__ __forceinline__ void static_for(F&& f) {
  if constexpr (I < N) {
    f(IntTag<I>{});
    static_for<N, I + 1>(f);
  }
}

// ---- variant hooks

// The work item a tile belongs to, as the hooks see it.
struct ItemInfo {
  int request;
  int qo_len, kv_len;
  int qo_row0;  // global row of the request's first query
  int kv_head;
};

// Per-row facts a variant may use (one per accumulator row a thread holds; computed per tile
// where needed, and what a variant does not read is never computed).
struct RowInfo {
  int qi;       // query row within the request
  int qpos;     // its position (qi + kv_len - qo_len)
  int qo_head;
  float alibi;  // the head's ALiBi slope times log2e (0: off)
};

// The hooks of the C API's variants (RoPE, ALiBi, soft cap, causal / custom / window masks) with
// run-time-uniform branches. A generated variant (lib/jit.ts, prefill_variant.cuh) derives from
// it and replaces logit() and visible(); its KernelParams extend PrefillKernelParams with the
// variant's own parameters.
struct DefaultVariant {
  using KernelParams = PrefillKernelParams;
  // false: the transformed logit is the weight of its key (no max, no exp, no normalization).
  static constexpr bool kUseSoftmax = true;
  // true: visible() tests more than the plan's masks, so every tile takes the per-element test.
  // A variant that replaces visible() must set it (the Hopper kernel's row-limit test stands for
  // this visible() otherwise).
  static constexpr bool kElementwiseMask = false;
  // true: query() / key() transform each element of q and k (after RoPE in the mma.sync kernel;
  // the Hopper kernel, which has no RoPE, rewrites Q and each K tile in shared memory), and
  // Output::apply each element of the output (normalized, merged, times v_scale).
  static constexpr bool kQueryTransform = false, kKeyTransform = false;
  using Output = NoOutputTransform;
  static __device__ __forceinline__ float query(const PrefillKernelParams&, float q, const ItemInfo&, int qo_idx, int qo_head, int dim) {
    return q;
  }
  static __device__ __forceinline__ float key(const PrefillKernelParams&, float k, const ItemInfo&, int key, int dim) { return k; }
  static __device__ __forceinline__ bool rope(const PrefillKernelParams& p) {
    return p.a.pos_encoding == FI_POS_ENCODING_ROPE_LLAMA;
  }
  // True when logit() is the plain scale for this run (the kernel then skips the hook).
  static __device__ __forceinline__ bool plain_logits(const PrefillKernelParams& p) {
    return p.a.pos_encoding != FI_POS_ENCODING_ALIBI && !(p.a.logits_soft_cap > 0.0f);
  }
  // Logit in the log2 domain from the raw dot product (before masking): the built-in transform
  // (ALiBi, soft cap) generated from lib/jit_builtin.ts, given its inputs in log2 units.
  static __device__ __forceinline__ float logit(const PrefillKernelParams& p, float dot, const ItemInfo& it, const RowInfo& row, int key) {
    return builtin_logits<float>(dot * p.q_scale, row.alibi, p.cap_log2e, p.cap_rcp_log2e, it.request, row.qi, row.qpos, key, row.qo_head, it.kv_head,
                                 it.qo_len, it.kv_len, int64_t(it.qo_row0) + row.qi);
  }
  // Mask-dependent visibility (the key range of the item and causal bound are applied outside
  // for whole tiles; this is the per-element test on tiles that need it). Rows past the request
  // (qi >= qo_len: padding of the last tile) see nothing, and never read the custom mask: their
  // bits lie past the request's mask, possibly past its allocation.
  static __device__ __forceinline__ bool visible(const PrefillKernelParams& p, const uint8_t* mask, const ItemInfo& it, const RowInfo& row,
                                                 int key) {
    if (row.qi >= it.qo_len) return false;
    bool ok = true;
    if (p.a.mask_mode == kMaskCausal) ok = key <= row.qpos;
    if (p.a.mask_mode == kMaskCustom) {
      const int64_t bit = int64_t(row.qi) * it.kv_len + key;
      ok = (mask[bit >> 3] >> (bit & 7)) & 1;
    }
    if (p.a.window_left >= 0) ok = ok && key >= row.qpos - p.a.window_left;
    return ok;
  }
};

// Kernel constants derived from the run's parameters.
inline PrefillKernelParams make_kernel_params(const PrefillParams& a) {
  PrefillKernelParams kp{};
  kp.a = a;
  kp.group = a.num_qo_heads / a.num_kv_heads;
  kp.q_scale = a.sm_scale * a.k_scale * kLog2e;
  kp.cap_log2e = a.logits_soft_cap > 0.0f ? a.logits_soft_cap * kLog2e : 0.0f;
  kp.cap_rcp_log2e = a.logits_soft_cap > 0.0f ? 1.0f / kp.cap_log2e : 0.0f;
  kp.rope_rcp_scale = 1.0f / a.rope_scale;
  return kp;
}

// ---- the kernel

template <int DQK, int DVO, int MQ, int MKV, typename DT, bool KV_FP8, class Variant = DefaultVariant>
__global__ void __launch_bounds__(PrefillShape<DQK, DVO, MQ, MKV, KV_FP8>::kThreads)
    prefill_kernel(const __grid_constant__ typename Variant::KernelParams p) {
  using S = PrefillShape<DQK, DVO, MQ, MKV, KV_FP8>;
  constexpr int CQK = S::kChunksQK, CVO = S::kChunksVO, KVT = S::kKvTile;
  constexpr int NVO = DVO / 8;  // 8-wide output column tiles
  extern __shared__ __align__(16) uint8_t smem[];
  DT* q_smem = reinterpret_cast<DT*>(smem);
  DT* k_smem = q_smem + S::kQElems;
  DT* v_smem = k_smem + S::kStages * S::kKElems;

  const PrefillPlanView& plan = p.a.plan;
  // Work items in reverse launch order: planners list a request's tiles by ascending rows, and
  // under a causal mask the last rows are the longest, so the long items start first.
  const int w = int(gridDim.x) - 1 - int(blockIdx.x);
  if (w >= plan.header[0]) return;  // padding of a CUDA-graph launch
  const int kv_head = blockIdx.y;
  const int r = plan.work_request[w];
  const int G = p.group;
  const int qo_row0 = plan.qo_indptr[r];
  const int qo_len = plan.qo_indptr[r + 1] - qo_row0;
  const int kv_len = plan.kv_len[r];
  const int delta = kv_len - qo_len;  // query row i sits at position i + delta
  const int tile_begin = plan.work_qo_begin[w];
  const int tile_end = min(tile_begin + p.a.cta_tile_q, qo_len * G);
  const int row_begin = tile_begin + int(blockIdx.z) * S::kRows;  // this CTA's first packed row
  if (row_begin >= tile_end) return;
  const int rows = min(S::kRows, tile_end - row_begin);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;

  // Q tile -> shared memory (rows past the tile are zero).
  {
    const DT* q = static_cast<const DT*>(p.a.q);
    for (int c = tid; c < S::kRows * CQK; c += S::kThreads) {
      const int row = c / CQK, chunk = c % CQK;
      const int pr = row_begin + row;
      const bool valid = row < rows;
      const DT* src = q;
      if (valid) src += int64_t(qo_row0 + pr / G) * p.a.q_stride_n + int64_t(kv_head * G + pr % G) * p.a.q_stride_h + chunk * 8;
      cp_async_16(q_smem + swizzle<CQK>(row, chunk), src, valid);
    }
    cp_async_commit();
  }

  // Key range of this CTA: the item's keys, cut by the causal bound of its last row and the
  // window of its first.
  const int first_i = row_begin / G, last_i = (row_begin + rows - 1) / G;
  int kv_lo = plan.work_kv_begin[w], kv_hi = plan.work_kv_end[w];
  if (p.a.mask_mode == kMaskCausal) kv_hi = min(kv_hi, last_i + delta + 1);
  if (p.a.window_left >= 0) kv_lo = max(kv_lo, first_i + delta - p.a.window_left);
  const int num_tiles = kv_hi > kv_lo ? (kv_hi - kv_lo + KVT - 1) / KVT : 0;

  // Loaders. Paged: key j lives at page indices[kv_indptr[r] + j / page_size], slot j % page_size;
  // ragged: at row kv_indptr[r] + j. Pointers are rebuilt per tile from opaque values (see opaque).
  const int kv_base = plan.kv_indptr[r];
  auto key_offsets = [&](int key, int64_t& ko, int64_t& vo) {
    const int ps = p.a.page_size;
    if (ps > 0) {
      const int pi = (ps & (ps - 1)) == 0 ? key >> (__ffs(ps) - 1) : key / ps;
      const int64_t page = plan.indices[opaque(kv_base) + pi], pos = key - pi * ps;
      ko = page * p.a.k_stride_page + pos * p.a.k_stride_n;
      vo = page * p.a.v_stride_page + pos * p.a.v_stride_n;
    } else {
      const int64_t row = opaque(kv_base) + key;
      ko = row * p.a.k_stride_n;
      vo = row * p.a.v_stride_n;
    }
  };
  using KVT_T = std::conditional_t<KV_FP8, uint8_t, DT>;
  // Copies (or converts) this thread's chunks of key row `row` of a K or V tile: CH chunks of 8
  // elements per row, kRowThreads threads per row.
  constexpr int RT = S::kRowThreads;
  auto load_rows = [&](auto chunks_tag, DT* dst, const KVT_T* src_row, bool valid, int load_row, int load_part) {
    constexpr int CH = decltype(chunks_tag)::value;
#pragma unroll 1
    for (int i = 0; i < CH / RT; ++i) {
      const int chunk = load_part + RT * i;
      const KVT_T* src = src_row + chunk * 8;
      DT* d = dst + swizzle<CH>(load_row, chunk);
      if constexpr (!KV_FP8) {
        cp_async_16(d, src, valid);
      } else {
        uint2 raw = make_uint2(0u, 0u);
        if (valid) raw = *reinterpret_cast<const uint2*>(src);
        *reinterpret_cast<uint4*>(d) = fp8x8_to_16bit<DT>(raw, p.a.kv_dtype);
      }
    }
  };
  auto load_tile = [&](int tile, int stage) {
    const int t_ = opaque(tid), load_row = t_ / RT, load_part = t_ % RT;
    const int key = kv_lo + tile * KVT + load_row;
    const bool valid = key < kv_hi;
    int64_t ko = 0, vo = 0;
    if (valid) key_offsets(key, ko, vo);
    const int64_t kvh = opaque(kv_head);
    const KVT_T* k_row = static_cast<const KVT_T*>(p.a.k) + kvh * p.a.k_stride_h + ko;
    const KVT_T* v_row = static_cast<const KVT_T*>(p.a.v) + kvh * p.a.v_stride_h + vo;
    load_rows(IntTag<CQK>{}, k_smem + stage * S::kKElems, k_row, valid, load_row, load_part);
    load_rows(IntTag<CVO>{}, v_smem + stage * S::kVElems, v_row, valid, load_row, load_part);
  };

  // Per-row facts of the 2 * MQ rows this thread accumulates (rows g and g + 8 of each m tile),
  // computed where needed (non-plain tiles only) from an opaque row base.
  auto row_infos = [&](RowInfo (&ri)[MQ][2]) {
    const int base = opaque(row_begin) + warp * 16 * MQ + g;
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pr = base + mq * 16 + 8 * h;
        ri[mq][h].qi = pr / G;
        ri[mq][h].qpos = pr / G + delta;
        ri[mq][h].qo_head = kv_head * G + pr % G;
        ri[mq][h].alibi = p.a.pos_encoding == FI_POS_ENCODING_ALIBI
                              ? alibi_slope(kv_head * G + pr % G, p.a.num_qo_heads) * kLog2e : 0.0f;
      }
    }
  };
  const uint8_t* mask = p.a.mask_mode == kMaskCustom ? p.a.custom_mask + plan.mask_offset[r] : nullptr;
  const ItemInfo item{r, qo_len, kv_len, qo_row0, kv_head};

  float o[MQ][NVO][4];
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
    for (int n = 0; n < NVO; ++n) o[mq][n][0] = o[mq][n][1] = o[mq][n][2] = o[mq][n][3] = 0.0f;
  float m[MQ][2], dsum[MQ][2];
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq) m[mq][0] = m[mq][1] = -INFINITY, dsum[mq][0] = dsum[mq][1] = 0.0f;

  // Tiles 0 .. kStages - 2 in flight, one commit group each (empty past the last tile, so that
  // the wait counts below hold).
#pragma unroll
  for (int t0 = 0; t0 < S::kStages - 1; ++t0) {
    if (t0 < num_tiles) load_tile(t0, t0);
    cp_async_commit();
  }
  // Q must be in shared memory (and rotated) before the first QK^T.
  cp_async_wait<S::kStages - 1>();
  __syncthreads();
  if (Variant::rope(p)) {
    rope_tile<DQK>(q_smem, rows, p, [&](int row) { return (row_begin + row) / G + delta; });
    __syncthreads();
  }
  if constexpr (Variant::kQueryTransform) {
    transform_tile<DQK>(q_smem, rows, [&](int row, int c, float x) {
      const int pr = row_begin + row;
      return Variant::query(p, x, item, pr / G, kv_head * G + pr % G, c);
    });
    __syncthreads();
  }

  // Rows of this tile that may see only part of it need the element-wise test; tiles entirely
  // inside every row's visible range skip it.
  const bool elementwise_always = Variant::kElementwiseMask || p.a.mask_mode == kMaskCustom || p.a.window_left >= 0;
  const int full_hi = p.a.mask_mode == kMaskCausal ? min(kv_hi, first_i + delta + 1) : kv_hi;
  const int qrow_base = warp * 16 * MQ;
  const uint32_t q_base = smem_addr(q_smem);

  // Stage of this tile and the stage its loads go to, advanced incrementally: a `tile % stages`
  // would make the compiler unroll the loop by the stage count (and spend registers on it).
  int stage = 0, load_stage = S::kStages - 1;
#pragma unroll 1
  for (int tile = 0; tile < num_tiles; ++tile) {
    const int key0 = kv_lo + tile * KVT;
    const DT* ks = k_smem + stage * S::kKElems;
    const DT* vs = v_smem + stage * S::kVElems;
    cp_async_wait<S::kStages - 2>();  // this tile landed (for this thread's copies)
    __syncthreads();  // ... for every thread's; and the previous tile's stage is free again
    if (tile + S::kStages - 1 < num_tiles) load_tile(tile + S::kStages - 1, load_stage);
    stage = stage + 1 == S::kStages ? 0 : stage + 1;
    load_stage = load_stage + 1 == S::kStages ? 0 : load_stage + 1;
    cp_async_commit();
    if (Variant::rope(p)) {
      rope_tile<DQK>(const_cast<DT*>(ks), KVT, p, [&](int row) { return key0 + row; });
      __syncthreads();
    }
    if constexpr (Variant::kKeyTransform) {
      transform_tile<DQK>(const_cast<DT*>(ks), KVT, [&](int row, int c, float x) { return Variant::key(p, x, item, key0 + row, c); });
      __syncthreads();
    }

    // S = Q K^T
    float s[MQ][MKV][8];
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
      for (int mk = 0; mk < MKV; ++mk)
#pragma unroll
        for (int e = 0; e < 8; ++e) s[mq][mk][e] = 0.0f;
    const uint32_t k_base = smem_addr(ks);
    uint32_t q_off[4], k_off[4];
    {
      const int ln = opaque(lane);
      lane_offsets<CQK>(q_off, qrow_base + (ln % 8) + ((ln / 8) % 2) * 8, ln / 16);
      lane_offsets<CQK>(k_off, (ln % 8) + (ln / 16) * 8, (ln / 8) % 2);
    }
    static_for<DQK / 16>([&](auto kstep_tag) {
      constexpr int kstep = decltype(kstep_tag)::value;
      uint32_t a[MQ][4];
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) ldmatrix_x4(a[mq], q_base + step_offset<kstep>(q_off) + mq * 16 * DQK * 2);
#pragma unroll
      for (int mk = 0; mk < MKV; ++mk) {
        uint32_t b[4];
        ldmatrix_x4(b, k_base + step_offset<kstep>(k_off) + mk * 16 * DQK * 2);
#pragma unroll
        for (int mq = 0; mq < MQ; ++mq) {
          mma_16816<DT>(*reinterpret_cast<float(*)[4]>(&s[mq][mk][0]), a[mq], b[0], b[1]);
          mma_16816<DT>(*reinterpret_cast<float(*)[4]>(&s[mq][mk][4]), a[mq], b[2], b[3]);
        }
      }
    });

    // Logits, masks, online softmax. On tiles that need the element-wise test, each row's
    // visibility of this thread's 4 * MKV keys is gathered first into one bit mask (a rolled
    // loop: keeps custom-mask loads from occupying a register each).
    const bool elementwise = elementwise_always || key0 + KVT > full_hi;
    uint32_t vis[MQ][2];
    RowInfo ri[MQ][2];
    const bool plain = !elementwise && Variant::plain_logits(p);
    if (!plain) row_infos(ri);
    if (elementwise) {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t bits = 0;
#pragma unroll 1
          for (int b = 0; b < 4 * MKV; ++b) {
            const int key = key0 + (b / 4) * 16 + ((b / 2) % 2) * 8 + 2 * t + (b & 1);
            const bool ok = key < kv_hi && Variant::visible(p, mask, item, ri[mq][h], key);
            bits |= uint32_t(ok) << b;
          }
          vis[mq][h] = bits;
        }
      }
    }
    // Plain tiles (no mask test, no logit variant) only scale; the others run the hooks.
    if (plain) {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
        for (int mk = 0; mk < MKV; ++mk)
#pragma unroll
          for (int e = 0; e < 8; ++e) s[mq][mk][e] *= p.q_scale;
    } else {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
        for (int mk = 0; mk < MKV; ++mk)
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const int h = (e % 4) / 2;
            const int key = key0 + mk * 16 + (e / 4) * 8 + 2 * t + (e & 1);
            float x = Variant::logit(p, s[mq][mk][e], item, ri[mq][h], key);
            // A hidden key: weight exp2(-inf) = 0 with softmax, weight 0 without.
            if (elementwise && !((vis[mq][h] >> (mk * 4 + (e / 4) * 2 + (e & 1))) & 1u)) x = Variant::kUseSoftmax ? -INFINITY : 0.0f;
            s[mq][mk][e] = x;
          }
    }
    // Online softmax: the running maximum and sum per row, weights exp2(x - max).
    if constexpr (Variant::kUseSoftmax) {
      float rescale[MQ][2];
      bool grew = false;
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int mk = 0; mk < MKV; ++mk)
#pragma unroll
          for (int e = 0; e < 8; ++e) tile_max[(e % 4) / 2] = fmaxf(tile_max[(e % 4) / 2], s[mq][mk][e]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
          tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
          const float m_new = fmaxf(m[mq][h], tile_max[h]);
          const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: weights stay 0
          rescale[mq][h] = exp2f(m[mq][h] - m_use);
          grew = grew || m_new > m[mq][h];
          m[mq][h] = m_new;
          dsum[mq][h] *= rescale[mq][h];
#pragma unroll
          for (int mk = 0; mk < MKV; ++mk) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              if ((e % 4) / 2 != h) continue;
              s[mq][mk][e] = exp2f(s[mq][mk][e] - m_use);
              dsum[mq][h] += s[mq][mk][e];
            }
          }
        }
      }
      // Rescale the accumulators only when some row's maximum grew (rare after the first tiles;
      // otherwise every factor is exactly 1).
      if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
        for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
          for (int n = 0; n < NVO; ++n) {
            o[mq][n][0] *= rescale[mq][0];
            o[mq][n][1] *= rescale[mq][0];
            o[mq][n][2] *= rescale[mq][1];
            o[mq][n][3] *= rescale[mq][1];
          }
      }
    }

    // O += P V
    const uint32_t v_base = smem_addr(vs);
    uint32_t v_off[4];
    {
      const int ln = opaque(lane);
      lane_offsets<CVO>(v_off, (ln % 8) + ((ln / 8) % 2) * 8, ln / 16);
    }
#pragma unroll
    for (int mk = 0; mk < MKV; ++mk) {
      uint32_t pa[MQ][4];
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
        pa[mq][0] = pack2<DT>(s[mq][mk][0], s[mq][mk][1]);
        pa[mq][1] = pack2<DT>(s[mq][mk][2], s[mq][mk][3]);
        pa[mq][2] = pack2<DT>(s[mq][mk][4], s[mq][mk][5]);
        pa[mq][3] = pack2<DT>(s[mq][mk][6], s[mq][mk][7]);
      }
      static_for<NVO / 2>([&](auto cc_tag) {
        constexpr int cc = decltype(cc_tag)::value;
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_base + step_offset<cc>(v_off) + mk * 16 * DVO * 2);
#pragma unroll
        for (int mq = 0; mq < MQ; ++mq) {
          mma_16816<DT>(o[mq][2 * cc], pa[mq], b[0], b[1]);
          mma_16816<DT>(o[mq][2 * cc + 1], pa[mq], b[2], b[3]);
        }
      });
    }
  }
  cp_async_wait<0>();

  // Finish: row sums across the quad, normalize, write the output (or a partial state).
  const int chunk = plan.work_chunk[w];
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = dsum[mq][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int local = qrow_base + mq * 16 + g + 8 * h;
      if (local >= rows) continue;
      // Without softmax the weights need no normalization, and split rows' partial states are
      // summed by the merge (their lse is a placeholder).
      const float scale = !Variant::kUseSoftmax ? p.a.v_scale : sum > 0.0f ? p.a.v_scale / sum : 0.0f;
      const float lse2 = !Variant::kUseSoftmax ? 0.0f : sum > 0.0f ? m[mq][h] + log2f(sum) : -INFINITY;
      const int pr = row_begin + local;
      const int n_global = qo_row0 + pr / G, head = kv_head * G + pr % G;
      if (chunk < 0) {
        DT* out = static_cast<DT*>(p.a.out) + int64_t(n_global) * p.a.out_stride_n + int64_t(head) * p.a.out_stride_h + 2 * t;
#pragma unroll
        for (int n = 0; n < NVO; ++n) {
          float x = o[mq][n][2 * h] * scale, y = o[mq][n][2 * h + 1] * scale;
          if constexpr (Variant::Output::kActive) {
            const OutputIndex ix{r, n_global - qo_row0, head, kv_head, qo_len, kv_len, n_global};
            x = Variant::Output::apply(p.vp, x, ix, n * 8 + 2 * t);
            y = Variant::Output::apply(p.vp, y, ix, n * 8 + 2 * t + 1);
          }
          *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<DT>(x, y);
        }
        if (p.a.lse != nullptr && t == 0) p.a.lse[int64_t(n_global) * p.a.lse_stride_n + int64_t(head) * p.a.lse_stride_h] = lse2 * kLn2;
      } else {
        const int64_t slot = plan.merge_indptr[n_global] + chunk;
        float* po = p.a.partial_o + (slot * p.a.num_qo_heads + head) * DVO + 2 * t;
#pragma unroll
        for (int n = 0; n < NVO; ++n) *reinterpret_cast<float2*>(po + n * 8) = make_float2(o[mq][n][2 * h] * scale, o[mq][n][2 * h + 1] * scale);
        if (t == 0) p.a.partial_lse[slot * p.a.num_qo_heads + head] = lse2;
      }
    }
  }
}

#include "prefill_sm90.cuh"

// ---- launch choices per (head dims, q dtype), instantiated in prefill_d*.cu

// CTA configurations: MQ m tiles per warp, MKV 16-key blocks per K/V tile. The 128-row CTA
// (MQ = 2) holds MQ * DVO / 2 output accumulators per thread, too many at head dim 256 (there a
// 128-row plan tile runs as two 64-row CTAs). Its K/V tile is 64 keys at head dim 128 (255
// registers, no spills; measured faster than 32) and 32 keys otherwise (registers, and shared
// memory for two CTAs per SM at 192/128); d256 64-row CTAs take 32-key tiles for shared memory.
template <int DQK, int DVO>
struct Configs {
  static constexpr bool kHas128 = DVO <= 128;
  static constexpr int kMkv64 = DQK >= 256 ? 2 : 4;
  static constexpr int kMkv128 = DQK == 128 ? FI_PREFILL_MKV128 : 2;
};

template <int DQK, int DVO, int MQ, int MKV, typename DT, bool KV_FP8, class Variant = DefaultVariant>
auto prefill_kernel_ptr() {
  using S = PrefillShape<DQK, DVO, MQ, MKV, KV_FP8>;
  auto kernel = prefill_kernel<DQK, DVO, MQ, MKV, DT, KV_FP8, Variant>;
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S::kSmemBytes));
  cuda_check(configured, "cudaFuncSetAttribute(prefill)");
  return kernel;
}

// Calls f(IntTag<MQ>, IntTag<MKV>, bool_constant<KV_FP8>) for the kernel that serves this run.
template <int DQK, int DVO, class F>
void dispatch_config(int32_t q_dtype, int32_t kv_dtype, int cta_tile_q, F&& f) {
  using C = Configs<DQK, DVO>;
  if (kv_dtype != q_dtype) return f(IntTag<1>{}, IntTag<C::kMkv64>{}, std::true_type{});
  if constexpr (C::kHas128) {
    if (cta_tile_q >= 128) return f(IntTag<2>{}, IntTag<C::kMkv128>{}, std::false_type{});
  }
  return f(IntTag<1>{}, IntTag<C::kMkv64>{}, std::false_type{});
}

template <int DQK, int DVO, typename DT>
int prefill_occupancy(int32_t kv_dtype, int cta_tile_q) {
  constexpr int32_t q_dtype = std::is_same_v<DT, __half> ? FI_FLOAT16 : FI_BFLOAT16;
  int blocks = 1;
  dispatch_config<DQK, DVO>(q_dtype, kv_dtype, cta_tile_q, [&](auto mq, auto mkv, auto fp8) {
    using S = PrefillShape<DQK, DVO, decltype(mq)::value, decltype(mkv)::value, decltype(fp8)::value>;
    auto kernel = prefill_kernel_ptr<DQK, DVO, decltype(mq)::value, decltype(mkv)::value, DT, decltype(fp8)::value>();
    cuda_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, S::kThreads, S::kSmemBytes),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor(prefill)");
    // A 128-row plan tile served by 64-row CTAs counts as one CTA per pair.
    const int per_tile = cta_tile_q > S::kRows ? cta_tile_q / S::kRows : 1;
    blocks = blocks / per_tile > 0 ? blocks / per_tile : 1;
  });
  return blocks;
}

template <int D, typename DT, class Variant = DefaultVariant>
auto prefill_sm90_kernel_ptr() {
  auto kernel = prefill_sm90_kernel<D, DT, Variant>;
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Sm90Shape<D>::kSmemBytes));
  cuda_check(configured, "cudaFuncSetAttribute(prefill sm90)");
  return kernel;
}

// Whether a kernel whose body exists only in the sm_90a image can run on the current device:
// compute capability 9.x and the image the device loads for it is the sm_90a one: binary version
// 90 and a real body (the empty body of an sm_80 or plain sm_90 image uses a handful of
// registers, the real ones over a hundred). `known` caches the answer per device.
inline bool sm90_body_usable(const void* kernel, std::atomic<int> (&known)[64]) {
  int dev = 0;
  cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev >= 0 && dev < 64 && known[dev].load() != 0) return known[dev].load() == 1;
  int major = 0;
  cuda_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  cudaFuncAttributes fa{};
  const bool ok = major == 9 && cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion == 90 && fa.numRegs >= 64;
  if (dev >= 0 && dev < 64) known[dev].store(ok ? 1 : 2);
  return ok;
}

template <int D, typename DT, class Variant = DefaultVariant>
bool prefill_sm90_usable() {
  static std::atomic<int> known[64];  // per device: 0 unknown, 1 usable, 2 not
  return sm90_body_usable(reinterpret_cast<const void*>(prefill_sm90_kernel<D, DT, Variant>), known);
}

// Why the wgmma kernel cannot serve these arguments on the current device ("" when it can): it
// takes 16-bit q and kv of one dtype, head dims (64, 64), (128, 128) and (256, 256), plan tiles of
// 128 rows, and every variant but RoPE.
template <int DQK, int DVO, typename DT, class Variant = DefaultVariant>
std::string prefill_sm90_unsupported(int32_t kv_dtype, int32_t pos_encoding) {
  if constexpr (DQK == DVO && (DQK == 64 || DQK == 128 || DQK == 256)) {
    constexpr int32_t q_dtype = std::is_same_v<DT, __half> ? FI_FLOAT16 : FI_BFLOAT16;
    if (kv_dtype != q_dtype) return std::string("kv_dtype ") + dtype_name(kv_dtype) + " differs from q's " + dtype_name(q_dtype);
    if (pos_encoding == FI_POS_ENCODING_ROPE_LLAMA) return "it has no ROPE_LLAMA";
    if (!prefill_sm90_usable<DQK, DT, Variant>()) return "the device is not a Hopper GPU running this library's sm_90a image";
    return "";
  } else {
    return "head dims (" + std::to_string(DQK) + ", " + std::to_string(DVO) + "): it serves (64, 64), (128, 128) and (256, 256)";
  }
}

template <int DQK, int DVO, typename DT, class Variant = DefaultVariant>
void prefill_launch_sm90(const typename Variant::KernelParams& kp, cudaStream_t stream) {
  const PrefillParams& a = kp.a;
  const std::string why = prefill_sm90_unsupported<DQK, DVO, DT, Variant>(a.kv_dtype, a.pos_encoding);
  require(why.empty() && a.cta_tile_q == 128, "prefill: the fa3 kernel cannot run this plan: ", why.empty() ? "tile not 128" : why);
  if constexpr (DQK == DVO && (DQK == 64 || DQK == 128 || DQK == 256)) {
    auto kernel = prefill_sm90_kernel_ptr<DQK, DT, Variant>();
    // Persistent: one CTA per SM at most (its shared memory allows no second), looping over the
    // num_work x num_kv_heads items.
    int dev = 0, sms = 0;
    cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    const int64_t items = int64_t(a.num_work) * a.num_kv_heads;
    const unsigned grid = unsigned(std::min<int64_t>(items, sms));
    Sm90Maps maps;
    sm90_make_maps(a, DQK, Sm90Shape<DQK>::kKvTile, maps);
    kernel<<<grid, Sm90Shape<DQK>::kThreads, Sm90Shape<DQK>::kSmemBytes, stream>>>(kp, maps);
    check_launch("prefill sm90 kernel");
  }
}

// The mma.sync kernel for the run, then the merge of split rows.
template <int DQK, int DVO, typename DT, class Variant = DefaultVariant, int KV_KINDS = kKvAll>
void prefill_launch_fa2(const typename Variant::KernelParams& kp, cudaStream_t stream) {
  const PrefillParams& a = kp.a;
  dispatch_config<DQK, DVO>(a.q_dtype, a.kv_dtype, a.cta_tile_q, [&](auto mq, auto mkv, auto fp8) {
    constexpr bool kFp8 = decltype(fp8)::value;
    if constexpr ((KV_KINDS & (kFp8 ? kKvFp8 : kKv16)) != 0) {
      using S = PrefillShape<DQK, DVO, decltype(mq)::value, decltype(mkv)::value, kFp8>;
      auto kernel = prefill_kernel_ptr<DQK, DVO, decltype(mq)::value, decltype(mkv)::value, DT, kFp8, Variant>();
      const int z = a.cta_tile_q > S::kRows ? a.cta_tile_q / S::kRows : 1;
      const dim3 grid(a.num_work, a.num_kv_heads, z);
      kernel<<<grid, S::kThreads, S::kSmemBytes, stream>>>(kp);
      check_launch("prefill kernel");
    } else {
      fail(FI_ERR_UNSUPPORTED, "prefill: this kernel is not built for kv dtype ", dtype_name(a.kv_dtype));
    }
  });
  attention_merge<DVO, DT, Variant>(kp.a, kp, stream);
}

template <int DQK, int DVO, typename DT>
void prefill_launch(const PrefillKernelParams& kp, cudaStream_t stream) {
  if (kp.a.kernel == FI_KERNEL_FA3) {
    prefill_launch_sm90<DQK, DVO, DT>(kp, stream);
    attention_merge<DVO, DT, DefaultVariant>(kp.a, kp, stream);
  } else {
    prefill_launch_fa2<DQK, DVO, DT>(kp, stream);
  }
}

#define FI_PREFILL_INSTANTIATE(DQK, DVO, DT)                                     \
  template int prefill_occupancy<DQK, DVO, DT>(int32_t, int);                      \
  template std::string prefill_sm90_unsupported<DQK, DVO, DT>(int32_t, int32_t);  \
  template void prefill_launch<DQK, DVO, DT>(const PrefillKernelParams&, cudaStream_t);

#define FI_PREFILL_FOR_EACH_INSTANCE(X)                                                                   \
  X(64, 64, __half) X(64, 64, __nv_bfloat16) X(128, 128, __half) X(128, 128, __nv_bfloat16) X(192, 128, __half) \
      X(192, 128, __nv_bfloat16) X(256, 256, __half) X(256, 256, __nv_bfloat16)

#define FI_PREFILL_EXTERN(DQK, DVO, DT)                                          \
  extern template int prefill_occupancy<DQK, DVO, DT>(int32_t, int);               \
  extern template std::string prefill_sm90_unsupported<DQK, DVO, DT>(int32_t, int32_t); \
  extern template void prefill_launch<DQK, DVO, DT>(const PrefillKernelParams&, cudaStream_t);
FI_PREFILL_FOR_EACH_INSTANCE(FI_PREFILL_EXTERN)

}  // namespace prefill_detail
}  // namespace fi

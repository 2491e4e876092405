// Tensor-core decode for GQA groups (FlashInfer's use_tensor_cores path, our own kernel).
//
// The query heads of one group are the rows of the mma's A operand (16 rows, group heads
// padded with zeros), so QK^T and PV run on mma.sync m16n8k16 while every KV byte is read once.
// A CTA of 4 warps streams 32-token K/V tiles through a deep cp.async pipeline into swizzled
// shared memory (16-byte chunk c of row r sits at c ^ (r % 8), so ldmatrix is conflict-free);
// each warp owns 8 tokens of every tile (QK^T: m16n8k16 over head_dim; PV: m16n8k8 over its 8
// tokens) and keeps its own online softmax, merged across warps at the end. Small tiles and many
// stages keep more bytes in flight per SM for the same shared memory (decode is latency-bound
// on loads: ncu showed 67% of DRAM bandwidth with 64-token tiles and 3 stages).
//
// fp8 caches (head dim 128) stay fp8 in shared memory (half the bytes per tile, twice the
// stages) and become float16 operands as fragments are read (bfloat16 q is scaled into float16
// once per CTA: bf16_q_to_half). ldmatrix cannot widen bytes, so each
// thread reads its own bytes, in an order chosen so that they are contiguous: a sum over head
// dims does not care about their order, so QK^T takes dims in a permuted order (q's fragments
// follow the same order), and PV gives each thread 4 adjacent dims of two tokens, pairing the
// tokens with a byte permute; its output columns come out permuted and are put back in the merge.
#pragma once
#include "../common/mma.cuh"

namespace fi {
namespace decode_detail {

template <int HEAD_DIM, typename DKV>
struct DecodeTcShape {
  static constexpr bool kFp8 = sizeof(DKV) == 1;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16;  // query heads per CTA
  static constexpr int kTokensPerWarp = 8;
  static constexpr int kTile = kWarps * kTokensPerWarp;
  static constexpr int kChunks = HEAD_DIM * int(sizeof(DKV)) / 16;  // 16-byte chunks per row
  static constexpr int kStageElems = kTile * HEAD_DIM;
  // 64 KiB of pipeline either way: fp8 tiles are half the bytes, so twice the stages.
  static constexpr int kStages = (HEAD_DIM <= 64 ? 8 : 4) * (kFp8 ? 2 : 1);
  static constexpr int kLoadsPerThread = kTile * kChunks / kThreads;
  static constexpr size_t kPipelineBytes = size_t(kStages) * 2 * kStageElems * sizeof(DKV);
  static constexpr size_t kMergeBytes = size_t(kWarps) * kRows * (HEAD_DIM + 2) * sizeof(float);
  static constexpr size_t kSmemBytes = kPipelineBytes > kMergeBytes ? kPipelineBytes : kMergeBytes;
  // Three CTAs per SM (64 KiB of pipeline each): registers capped at 168 so they fit beside it.
  static constexpr int kMinCtasPerSm = 3;
  static_assert(kChunks == 8 || (!kFp8 && kChunks > 8), "shape: 8 chunks a row for fp8 (head dim 128), at least 8 for 16-bit");
  static_assert(kTile * kChunks % kThreads == 0, "shape");
};

// Byte offset of 16-byte chunk `chunk` of row `row` in an fp8 tile of 8 chunks a row. K rows are
// read 8 bytes a thread, 4 threads a row, 4 rows a half-warp (XOR by 2 * row keeps those rows'
// chunk pairs apart); V rows 4 bytes a thread, 8 threads a row, rows 2t of a warp (XOR by row).
template <bool KEYS>
__device__ __forceinline__ int fp8_swizzle(int row, int chunk) {
  return row * 128 + ((chunk ^ (KEYS ? (2 * row) & 7 : row & 7)) << 4);
}

// Two fp8 values (the low byte first) as a float16 pair in a word: exact, one conversion
// instruction (widening to bfloat16 took four: fp8 -> half2 -> float2 -> bfloat162, and the
// conversion unit's rate then bounded the kernel).
template <typename DKV>
__device__ __forceinline__ uint32_t fp8x2_to_half2(uint32_t bits) {
  constexpr __nv_fp8_interpretation_t kKind = std::is_same_v<DKV, __nv_fp8_e4m3> ? __NV_E4M3 : __NV_E5M2;
  const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(bits), kKind);
  uint32_t u;
  memcpy(&u, &raw, 4);
  return u;
}

// bfloat16 q fragments as float16 ones for the fp8 kernel, whose products run in float16: scaled
// by a power of two so the largest |q| stays below 2^15 (float16 tops out at 65504). Returns the
// factor the logits must be multiplied by to undo it (1 unless q is that large). Exact for every
// element within 2^24 of the largest; smaller ones round at 2^-24 of it, far below the logit's
// own rounding.
template <int KSTEPS>
__device__ __forceinline__ float bf16_q_to_half(uint32_t (&qa)[KSTEPS][4]) {
  float mx = 0.0f;
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Pair<__nv_bfloat16>::to_float2(qa[ks][i]);
      mx = fmaxf(mx, fmaxf(fabsf(f.x), fabsf(f.y)));
    }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));  // every warp holds all of q
  const int e = mx >= 32768.0f && mx <= 3.0e38f ? ilogbf(mx) - 14 : 0;  // inf or NaN: left as they are
  const float down = ldexpf(1.0f, -e);
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Pair<__nv_bfloat16>::to_float2(qa[ks][i]);
      qa[ks][i] = pack2<__half>(f.x * down, f.y * down);
    }
  return ldexpf(1.0f, e);
}

template <int HEAD_DIM, typename DT, typename DKV, class Variant>
__global__ void __launch_bounds__(DecodeTcShape<HEAD_DIM, DKV>::kThreads, DecodeTcShape<HEAD_DIM, DKV>::kMinCtasPerSm)
    decode_tc_kernel(const __grid_constant__ typename Variant::KernelParams p) {
  using S = DecodeTcShape<HEAD_DIM, DKV>;
  constexpr bool kFp8 = S::kFp8;
  using MT = std::conditional_t<kFp8, __half, DT>;  // the mma operands' type: fp8 widens to float16
  constexpr int KSTEPS = HEAD_DIM / 16, NTILES = HEAD_DIM / 8;
  extern __shared__ __align__(16) uint8_t smem[];
  DKV* k_smem = reinterpret_cast<DKV*>(smem);
  DKV* v_smem = k_smem + S::kStages * S::kStageElems;

  const int w = blockIdx.x;
  if (w >= p.plan.header[0]) return;  // padding of a CUDA-graph launch
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int kv_head = blockIdx.y / p.head_chunks;
  const int head0 = (blockIdx.y % p.head_chunks) * S::kRows;
  const int rows = min(S::kRows, p.group_size - head0);
  const int qo_base = kv_head * p.group_size + head0;
  const int r = p.plan.work_request[w], begin = p.plan.work_kv_begin[w], end = p.plan.work_kv_end[w];
  const int len = p.plan.kv_len[r];
  const int32_t* pages = p.plan.indices + p.plan.kv_indptr[r];

  // Q as A fragments: rows g and g + 8 of each 16-wide k step (rows past the group are zero).
  // With an fp8 cache, k step 2 kk + s takes dims 32 kk + 8 t + 4 s + {0, 1} for fragment
  // columns 2t, 2t + 1 and + {2, 3} for 2t + 8, 2t + 9: the dims each thread's key bytes hold.
  uint32_t qa[KSTEPS][4];
  const DT* q_rows = static_cast<const DT*>(p.q) + r * p.q_stride_b + qo_base * p.q_stride_h;
  auto q_pair = [&](int row, int col) -> uint32_t {
    if (row >= rows) return 0u;
    uint32_t u;
    memcpy(&u, q_rows + row * p.q_stride_h + col, 4);
    return u;
  };
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
    const int lo = kFp8 ? (ks / 2) * 32 + 8 * t + 4 * (ks % 2) : ks * 16 + 2 * t;
    const int hi = kFp8 ? lo + 2 : lo + 8;
    qa[ks][0] = q_pair(g, lo);
    qa[ks][1] = q_pair(g + 8, lo);
    qa[ks][2] = q_pair(g, hi);
    qa[ks][3] = q_pair(g + 8, hi);
  }
  float q_scale = p.q_scale;
  if constexpr (kFp8 && std::is_same_v<DT, __nv_bfloat16>) q_scale *= bf16_q_to_half(qa);
  // Rows g and g + 8 (a row past the group keeps a real head's index: its results are dropped).
  const DecodeRow row_of[2] = {Variant::row(p, r, qo_base + min(g, rows - 1), kv_head, len),
                               Variant::row(p, r, qo_base + min(g + 8, rows - 1), kv_head, len)};

  const DKV* k_head = static_cast<const DKV*>(p.k) + kv_head * p.k_stride_head;
  const DKV* v_head = static_cast<const DKV*>(p.v) + kv_head * p.v_stride_head;
  PageLookahead<S::kLoadsPerThread> ahead;
  auto token_of = [&](int tile) { return [&, tile](int i) { return begin + tile * S::kTile + (tid + i * S::kThreads) / S::kChunks; }; };
  ahead.fetch(pages, p.page_div, end, token_of(0));
  auto load_tile = [&](int tile, int stage) {
    const PageLookahead<S::kLoadsPerThread> now = ahead;
    ahead.fetch(pages, p.page_div, end, token_of(tile + 1));
#pragma unroll
    for (int i = 0; i < S::kLoadsPerThread; ++i) {
      const int c = tid + i * S::kThreads, row = c / S::kChunks, chunk = c % S::kChunks;
      const int tok = begin + tile * S::kTile + row;
      const bool valid = tok < end;
      constexpr int kChunkElems = 16 / int(sizeof(DKV));
      const DKV* kg = k_head + chunk * kChunkElems;
      const DKV* vg = v_head + chunk * kChunkElems;
      if (valid) seek_token(p, now.page[i], tok, kg, vg);
      DKV* ks = k_smem + stage * S::kStageElems;
      DKV* vs = v_smem + stage * S::kStageElems;
      if constexpr (kFp8) {
        cp_async_16(ks + fp8_swizzle<true>(row, chunk), kg, valid);
        cp_async_16(vs + fp8_swizzle<false>(row, chunk), vg, valid);
      } else {
        cp_async_16(ks + swizzle<S::kChunks>(row, chunk), kg, valid);
        cp_async_16(vs + swizzle<S::kChunks>(row, chunk), vg, valid);
      }
    }
  };

  float o[NTILES][4];
#pragma unroll
  for (int n = 0; n < NTILES; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, dsum[2] = {0.0f, 0.0f};
  const int num_tiles = (end - begin + S::kTile - 1) / S::kTile;
  const int mi = lane / 8, mrow = lane % 8;  // ldmatrix: this lane addresses row mrow of matrix mi
  run_kv_pipeline<S::kStages>(num_tiles, load_tile, [&](int tile, int stage) {
    const DKV* ks = k_smem + stage * S::kStageElems;
    const DKV* vs = v_smem + stage * S::kStageElems;
    const int row0 = warp * S::kTokensPerWarp;

    // S = Q K^T for this warp's 8 tokens (one n tile); one ldmatrix.x4 (16-bit) or one 8-byte
    // read (fp8: dims 32 kk + 8 t .. + 7 of token g) covers two k steps.
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kk = 0; kk < KSTEPS / 2; ++kk) {
      uint32_t b[4];
      if constexpr (kFp8) {
        const uint2 raw = *reinterpret_cast<const uint2*>(ks + fp8_swizzle<true>(row0 + g, 2 * kk + t / 2) + 8 * (t % 2));
        b[0] = fp8x2_to_half2<DKV>(raw.x);
        b[1] = fp8x2_to_half2<DKV>(raw.x >> 16);
        b[2] = fp8x2_to_half2<DKV>(raw.y);
        b[3] = fp8x2_to_half2<DKV>(raw.y >> 16);
      } else {
        ldmatrix_x4(b, ks + swizzle<S::kChunks>(row0 + mrow, 4 * kk + mi));
      }
      mma_16816<MT>(s, qa[2 * kk], b[0], b[1]);
      mma_16816<MT>(s, qa[2 * kk + 1], b[2], b[3]);
    }
    // Logits (log2 domain), masks, and this tile's row maxima (rows g and g + 8).
    const int tok_base = begin + tile * S::kTile + row0;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int tok = tok_base + 2 * t + (e & 1), half = e >> 1;
      // A generated variant's hooks see only real heads and keys inside the request.
      const bool real = tok < end && g + 8 * half < rows;
      const float x = (!Variant::kCustomLogits || real) ? Variant::logit(p, s[e] * q_scale, row_of[half], tok) : 0.0f;
      const bool visible = tok < end && (!Variant::kCustomMask || real) && Variant::visible(p, row_of[half], tok);
      if constexpr (!Variant::kUseSoftmax) {
        s[e] = visible ? x : 0.0f;
      } else {
        s[e] = visible ? x : -INFINITY;
        tile_max[half] = fmaxf(tile_max[half], s[e]);
      }
    }
    if constexpr (Variant::kUseSoftmax) {
      float rescale[2], m_use[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        const float m_new = fmaxf(m[h], tile_max[h]);
        m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: keep everything at 0
        rescale[h] = exp2f(m[h] - m_use[h]);
        m[h] = m_new;
        dsum[h] *= rescale[h];
      }
#pragma unroll
      for (int n = 0; n < NTILES; ++n) {
        o[n][0] *= rescale[0];
        o[n][1] *= rescale[0];
        o[n][2] *= rescale[1];
        o[n][3] *= rescale[1];
      }
      // P as the A operand of an m16n8k8 (the S accumulator layout is that A fragment's layout).
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[e] = exp2f(s[e] - m_use[e >> 1]);
        dsum[e >> 1] += s[e];
      }
    }  // without softmax the logits are the weights
    const uint32_t pa0 = pack2<MT>(s[0], s[1]), pa1 = pack2<MT>(s[2], s[3]);
    // O += P V: one ldmatrix.x4.trans gives the B fragments of four 8-dim n tiles. fp8: dims
    // 32 c + 4 g .. + 3 of tokens 2t and 2t + 1, paired by token; n tile 4 c + x then holds dims
    // 32 c + 4 n + x (the merge below puts them back in order).
#pragma unroll
    for (int c = 0; c < NTILES / 4; ++c) {
      uint32_t b[4];
      if constexpr (kFp8) {
        const int chunk = 2 * c + g / 4, byte = 4 * (g % 4);
        const uint32_t even = *reinterpret_cast<const uint32_t*>(vs + fp8_swizzle<false>(row0 + 2 * t, chunk) + byte);
        const uint32_t odd = *reinterpret_cast<const uint32_t*>(vs + fp8_swizzle<false>(row0 + 2 * t + 1, chunk) + byte);
        const uint32_t x01 = __byte_perm(even, odd, 0x5140), x23 = __byte_perm(even, odd, 0x7362);
        b[0] = fp8x2_to_half2<DKV>(x01);
        b[1] = fp8x2_to_half2<DKV>(x01 >> 16);
        b[2] = fp8x2_to_half2<DKV>(x23);
        b[3] = fp8x2_to_half2<DKV>(x23 >> 16);
      } else {
        ldmatrix_x4_trans(b, vs + swizzle<S::kChunks>(row0 + mrow, 4 * c + mi));
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) mma_1688<MT>(o[4 * c + x], pa0, pa1, b[x]);
    }
  });
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    dsum[h] += __shfl_xor_sync(0xffffffffu, dsum[h], 1);
    dsum[h] += __shfl_xor_sync(0xffffffffu, dsum[h], 2);
  }

  // Merge the warps' states: scratch[warp][row][0..HEAD_DIM) = o, [HEAD_DIM] = m, [+1] = sum.
  __syncthreads();
  float* scratch = reinterpret_cast<float*>(smem);
  constexpr int kRowFloats = HEAD_DIM + 2;
  float* mine = scratch + warp * S::kRows * kRowFloats;
  // Accumulator columns 2t, 2t + 1 of n tile n: dims n * 8 + 2t (+1), or with an fp8 cache
  // (n = 4 c + x) dims 32 c + 8 t + x and + 4.
#pragma unroll
  for (int n = 0; n < NTILES; ++n) {
    const int d0 = kFp8 ? (n / 4) * 32 + 8 * t + n % 4 : n * 8 + 2 * t, d1 = kFp8 ? d0 + 4 : d0 + 1;
    mine[g * kRowFloats + d0] = o[n][0];
    mine[g * kRowFloats + d1] = o[n][1];
    mine[(g + 8) * kRowFloats + d0] = o[n][2];
    mine[(g + 8) * kRowFloats + d1] = o[n][3];
  }
  if (t == 0) {
    mine[g * kRowFloats + HEAD_DIM] = m[0];
    mine[g * kRowFloats + HEAD_DIM + 1] = dsum[0];
    mine[(g + 8) * kRowFloats + HEAD_DIM] = m[1];
    mine[(g + 8) * kRowFloats + HEAD_DIM + 1] = dsum[1];
  }
  __syncthreads();
  // Each thread finishes 8 consecutive dims of one row.
  constexpr int kDimsPerThread = 8, kThreadsPerRow = HEAD_DIM / kDimsPerThread;
  const int slot = partial_slot(p.plan, w, r);
  for (int item = tid; item < S::kRows * kThreadsPerRow; item += S::kThreads) {
    const int row = item / kThreadsPerRow, d0 = (item % kThreadsPerRow) * kDimsPerThread;
    if (row >= rows) continue;
    float mw[S::kWarps], mx = -INFINITY;
#pragma unroll
    for (int x = 0; x < S::kWarps; ++x) {
      mw[x] = scratch[(x * S::kRows + row) * kRowFloats + HEAD_DIM];
      mx = fmaxf(mx, mw[x]);
    }
    float acc[kDimsPerThread] = {}, total = 0.0f;
    if (!Variant::kUseSoftmax || mx != -INFINITY) {
#pragma unroll
      for (int x = 0; x < S::kWarps; ++x) {
        const float* src = scratch + (x * S::kRows + row) * kRowFloats;
        const float weight = Variant::kUseSoftmax ? exp2f(mw[x] - mx) : 1.0f;
        total += weight * src[HEAD_DIM + 1];
#pragma unroll
        for (int e = 0; e < kDimsPerThread; ++e) acc[e] = fmaf(weight, src[d0 + e], acc[e]);
      }
    }
    float lse2 = -INFINITY;
    if constexpr (!Variant::kUseSoftmax) {  // partial states then add up (lse 0: equal weight)
#pragma unroll
      for (int e = 0; e < kDimsPerThread; ++e) acc[e] *= p.v_scale;
      lse2 = 0.0f;
    } else if (total > 0.0f) {
      const float scale = p.v_scale / total;
#pragma unroll
      for (int e = 0; e < kDimsPerThread; ++e) acc[e] *= scale;
      lse2 = mx + log2f(total);
    }
    const int qo_head = qo_base + row;
    if (slot < 0) {
      store_float<DT, kDimsPerThread>(static_cast<DT*>(p.out) + r * p.out_stride_b + qo_head * p.out_stride_h + d0, acc);
      if (p.lse != nullptr && d0 == 0) p.lse[r * p.lse_stride_b + qo_head * p.lse_stride_h] = lse2 * kLn2;
    } else {
      float* po = p.partial_o + (int64_t(slot) * p.num_qo_heads + qo_head) * HEAD_DIM + d0;
#pragma unroll
      for (int e = 0; e < kDimsPerThread; e += 4) *reinterpret_cast<float4*>(po + e) = make_float4(acc[e], acc[e + 1], acc[e + 2], acc[e + 3]);
      if (d0 == 0) p.partial_lse[int64_t(slot) * p.num_qo_heads + qo_head] = lse2;
    }
  }
}

}  // namespace decode_detail
}  // namespace fi

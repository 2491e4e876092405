// The CUDA MLA kernels (DeepSeek's multi-head latent attention; lib/mla.ts): this file's on
// mma.sync m16n8k16 (sm_80+, every latent dtype; the plan's fa2), and the Hopper one on wgmma in
// mla_sm90.cuh (a latent of q's dtype; the plan's fa3, auto's choice wherever it serves). The
// engine plans MLA as one KV head with head dims (576, 512): a token's latent is its key (ckv 512
// dims from k, kpe 64 from k_rope) and its value (the same ckv); every query head of a request is
// one packed row, so one load of a latent tile into shared memory serves all the heads of the
// CTA's 64 rows. The plan's work items, split rows and merge are the engine's.
//
// One CTA of 8 warps takes 64 packed rows (the plan's tile for these dims). The output rows are
// 512 floats wide, too wide for one warp's registers (FlashAttention-2's layout would need 256
// accumulators a thread), so warps pair up: warps w and w + 4 own the same 16 rows; for each tile
// of 32 keys each computes the logits of its 16 keys over all 576 dims, the pair trades row maxima
// and then the 16-bit weights P through shared memory, and each multiplies the whole P (16 x 32)
// by its half of the values (256 columns: 128 accumulators a thread). Named barriers sync a pair.
// Q (64 x 576) stays in shared memory; latent tiles stream through three cp.async stages (an fp8
// latent is converted to q's dtype as it is copied: synchronous loads, as the mma.sync kernel's).
#include "prefill_kernels.cuh"

namespace fi {
namespace {

using prefill_detail::PrefillKernelParams;
using prefill_detail::Sm90Item;
using prefill_detail::lane_offsets;
using prefill_detail::opaque;
using prefill_detail::static_for;
using prefill_detail::step_offset;

constexpr int kCkv = 512, kKpe = 64, kDqk = kCkv + kKpe;
constexpr int kChunks = kDqk / 8;       // 16-byte chunks of a q or latent row: 64 ckv + 8 kpe
constexpr int kRows = kMlaTileRows;     // packed query rows per CTA (the plan's tile)
constexpr int kKvTile = 32;             // keys per latent tile
constexpr int kStages = 3;
constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kPStride = kKvTile + 8;   // P rows padded to 80 bytes: conflict-free ldmatrix
constexpr int kQElems = kRows * kDqk, kTileElems = kKvTile * kDqk;
constexpr size_t kSmemBytes = size_t(kQElems + kStages * kTileElems + kRows * kPStride) * 2 + 2 * kRows * sizeof(float) * 2;

// One row's online-softmax step (log2 domain), shared by both MLA kernels: the fragment values of
// accumulator row h (elements i with (i % 4) / 2 == h in the m16n8 layout) become the weights
// exp2(x - max), the running maximum m and sum dsum move on, and the factor that rescales the
// row's output is returned (grew: the maximum rose). exp2: exp2f, or ex2.approx.ftz on Hopper.
template <int N, class Exp2>
__device__ __forceinline__ float softmax_row_step(float (&s)[N], int h, float tile_max, float& m, float& dsum, bool& grew, Exp2 exp2) {
  const float m_new = fmaxf(m, tile_max);
  const float m_use = m_new == -INFINITY ? 0.0f : m_new;
  const float rescale = exp2f(m - m_use);
  grew = grew || m_new > m;
  m = m_new;
  dsum *= rescale;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if ((i % 4) / 2 != h) continue;
    s[i] = exp2(s[i] - m_use);
    dsum += s[i];
  }
  return rescale;
}

// Source of 16-byte chunk `chunk` of packed query row pr (of the request whose rows start at
// qo_row0, G query heads a token), shared by both MLA kernels' Q tile loads: q's 512 dims, then
// q_rope's 64; q itself for a row past the tile (valid false: cp.async reads nothing, writes zeros).
template <typename DT>
__device__ __forceinline__ const DT* mla_q_chunk(const PrefillParams& a, int qo_row0, int G, int pr, int chunk, bool valid) {
  const DT* q = static_cast<const DT*>(a.q);
  if (!valid) return q;
  const int64_t n = qo_row0 + pr / G, h = pr % G;
  return chunk < kCkv / 8 ? q + n * a.q_stride_n + h * a.q_stride_h + chunk * 8
                          : static_cast<const DT*>(a.q_rope) + n * a.q_rope_stride_n + h * a.q_rope_stride_h + (chunk - kCkv / 8) * 8;
}

// The work item of this CTA of an MLA kernel, in the fa3 kernel's geometry (sm90_item with key
// tiles of KVT; one KV head): the grid's first CTAs take the plan's last items (long causal items
// first); false for the padding CTAs of a CUDA-graph launch, which come first in the grid.
template <int KVT>
__device__ __forceinline__ bool mla_item(const PrefillKernelParams& p, Sm90Item& it) {
  const int item = int(blockIdx.x) - (int(gridDim.x) - p.a.plan.header[0]);
  return item >= 0 && prefill_detail::sm90_item<KVT>(p, item, it);
}

// Barrier of the two warps that own rows 16 * pair .. + 16 (ids 1..4; 0 is __syncthreads).
__device__ __forceinline__ void pair_sync(int pair) { asm volatile("bar.sync %0, 64;\n" ::"r"(pair + 1)); }

template <typename DT, bool KV_FP8>
__global__ void __launch_bounds__(kThreads, 1) mla_kernel(const __grid_constant__ PrefillKernelParams p) {
  using LT = std::conditional_t<KV_FP8, uint8_t, DT>;  // latent element
  extern __shared__ __align__(16) uint8_t smem[];
  DT* q_smem = reinterpret_cast<DT*>(smem);
  DT* kv_smem = q_smem + kQElems;
  DT* p_smem = kv_smem + kStages * kTileElems;
  float* red = reinterpret_cast<float*>(p_smem + kRows * kPStride);  // [2 halves][64 rows]: maxima, then sums

  const PrefillPlanView& plan = p.a.plan;
  Sm90Item it;
  if (!mla_item<kKvTile>(p, it)) return;
  const int w = it.w, r = it.r, qo_row0 = it.qo_row0, delta = it.delta, row_begin = it.row_begin, rows = it.rows;
  const int G = p.group;  // every query head: one KV head
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int pair = warp % 4, half = warp / 4;  // rows 16 * pair .. + 16; keys (S) and value columns (O) of this half

  // Q tile: ckv dims from q, kpe dims from q_rope (rows past the tile are zero).
  {
    for (int c = tid; c < kRows * kChunks; c += kThreads) {
      const int row = c / kChunks, chunk = c % kChunks;
      cp_async_16(q_smem + swizzle<kChunks>(row, chunk), mla_q_chunk<DT>(p.a, qo_row0, G, row_begin + row, chunk, row < rows), row < rows);
    }
    cp_async_commit();
  }

  const int kv_lo = it.kv_lo, kv_hi = it.kv_hi, num_tiles = it.num_tiles;  // kv_hi: causally clamped
  const bool causal = p.a.mask_mode == kMaskCausal;
  const int full_hi = causal ? min(kv_hi, it.first_i + delta + 1) : kv_hi;

  // Latent tile loads: 8 threads a key, 9 chunks each (the last from kpe).
  const int kv_base = plan.kv_indptr[r];
  auto load_tile = [&](int tile, int stage) {
    const int t_ = opaque(tid), row = t_ / 8, part = t_ % 8;
    const int key = kv_lo + tile * kKvTile + row;
    const bool valid = key < kv_hi;
    const LT* ckv = static_cast<const LT*>(p.a.k);
    const LT* kpe = static_cast<const LT*>(p.a.k_rope);
    if (valid) {
      const int ps = p.a.page_size;
      int64_t page = 0, slot = key;
      if (ps > 0) {
        const int pi = (ps & (ps - 1)) == 0 ? key >> (__ffs(ps) - 1) : key / ps;
        page = plan.indices[opaque(kv_base) + pi];
        slot = key - pi * ps;
      } else {
        slot = opaque(kv_base) + key;
      }
      ckv += page * p.a.k_stride_page + slot * p.a.k_stride_n;
      kpe += page * p.a.k_rope_stride_page + slot * p.a.k_rope_stride_n;
    }
    DT* dst = kv_smem + stage * kTileElems;
#pragma unroll
    for (int i = 0; i <= kCkv / 64; ++i) {
      const int chunk = i < kCkv / 64 ? part + 8 * i : kCkv / 8 + part;
      const LT* src = i < kCkv / 64 ? ckv + (part + 8 * i) * 8 : kpe + part * 8;
      if constexpr (KV_FP8) {
        uint2 raw = make_uint2(0u, 0u);
        if (valid) raw = *reinterpret_cast<const uint2*>(src);
        *reinterpret_cast<uint4*>(dst + swizzle<kChunks>(row, chunk)) = prefill_detail::fp8x8_to_16bit<DT>(raw, p.a.kv_dtype);
      } else {
        cp_async_16(dst + swizzle<kChunks>(row, chunk), src, valid);
      }
    }
  };

  float o[32][4];  // 16 rows x 256 columns of this half
#pragma unroll
  for (int n = 0; n < 32; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, dsum[2] = {0.0f, 0.0f};

#pragma unroll
  for (int t0 = 0; t0 < kStages - 1; ++t0) {
    if (t0 < num_tiles) load_tile(t0, t0);
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();  // Q landed

  const int qrow_base = pair * 16;
  const uint32_t q_base = smem_addr(q_smem);
  uint32_t q_off[4], k_off[4], v_off[4], p_addr;
  {
    const int ln = opaque(lane);
    lane_offsets<kChunks>(q_off, qrow_base + (ln % 8) + ((ln / 8) % 2) * 8, ln / 16);
    lane_offsets<kChunks>(k_off, half * 16 + (ln % 8) + (ln / 16) * 8, (ln / 8) % 2);
    lane_offsets<kChunks>(v_off, (ln % 8) + ((ln / 8) % 2) * 8, ln / 16);
    p_addr = smem_addr(p_smem + (qrow_base + (ln % 8) + ((ln / 8) % 2) * 8) * kPStride + (ln / 16) * 8);
  }
  // Query row (within the request) of this thread's two accumulator rows.
  const int qi0 = (row_begin + qrow_base + g) / G, qi1 = (row_begin + qrow_base + g + 8) / G;

  int stage = 0, load_stage = kStages - 1;
#pragma unroll 1
  for (int tile = 0; tile < num_tiles; ++tile) {
    const int key0 = kv_lo + tile * kKvTile;
    const uint32_t kv_base_addr = smem_addr(kv_smem + stage * kTileElems);
    cp_async_wait<kStages - 2>();
    __syncthreads();  // the tile landed for every thread; the previous tile's stage and P are free
    if (tile + kStages - 1 < num_tiles) load_tile(tile + kStages - 1, load_stage);
    stage = stage + 1 == kStages ? 0 : stage + 1;
    load_stage = load_stage + 1 == kStages ? 0 : load_stage + 1;
    cp_async_commit();

    // S = Q K^T for this half's 16 keys, over all 576 dims.
    float s[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) s[e] = 0.0f;
    static_for<kDqk / 16>([&](auto kstep_tag) {
      constexpr int kstep = decltype(kstep_tag)::value;
      uint32_t a[4], b[4];
      ldmatrix_x4(a, q_base + step_offset<kstep>(q_off));
      ldmatrix_x4(b, kv_base_addr + step_offset<kstep>(k_off));
      mma_16816<DT>(*reinterpret_cast<float(*)[4]>(&s[0]), a, b[0], b[1]);
      mma_16816<DT>(*reinterpret_cast<float(*)[4]>(&s[4]), a, b[2], b[3]);
    });
    // Logits (log2 domain) and masks: s[e] is row g + 8 * ((e % 4) / 2), key half * 16 + (e / 4) * 8 + 2t + (e & 1).
    const bool elementwise = key0 + kKvTile > full_hi;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float x = s[e] * p.q_scale;
      if (elementwise) {
        const int key = key0 + half * 16 + (e / 4) * 8 + 2 * t + (e & 1);
        const int qi = (e % 4) / 2 ? qi1 : qi0;
        if (key >= kv_hi || (causal && key > qi + delta)) x = -INFINITY;
      }
      s[e] = x;
    }
    // Row maxima across the pair.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int e = 0; e < 8; ++e) tile_max[(e % 4) / 2] = fmaxf(tile_max[(e % 4) / 2], s[e]);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      if (t == 0) red[half * kRows + qrow_base + g + 8 * h] = tile_max[h];
    }
    pair_sync(pair);
    float rescale[2];
    bool grew = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float other = red[(1 - half) * kRows + qrow_base + g + 8 * h];
      rescale[h] = softmax_row_step(s, h, fmaxf(tile_max[h], other), m[h], dsum[h], grew, [](float x) { return exp2f(x); });
    }
    // This half's weights into P (16-bit), for both warps of the pair.
#pragma unroll
    for (int hk = 0; hk < 2; ++hk)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint32_t*>(p_smem + (qrow_base + g + 8 * h) * kPStride + half * 16 + hk * 8 + 2 * t) =
            pack2<DT>(s[4 * hk + 2 * h], s[4 * hk + 2 * h + 1]);
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int n = 0; n < 32; ++n) {
        o[n][0] *= rescale[0];
        o[n][1] *= rescale[0];
        o[n][2] *= rescale[1];
        o[n][3] *= rescale[1];
      }
    }
    pair_sync(pair);
    // O += P V over this half's 256 value columns (V is the tile's ckv part).
#pragma unroll
    for (int ks = 0; ks < kKvTile / 16; ++ks) {
      uint32_t pa[4];
      ldmatrix_x4(pa, p_addr + ks * 32);
      static_for<16>([&](auto cc_tag) {
        constexpr int cc = decltype(cc_tag)::value;
        uint32_t b[4];
        ldmatrix_x4_trans(b, kv_base_addr + step_offset<cc>(v_off) + half * 512 + ks * 16 * kDqk * 2);
        mma_16816<DT>(o[2 * cc], pa, b[0], b[1]);
        mma_16816<DT>(o[2 * cc + 1], pa, b[2], b[3]);
      });
    }
  }
  cp_async_wait<0>();

  // Row sums across the quad and the pair, then the output (or a partial state).
  const int chunk = plan.work_chunk[w];
  float sum[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    sum[h] = dsum[h];
    sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
    sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
  }
  __syncthreads();  // every warp is past its last read of red
#pragma unroll
  for (int h = 0; h < 2; ++h)
    if (t == 0) red[half * kRows + qrow_base + g + 8 * h] = sum[h];
  pair_sync(pair);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float total = sum[h] + red[(1 - half) * kRows + qrow_base + g + 8 * h];
    const int local = qrow_base + g + 8 * h;
    if (local >= rows) continue;
    const float scale = total > 0.0f ? p.a.v_scale / total : 0.0f;
    const float lse2 = total > 0.0f ? m[h] + log2f(total) : -INFINITY;
    const int pr = row_begin + local;
    const int n_global = qo_row0 + pr / G, head = pr % G;
    const int col0 = half * 256 + 2 * t;
    if (chunk < 0) {
      DT* out = static_cast<DT*>(p.a.out) + int64_t(n_global) * p.a.out_stride_n + int64_t(head) * p.a.out_stride_h + col0;
#pragma unroll
      for (int n = 0; n < 32; ++n) *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<DT>(o[n][2 * h] * scale, o[n][2 * h + 1] * scale);
      if (p.a.lse != nullptr && t == 0 && half == 0)
        p.a.lse[int64_t(n_global) * p.a.lse_stride_n + int64_t(head) * p.a.lse_stride_h] = lse2 * kLn2;
    } else {
      const int64_t slot = plan.merge_indptr[n_global] + chunk;
      float* po = p.a.partial_o + (slot * p.a.num_qo_heads + head) * kCkv + col0;
#pragma unroll
      for (int n = 0; n < 32; ++n) *reinterpret_cast<float2*>(po + n * 8) = make_float2(o[n][2 * h] * scale, o[n][2 * h + 1] * scale);
      if (t == 0 && half == 0) p.a.partial_lse[slot * p.a.num_qo_heads + head] = lse2;
    }
  }
}

#include "mla_sm90.cuh"

template <typename DT>
void mla_sm90_launch(const PrefillKernelParams& kp, cudaStream_t stream) {
  auto kernel = mla_sm90::mla_sm90_kernel<DT>;
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(mla_sm90::kSmemBytes));
  cuda_check(configured, "cudaFuncSetAttribute(mla sm90)");
  mla_sm90::MlaMaps maps;
  mla_sm90::mla_make_maps(kp.a, maps);
  kernel<<<dim3(kp.a.num_work, 1, 1), 256, mla_sm90::kSmemBytes, stream>>>(kp, maps);
  check_launch("mla sm90 kernel");
  attention_merge<kCkv, DT, prefill_detail::DefaultVariant>(kp.a, kp, stream);
}

template <typename DT, bool KV_FP8>
void mla_launch(const PrefillKernelParams& kp, cudaStream_t stream) {
  auto kernel = mla_kernel<DT, KV_FP8>;
  static const cudaError_t configured = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes));
  cuda_check(configured, "cudaFuncSetAttribute(mla)");
  kernel<<<dim3(kp.a.num_work, 1, 1), kThreads, kSmemBytes, stream>>>(kp);
  check_launch("mla kernel");
  attention_merge<kCkv, DT, prefill_detail::DefaultVariant>(kp.a, kp, stream);
}

}  // namespace

bool mla_cuda_supports(int32_t head_dim_qk, int32_t head_dim_vo, int32_t q_dtype, int32_t kv_dtype) {
  return head_dim_qk == kDqk && head_dim_vo == kCkv && (q_dtype == FI_FLOAT16 || q_dtype == FI_BFLOAT16) &&
         (kv_dtype == q_dtype || kv_dtype == FI_FLOAT8_E4M3FN || kv_dtype == FI_FLOAT8_E5M2);
}

std::string mla_sm90_unsupported(int32_t q_dtype, int32_t kv_dtype) {
  if (kv_dtype != q_dtype) return std::string("its latent must be of q's dtype (") + dtype_name(q_dtype) + "), got " + dtype_name(kv_dtype);
  static std::atomic<int> known[2][64];  // per q dtype and device: 0 unknown, 1 usable, 2 not
  const bool f16 = q_dtype == FI_FLOAT16;
  const void* kernel = f16 ? reinterpret_cast<const void*>(mla_sm90::mla_sm90_kernel<__half>)
                           : reinterpret_cast<const void*>(mla_sm90::mla_sm90_kernel<__nv_bfloat16>);
  if (!prefill_detail::sm90_body_usable(kernel, known[f16 ? 1 : 0])) return "the device is not a Hopper GPU running this library's sm_90a image";
  return "";
}

void mla_run_cuda(const PrefillParams& a, void* stream) {
  require(a.rope_dim == kKpe, "q_rope, k_rope: the CUDA MLA kernel takes rope parts of ", kKpe, " dims (with ", kCkv,
          " in q and k), got ", a.rope_dim);
  require(a.cta_tile_q == kRows, "plan: the CUDA MLA kernel runs tiles of ", kRows, " rows, this plan has ", a.cta_tile_q);
  if (a.mask_mode == kMaskCustom || a.window_left >= 0 || a.logits_soft_cap > 0.0f || a.pos_encoding != FI_POS_ENCODING_NONE)
    fail(FI_ERR_UNSUPPORTED, "MLA on CUDA: no custom mask, window, soft cap or position encoding (causal or none only)");
  if (a.num_work == 0) return;
  const PrefillKernelParams kp = prefill_detail::make_kernel_params(a);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool fp8 = a.kv_dtype != a.q_dtype;
  if (a.kernel == FI_KERNEL_FA3) {
    require(!fp8, "plan: the wgmma MLA kernel takes a latent of q's dtype");
    return a.q_dtype == FI_FLOAT16 ? mla_sm90_launch<__half>(kp, s) : mla_sm90_launch<__nv_bfloat16>(kp, s);
  }
  if (a.q_dtype == FI_FLOAT16) fp8 ? mla_launch<__half, true>(kp, s) : mla_launch<__half, false>(kp, s);
  else fp8 ? mla_launch<__nv_bfloat16, true>(kp, s) : mla_launch<__nv_bfloat16, false>(kp, s);
}

}  // namespace fi

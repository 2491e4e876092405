// The Hopper (sm_90a) MLA kernel on wgmma, included by mla.cu (which has the mma.sync kernel it
// stands beside: same plan, items, split rows and merge; this one serves 16-bit latents of q's
// dtype, the mma.sync one every latent and every GPU).
//
// MLA at 128 heads sits at the H100's ridge (241 FLOPs per latent byte), so the kernel is built
// around the tensor cores, as the issue's design asks: one CTA of two warpgroups takes 64 packed query
// rows (64 heads of one query token, or a few tokens' heads) and streams the request's latent
// through shared memory in tiles of 64 keys; each tile is read once and serves all 64 rows.
//   Warpgroup 0: S = Q K^T over the 576 dims (wgmma m64n64k16, Q and K from shared memory), the
//     mask and online softmax, P to shared memory with each row's rescale factor, and its half
//     of the output: O[:, 0:256] += P V with P from registers (m64n256k16).
//   Warpgroup 1: loads the latent tiles into two stages (pages of 64 by TMA; other page sizes
//     and partial tiles by cp.async, one page lookup a key), and computes O[:, 256:512] += P V
//     with P from shared memory.
// O is 64 x 512 floats, too wide for one warpgroup's registers (256 a thread), hence the split
// by columns; each warpgroup holds 128 accumulators a thread. Warpgroup 0 issues P V of tile j
// and then Q K^T of tile j + 1, so the tensor cores have work during its softmax while
// warpgroup 1's P V runs. Shared memory: Q 72 KB, two stages of 72 KB, P 8 KB (227 KB of 227).
//
// Tiles use the 128-byte swizzle of the fa3 kernel (sw128): 9 column blocks of 64 dims (8 of
// ckv, then kpe), each 64 rows x 128 bytes. mbarriers: kv_full[2] (the loader's 128 threads,
// after their copies landed or with TMA's byte count), kv_empty[2] (warpgroup 0 after its P V of the tile; warpgroup 1
// knows its own), p_full (warpgroup 0 after writing P and the rescale factors), p_empty
// (warpgroup 1 after its P V read them), sum_full (warpgroup 0's row sums, for the epilogue).

namespace mla_sm90 {
using namespace prefill_detail;  // the fa3 kernel's wgmma, swizzle, mbarrier and TMA helpers

constexpr int kRows = kMlaTileRows;      // 64 packed query rows a CTA
constexpr int kKvTile = 64;              // keys a tile
constexpr int kBlocks = kDqk / 64;       // 9 column blocks a row
constexpr int kBlockBytes = 64 * 128;    // one column block of a 64-row tile
constexpr int kTileBytes = kBlocks * kBlockBytes;  // Q and each latent stage: 73728
constexpr int kPBytes = kRows * kKvTile * 2;
constexpr int kStages = 2;
constexpr size_t kSmemBytes = size_t(kTileBytes) * (1 + kStages) + kPBytes + 2 * kRows * sizeof(float) + 8 * 8 + 1024;
static_assert(kRows == 64 && kKvTile == 64, "one wgmma m64 tile of rows, and P as one 128-byte swizzle block");

// Tensor maps of the latent's two parts for TMA copies of whole pages (tma = 0: every tile is
// gathered). 4-d (dim, head, slot, page) as the fa3 kernel's paged maps, one box per page. Pages
// of 64 only for now: the loader also handles 8, 16 and 32 (a lane a page), but that path has not
// run on a GPU yet (the page-16 case of the MLA tests is there for it); other sizes, and strides
// the driver refuses, are gathered.
struct MlaMaps {
  CUtensorMap ckv, kpe;
  int tma;
};

inline void mla_make_maps(const PrefillParams& a, MlaMaps& m) {
  const int ps = a.page_size;
  m.tma = ps == kKvTile &&
          make_paged_tensor_map(&m.ckv, a.kv_dtype, a.k, kCkv, 1, ps, a.k_stride_page, a.k_stride_n, a.k_stride_n) &&
          make_paged_tensor_map(&m.kpe, a.kv_dtype, a.k_rope, kKpe, 1, ps, a.k_rope_stride_page, a.k_rope_stride_n, a.k_rope_stride_n);
}

// A warpgroup's output accumulators (64 rows x 256 columns, the m64n256 layout) times the rescale
// factors of this thread's two rows.
__device__ __forceinline__ void scale_rows(float (&o)[128], float row_lo, float row_hi) {
#pragma unroll
  for (int n = 0; n < 32; ++n) {
    o[4 * n + 0] *= row_lo;
    o[4 * n + 1] *= row_lo;
    o[4 * n + 2] *= row_hi;
    o[4 * n + 3] *= row_hi;
  }
}

template <typename DT>
__global__ void __launch_bounds__(256, 1) mla_sm90_kernel(const __grid_constant__ PrefillKernelParams p,
                                                          const __grid_constant__ MlaMaps maps) {
#ifdef FI_PREFILL_SM90_BODY
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const PrefillPlanView& plan = p.a.plan;
  Sm90Item it;
  if (!mla_item<kKvTile>(p, it)) return;  // a CUDA-graph launch's padding

  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  DT* q_smem = reinterpret_cast<DT*>(smem);
  DT* kv_smem = reinterpret_cast<DT*>(smem + kTileBytes);
  uint8_t* p_smem = smem + kTileBytes * (1 + kStages);
  float* scale_smem = reinterpret_cast<float*>(p_smem + kPBytes);  // [64] rescale of the tile, then [64] row sums
  float* sum_smem = scale_smem + kRows;
  const uint32_t bars = smem_addr(sum_smem + kRows);
  auto kv_full = [&](int s) { return bars + 8u * s; };
  auto kv_empty = [&](int s) { return bars + 8u * (2 + s); };
  const uint32_t p_full = bars + 32u, p_empty = bars + 40u, sum_full = bars + 48u;
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(kv_full(s), 128);
      mbar_init(kv_empty(s), 128);
    }
    mbar_init(p_full, 128);
    mbar_init(p_empty, 128);
    mbar_init(sum_full, 128);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int w = it.w, r = it.r, qo_row0 = it.qo_row0, delta = it.delta, row_begin = it.row_begin, rows = it.rows;
  const int G = p.group;  // every query head: one KV head
  const int kv_lo = it.kv_lo, kv_hi = it.kv_hi, num_tiles = it.num_tiles;  // kv_hi: causally clamped
  const bool causal = p.a.mask_mode == kMaskCausal;
  const int full_hi = causal ? min(kv_hi, it.first_i + delta + 1) : kv_hi;

  const int wg = tid / 128, ltid = tid % 128, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int row_lo = (ltid / 32) * 16 + g;  // this thread's accumulator rows: row_lo and row_lo + 8
  const uint32_t q_addr = smem_addr(q_smem), kv_addr0 = smem_addr(kv_smem), p_addr = smem_addr(p_smem);

  float o[128];  // this warpgroup's 64 rows x 256 output columns
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, dsum[2] = {0.0f, 0.0f};

  if (wg == 1) {
    // ---- loader, and output columns 256..511.
    const int kv_base = plan.kv_indptr[r];
    const int ps = p.a.page_size;
    const bool pow2_pages = ps > 0 && (ps & (ps - 1)) == 0;
    const uint64_t policy = l2_policy(false);  // both 64-row CTAs of a 128-head request read each tile
    // Whole tiles of whole pages go by TMA: warp 0's lane l copies page l of the tile (64 / ps
    // pages), 9 boxes each (8 of ckv, one of kpe), completing on kv_full's transaction count;
    // thread 0 arrives with the byte count, the others plainly. The rest (pages of 1, a partial
    // last tile, a split piece starting inside a page) is gathered by cp.async: 8 threads a key
    // (a warp copies 4 keys' whole 128-byte lines per instruction), 16 keys a pass, and each
    // thread arrives once its copies landed (cp_mask: the stages whose tile still needs that).
    uint32_t cp_mask = 0;
    auto load_tile = [&](int tile, int stage) {
      DT* dst = kv_smem + stage * (kTileBytes / 2);
      const int key0 = kv_lo + tile * kKvTile;
      if (maps.tma && key0 + kKvTile <= kv_hi && key0 % ps == 0) {
        cp_mask &= ~(1u << stage);
        if (ltid < 32) {
          const int pages = kKvTile / ps;
          const int page = ltid < pages ? __ldg(plan.indices + kv_base + key0 / ps + ltid) : 0;
          if (ltid == 0) mbar_arrive_expect_tx(kv_full(stage), kTileBytes);
          __syncwarp();
          if (ltid < pages) {
            const uint32_t at = smem_addr(dst) + ltid * ps * 128;
            for (int b = 0; b < kBlocks - 1; ++b) tma_load_4d(at + b * kBlockBytes, &maps.ckv, b * 64, 0, 0, page, kv_full(stage), policy);
            tma_load_4d(at + (kBlocks - 1) * kBlockBytes, &maps.kpe, 0, 0, 0, page, kv_full(stage), policy);
          }
        }
        if (ltid != 0) mbar_arrive(kv_full(stage));
        return;
      }
      cp_mask |= 1u << stage;
      const int part = ltid % 8;
#pragma unroll
      for (int pass = 0; pass < kKvTile / 16; ++pass) {
        const int row = pass * 16 + ltid / 8, key = key0 + row;
        const bool valid = key < kv_hi;
        const DT* ckv = static_cast<const DT*>(p.a.k);
        const DT* kpe = static_cast<const DT*>(p.a.k_rope);
        if (valid) {
          int64_t page = 0, slot = key;
          if (ps > 0) {
            const int pi = pow2_pages ? key >> (__ffs(ps) - 1) : key / ps;
            page = __ldg(plan.indices + kv_base + pi);
            slot = key - pi * ps;
          } else {
            slot = kv_base + key;
          }
          ckv += page * p.a.k_stride_page + slot * p.a.k_stride_n;
          kpe += page * p.a.k_rope_stride_page + slot * p.a.k_rope_stride_n;
        }
#pragma unroll
        for (int b = 0; b < kBlocks - 1; ++b) cp_async_16(dst + sw128<kKvTile>(row, 8 * b + part), ckv + (8 * b + part) * 8, valid);
        cp_async_16(dst + sw128<kKvTile>(row, 8 * (kBlocks - 1) + part), kpe + part * 8, valid);
      }
    };
    // A gathered tile's arrival, once this thread's copies landed (every group committed so far:
    // the other stage's tile is not issued until after this).
    auto signal_gathered = [&](int stage) {
      if (cp_mask & (1u << stage)) {
        cp_async_wait<0>();
        fence_proxy_async();
        mbar_arrive(kv_full(stage));
      }
    };
    if (num_tiles > 0) {
      load_tile(0, 0);
      cp_async_commit();
      signal_gathered(0);
      if (num_tiles > 1) load_tile(1, 1);
      cp_async_commit();
    }
#pragma unroll 1
    for (int j = 0; j < num_tiles; ++j) {
      const int s = j & 1;
      const uint32_t kv_addr = kv_addr0 + s * kTileBytes;
      mbar_wait(kv_full(s), (j >> 1) & 1);  // every loader thread's copies of tile j
      mbar_wait(p_full, j & 1);
      scale_rows(o, scale_smem[row_lo], scale_smem[row_lo + 8]);
      wgmma_fence();
#pragma unroll
      for (int mk = 0; mk < kKvTile / 16; ++mk)
        Wgmma<DT, 256>::ss_tb(o, sw128_desc(p_addr + mk * 32, 16, 1024), sw128_desc(kv_addr + 4 * kBlockBytes + mk * 16 * 128, kBlockBytes, 1024));
      wgmma_commit();
      // Tile j + 1 (in flight since the previous P V), if gathered: landed for this thread, so
      // warpgroup 0 can start its Q K^T while this P V runs.
      if (j + 1 < num_tiles) signal_gathered(s ^ 1);
      wgmma_wait<0>();
      reg_fence(o);
      mbar_arrive(p_empty);
      // Tile j + 2 into this stage once warpgroup 0 is done with tile j too.
      if (j + 2 < num_tiles) {
        mbar_wait(kv_empty(s), (j >> 1) & 1);
        load_tile(j + 2, s);
        cp_async_commit();
      }
    }
  } else {
    // ---- Q K^T, softmax, output columns 0..255.
    {
      for (int c = ltid; c < kRows * kBlocks * 8; c += 128) {
        const int row = c / (kBlocks * 8), chunk = c % (kBlocks * 8);
        cp_async_16(q_smem + sw128<kRows>(row, chunk), mla_q_chunk<DT>(p.a, qo_row0, G, row_begin + row, chunk, row < rows), row < rows);
      }
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();
      asm volatile("bar.sync 2, 128;\n" ::: "memory");  // every thread's part of Q landed
    }
    const int qi[2] = {(row_begin + row_lo) / G, (row_begin + row_lo + 8) / G};
    float s[32];
    uint32_t pa[4][4];
#pragma unroll 1
    for (int j = 0; j < num_tiles; ++j) {
      const int st = j & 1;
      const uint32_t kv_addr = kv_addr0 + st * kTileBytes;
      const int key0 = kv_lo + j * kKvTile;
      mbar_wait(kv_full(st), (j >> 1) & 1);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kDqk / 16; ++ks) {
        const uint32_t off = (ks / 4) * kBlockBytes + (ks % 4) * 32;
        Wgmma<DT, 64>::ss(s, sw128_desc(q_addr + off, 16, 1024), sw128_desc(kv_addr + off, 16, 1024), ks > 0);
      }
      wgmma_commit();
      if (j > 0) {
        // The previous tile's P V (committed before) has finished: its stage is free.
        wgmma_wait<1>();
        reg_fence(o);
        mbar_arrive(kv_empty(st ^ 1));
      }
      wgmma_wait<0>();
      reg_fence(s);
      // Logits (log2 domain) and masks: s[8 * mk + e] is row row_lo + 8 * ((e % 4) / 2), key
      // mk * 16 + (e / 4) * 8 + 2t + (e & 1) of the tile (the m16n8 layout along N).
      const bool elementwise = key0 + kKvTile > full_hi;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        float x = s[i] * p.q_scale;
        if (elementwise) {
          const int e = i % 8, key = key0 + (i / 8) * 16 + (e / 4) * 8 + 2 * t + (e & 1);
          if (key >= kv_hi || (causal && key > qi[(e % 4) / 2] + delta)) x = -INFINITY;
        }
        s[i] = x;
      }
      float rescale[2];
      bool grew = false;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < 32; ++i)
          if ((i % 4) / 2 == h) tile_max = fmaxf(tile_max, s[i]);
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        rescale[h] = softmax_row_step(s, h, tile_max, m[h], dsum[h], grew, [](float x) { return ex2_ftz(x); });
      }
#pragma unroll
      for (int mk = 0; mk < 4; ++mk) {
        pa[mk][0] = pack2<DT>(s[mk * 8 + 0], s[mk * 8 + 1]);
        pa[mk][1] = pack2<DT>(s[mk * 8 + 2], s[mk * 8 + 3]);
        pa[mk][2] = pack2<DT>(s[mk * 8 + 4], s[mk * 8 + 5]);
        pa[mk][3] = pack2<DT>(s[mk * 8 + 6], s[mk * 8 + 7]);
      }
      // P and the rescale factors for warpgroup 1, once its P V of the previous tile read them.
      // P is K-major in one swizzled block: row x, keys 8c..8c+7 at chunk c ^ (x % 8).
      mbar_wait(p_empty, (j & 1) ^ 1);
#pragma unroll
      for (int mk = 0; mk < 4; ++mk)
#pragma unroll
        for (int hk = 0; hk < 2; ++hk)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int x = row_lo + 8 * h, chunk = mk * 2 + hk;
            *reinterpret_cast<uint32_t*>(p_smem + x * 128 + ((chunk ^ (x % 8)) * 16) + 4 * t) = pa[mk][2 * hk + h];
          }
      if (t == 0) {
        scale_smem[row_lo] = rescale[0];
        scale_smem[row_lo + 8] = rescale[1];
      }
      fence_proxy_async();
      mbar_arrive(p_full);
      if (__any_sync(0xffffffffu, grew)) scale_rows(o, rescale[0], rescale[1]);
      wgmma_fence();
#pragma unroll
      for (int mk = 0; mk < 4; ++mk) Wgmma<DT, 256>::rs_tb(o, pa[mk], sw128_desc(kv_addr + mk * 16 * 128, kBlockBytes, 1024));
      wgmma_commit();
    }
    wgmma_wait<0>();
    reg_fence(o);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      dsum[h] += __shfl_xor_sync(0xffffffffu, dsum[h], 1);
      dsum[h] += __shfl_xor_sync(0xffffffffu, dsum[h], 2);
      if (t == 0) sum_smem[row_lo + 8 * h] = dsum[h];
    }
    mbar_arrive(sum_full);
  }
  if (wg == 1) mbar_wait(sum_full, 0);  // warpgroup 0's row sums (warpgroup 0 has them in registers)

  // Normalize and write this warpgroup's 256 columns (or a partial state of a split row).
  const int chunk = plan.work_chunk[w];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int local = row_lo + 8 * h;
    if (local >= rows) continue;
    const float total = wg == 0 ? dsum[h] : sum_smem[local];
    const float scale = total > 0.0f ? p.a.v_scale / total : 0.0f;
    const int pr = row_begin + local;
    const int n_global = qo_row0 + pr / G, head = pr % G;
    const int col0 = wg * 256 + 2 * t;
    const bool writes_lse = wg == 0 && t == 0;
    const float lse2 = total > 0.0f ? m[h] + log2f(total) : -INFINITY;
    if (chunk < 0) {
      DT* out = static_cast<DT*>(p.a.out) + int64_t(n_global) * p.a.out_stride_n + int64_t(head) * p.a.out_stride_h + col0;
#pragma unroll
      for (int n = 0; n < 32; ++n) *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<DT>(o[4 * n + 2 * h] * scale, o[4 * n + 2 * h + 1] * scale);
      if (p.a.lse != nullptr && writes_lse) p.a.lse[int64_t(n_global) * p.a.lse_stride_n + int64_t(head) * p.a.lse_stride_h] = lse2 * kLn2;
    } else {
      const int64_t slot = plan.merge_indptr[n_global] + chunk;
      float* po = p.a.partial_o + (slot * p.a.num_qo_heads + head) * kCkv + col0;
#pragma unroll
      for (int n = 0; n < 32; ++n) *reinterpret_cast<float2*>(po + n * 8) = make_float2(o[4 * n + 2 * h] * scale, o[4 * n + 2 * h + 1] * scale);
      if (writes_lse) p.a.partial_lse[slot * p.a.num_qo_heads + head] = lse2;
    }
  }
#endif
}

}  // namespace mla_sm90

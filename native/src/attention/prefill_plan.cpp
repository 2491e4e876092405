// The attention scheduler (host): validates the index arrays, picks the kernel (decode kernels
// for one query row per request, else a prefill kernel) and its query tile from the average
// packed query length, clips each tile's key range to what its mask can see, splits keys across
// work items when the tiles alone cannot fill the device, and writes the flat plan (prefill.h)
// into the workspace: directly on cpu, through page-locked staging and one copy on CUDA.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "../common/runtime.h"
#include "decode.h"
#include "prefill.h"

namespace fi {

int32_t next_plan_serial() {
  static std::atomic<int32_t> serial{1};
  return serial.fetch_add(1);
}

void require_plan_in_workspace(const void* workspace, int32_t serial) {
  const int32_t found = static_cast<const int32_t*>(workspace)[kPlanSerialSlot];
  require(found == serial, "workspace: it no longer holds this wrapper's plan (plan ", serial, "; plan ", found,
          " was written into it since): give each wrapper its own workspace, or plan again");
}

namespace {

// How many work items (x kv heads) the device runs at once, the fewest keys worth a split
// chunk, and the fewest keys worth a decode piece. The CPU figures are small on purpose so the
// CPU tests exercise splitting and merging.
//
// Decode pieces: each pays a start (q, the pipeline's fill) and a share of the merge, so a lone
// long request is better cut into fewer, longer pieces than one wave's worth (H100, batch 1 x
// 32768, 32/8 heads, bf16: tensor-core decode with 49 pieces of 672 keys 79.6 us, 32 of 1024
// 73.3 us, 16 of 2048 88.7 us; CUDA-core decode 98 of 336 97.8 us, 64 of 512 93.3 us, 32 of 1024
// 105 us), as long as the pieces still fill half a wave: 16 requests of 257-512 keys left whole
// (128 CTAs for 396 slots) took 21.1 ms over 256 decode steps against 14.2 ms cut in two.
struct PrefillMachine {
  int64_t concurrent_ctas;
  int64_t min_chunk;
  int64_t min_decode_piece;
};

PrefillMachine prefill_machine(const fi_prefill_plan_args& a, int32_t kernel, int32_t cta_tile_q) {
#ifdef FI_WITH_CUDA
  if (a.device >= 0) {
    // plan() runs every step; occupancy queries cost microseconds, so remember the answers.
    static std::mutex mutex;
    static std::map<std::tuple<int, int, int, int, int, int, int, int>, int64_t> cache;
    const int32_t group = a.num_qo_heads / a.num_kv_heads;
    const bool decode = kernel == FI_KERNEL_DECODE || kernel == FI_KERNEL_DECODE_TC;
    const auto key = std::make_tuple(a.device, a.head_dim_qk, a.head_dim_vo, a.q_dtype, a.kv_dtype, cta_tile_q, kernel,
                                     decode ? group : 0);
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it == cache.end()) {
      int sms = 0;
      set_device(a.device);
      cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device), "cudaDeviceGetAttribute");
      // The Hopper kernel is persistent with one CTA per SM (prefill_kernels.cuh); sizing its splits
      // by the mma.sync kernel's occupancy (2 per SM) cut twice the pieces it runs at once (H100,
      // the cascade's prefix level, 64 rows x 32768 keys: 32 pieces of 2048 keys 125 us, 16 of
      // 4096 96 us).
      const int per_sm = decode ? decode_ctas_per_sm_cuda(a.head_dim_qk, a.q_dtype, a.kv_dtype, group, kernel == FI_KERNEL_DECODE_TC)
                         : kernel == FI_KERNEL_FA3 ? 1
                                                   : prefill_ctas_per_sm_cuda(a.head_dim_qk, a.head_dim_vo, a.q_dtype, a.kv_dtype, cta_tile_q);
      it = cache.emplace(key, int64_t(sms) * std::max(per_sm, 1)).first;
    }
    return PrefillMachine{it->second, 256, kernel == FI_KERNEL_DECODE_TC ? 1024 : 512};
  }
#endif
  return PrefillMachine{8, 16, 16};
}

void require_indptr(const int32_t* ip, int32_t batch, const char* name) {
  require(ip[0] == 0, name, "[0]: expected 0, got ", ip[0]);
  for (int32_t r = 0; r < batch; ++r)
    require(ip[r + 1] >= ip[r], name, ": must be non-decreasing, but ", name, "[", r + 1, "] = ", ip[r + 1], " < ", name, "[", r,
            "] = ", ip[r]);
}

const char* backend_name(int32_t b) {
  return b == FI_BACKEND_FA2 ? "fa2" : b == FI_BACKEND_FA3 ? "fa3" : b == FI_BACKEND_CPU ? "cpu" : "auto";
}

void validate_plan_args(const fi_prefill_plan_args& a) {
  require(a.batch_size >= 1, "batch_size: expected >= 1, got ", a.batch_size);
  require(a.num_kv_heads >= 1, "num_kv_heads: expected >= 1, got ", a.num_kv_heads);
  require(a.num_qo_heads >= 1 && a.num_qo_heads % a.num_kv_heads == 0, "num_qo_heads: expected a positive multiple of num_kv_heads (",
          a.num_kv_heads, "), got ", a.num_qo_heads);
  require(a.head_dim_qk >= 1 && a.head_dim_qk <= 1024, "head_dim_qk: expected 1..1024, got ", a.head_dim_qk);
  require(a.head_dim_vo >= 1 && a.head_dim_vo <= 1024, "head_dim_vo: expected 1..1024, got ", a.head_dim_vo);
  require(a.page_size >= 0, "page_size: expected 0 (ragged) or >= 1, got ", a.page_size);
  if (a.q_dtype != FI_FLOAT16 && a.q_dtype != FI_BFLOAT16)
    fail(FI_ERR_UNSUPPORTED, "q_dtype: expected float16 or bfloat16, got ", dtype_name(a.q_dtype));
  if (a.kv_dtype != a.q_dtype && a.kv_dtype != FI_FLOAT8_E4M3FN && a.kv_dtype != FI_FLOAT8_E5M2)
    fail(FI_ERR_UNSUPPORTED, "kv_dtype: expected q's dtype (", dtype_name(a.q_dtype), ") or float8_e4m3fn / float8_e5m2, got ",
         dtype_name(a.kv_dtype));
  require(a.mask_mode >= FI_MASK_NONE && a.mask_mode <= FI_MASK_CUSTOM,
          "mask_mode: expected NONE (0), CAUSAL (1) or CUSTOM (2), got ", a.mask_mode);
  require(a.window_left >= -1, "window_left: expected -1 (off) or >= 0, got ", a.window_left);
  require(a.pos_encoding_mode >= FI_POS_ENCODING_NONE && a.pos_encoding_mode <= FI_POS_ENCODING_ALIBI,
          "pos_encoding_mode: expected NONE (0), ROPE_LLAMA (1) or ALIBI (2), got ", a.pos_encoding_mode);
  require(a.backend >= FI_BACKEND_AUTO && a.backend <= FI_BACKEND_CPU, "backend: expected AUTO (0), FA2 (1), FA3 (2) or CPU (3), got ",
          a.backend);
  require(a.fixed_grid == 0 || a.fixed_grid == 1, "fixed_grid: expected 0 or 1, got ", a.fixed_grid);
  require(a.use_tensor_cores >= -1 && a.use_tensor_cores <= 1, "use_tensor_cores: expected -1 (never), 0 (groups >= 4) or 1 (always), got ",
          a.use_tensor_cores);
  require(a.fixed_grid == 0 || a.device >= 0, "fixed_grid: CUDA-graph mode needs a CUDA workspace; this plan is for cpu");
  require(a.fixed_grid == 0 || a.page_size >= 1, "fixed_grid: CUDA-graph mode needs a paged cache (a ragged one changes shape with the batch)");
  require(a.fixed_grid == 0 || a.mask_mode != FI_MASK_CUSTOM, "fixed_grid: CUDA-graph mode takes no custom mask (its size changes with the batch)");
  require(a.max_total_qo >= 0, "max_total_qo: expected >= 0, got ", a.max_total_qo);
  require(a.fixed_split_size >= 0 && a.fixed_split_size % 16 == 0, "fixed_split_size: expected 0 (the scheduler's choice) or a positive "
          "multiple of 16 keys, got ", a.fixed_split_size);
  require(a.disable_split_kv == 0 || a.disable_split_kv == 1, "disable_split_kv: expected 0 or 1, got ", a.disable_split_kv);
  require(a.fixed_split_size == 0 || a.disable_split_kv == 0, "fixed_split_size, disable_split_kv: give one of them, not both");
  require(a.fixed_split_size == 0 || a.fixed_grid == 0, "fixed_split_size: not offered in CUDA-graph mode (fixed_grid bounds the pieces "
          "by the batch size)");
  require_valid_device(a.device, "device");
  if (a.device == FI_DEVICE_CPU)
    require(a.backend == FI_BACKEND_AUTO || a.backend == FI_BACKEND_CPU, "backend: ", backend_name(a.backend),
            " runs on CUDA devices; this plan is for cpu (use auto or cpu)");
  else
    require(a.backend != FI_BACKEND_CPU, "backend: cpu needs a cpu workspace; this plan is for ", device_string(a.device));
#ifdef FI_WITH_CUDA
  if (a.device >= 0 && !prefill_cuda_supports(a.head_dim_qk, a.head_dim_vo, a.q_dtype, a.kv_dtype))
    fail(FI_ERR_UNSUPPORTED, "head_dim_qk, head_dim_vo, q_dtype, kv_dtype: the CUDA prefill kernel is not built for (", a.head_dim_qk,
         ", ", a.head_dim_vo, ", ", dtype_name(a.q_dtype), ", ", dtype_name(a.kv_dtype), ")");
#endif
  require(a.qo_indptr && a.kv_indptr, "qo_indptr, kv_indptr: null pointer");
  require_indptr(a.qo_indptr, a.batch_size, "qo_indptr");
  require_indptr(a.kv_indptr, a.batch_size, "kv_indptr");
  if (a.page_size == 0) return;
  require(a.kv_last_page_len != nullptr, "kv_last_page_len: null pointer");
  for (int32_t r = 0; r < a.batch_size; ++r) {
    const int32_t last = a.kv_last_page_len[r];
    if (a.kv_indptr[r + 1] > a.kv_indptr[r])
      require(last >= 1 && last <= a.page_size, "kv_last_page_len[", r, "]: expected 1..", a.page_size, " (page_size), got ", last);
    else
      require(last >= 0 && last <= a.page_size, "kv_last_page_len[", r, "]: expected 0..", a.page_size, ", got ", last);
  }
  require(a.kv_indptr[a.batch_size] == 0 || a.kv_indices != nullptr, "kv_indices: null pointer");
}

// The kernel this plan runs on (and the query tile it needs): the CPU backend on cpu; on CUDA,
// for one query row per request the decode kernels where they serve (unless fa3 is asked), else
// what was asked, or for auto the Hopper kernel where it serves and pays off, else the mma.sync
// kernel.
int32_t resolve_kernel(const fi_prefill_plan_args& a, bool one_row_per_request, int32_t& tile) {
  if (a.device == FI_DEVICE_CPU) return FI_KERNEL_CPU;
#ifdef FI_WITH_CUDA
  if (a.backend != FI_BACKEND_FA3 && one_row_per_request && decode_kernels_serve(a)) {
    tile = 16;
    const int32_t group = a.num_qo_heads / a.num_kv_heads;
    return a.use_tensor_cores >= 0 &&
                   decode_uses_tensor_cores(a.head_dim_qk, a.q_dtype, a.kv_dtype, group, a.use_tensor_cores == 1, a.pos_encoding_mode)
               ? FI_KERNEL_DECODE_TC
               : FI_KERNEL_DECODE;
  }
  if (mla_cuda_supports(a.head_dim_qk, a.head_dim_vo, a.q_dtype, a.kv_dtype)) {
    // MLA's own kernels (mla.cu): wgmma (fa3) on Hopper for a latent of q's dtype, mma.sync (fa2)
    // otherwise; auto takes the wgmma one wherever it serves.
    tile = kMlaTileRows;
    if (a.backend == FI_BACKEND_FA2) return FI_KERNEL_FA2;
    set_device(a.device);
    const std::string why = mla_sm90_unsupported(a.q_dtype, a.kv_dtype);
    if (a.backend == FI_BACKEND_FA3 && !why.empty()) fail(FI_ERR_UNSUPPORTED, "backend: fa3 cannot serve this MLA plan: ", why, " (fa2 or auto can)");
    return why.empty() ? FI_KERNEL_FA3 : FI_KERNEL_FA2;
  }
  if (a.backend == FI_BACKEND_FA2) return FI_KERNEL_FA2;
  set_device(a.device);
  const std::string why = prefill_fa3_unsupported(a);
  if (a.backend == FI_BACKEND_FA3) {
    if (!why.empty()) fail(FI_ERR_UNSUPPORTED, "backend: fa3 cannot serve this plan: ", why, " (fa2 or auto can)");
    tile = 128;  // the wgmma kernel's tile
    return FI_KERNEL_FA3;
  }
  // auto: the Hopper kernel wherever it serves and the requests' packed query rows fill its
  // 128-row tile. It was measured faster than the mma.sync kernel on every such shape, short ones
  // included (H100, paged, 32/8 heads, d 128: batch 128 x 256 causal 104 vs 81 TFLOP/s, 64 x 512
  // causal 171 vs 129, 16 requests of 64 rows x 2048 keys 352 vs 250, block-sparse-like 64 rows x
  // 832 keys 262 vs 234); until then auto took it only from 1024 query rows per request.
  return why.empty() && tile == 128 ? FI_KERNEL_FA3 : FI_KERNEL_FA2;
#else
  return FI_KERNEL_FA2;  // unreachable: a CUDA device needs the CUDA backend
#endif
}

int32_t backend_of(int32_t kernel) {
  return kernel == FI_KERNEL_CPU ? FI_BACKEND_CPU : kernel == FI_KERNEL_FA3 ? FI_BACKEND_FA3 : FI_BACKEND_FA2;
}

// Smallest and largest of n int32 (n may be 0: then 0 and -1). Cloned for AVX2 so the scan over
// every page index of a batch runs at memory speed (with SSE2 alone, min/max take five
// instructions each and this loop was half of a batch-256 decode plan's native time); the
// default clone serves older CPUs.
__attribute__((target_clones("avx2", "default"))) void min_max_int32(const int32_t* x, int32_t n, int32_t* lo, int32_t* hi) {
  int32_t mn = 0, mx = -1;
  for (int32_t i = 0; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  *lo = mn;
  *hi = mx;
}

// The query tiles of a batch, structure of arrays, request by request: request r's tiles are
// [first[r], first[r + 1]); tile t covers packed rows from qo_begin[t] and the keys its mask can
// see at all, [lo[t], hi[t]). plan() runs every step and a batch of 256 x 1024 rows has 8192
// tiles: the loops over tiles vectorize (AVX2 clones), and what the scheduler asks per request
// (its longest tile) is kept per request rather than found by walking the tiles.
struct Tiles {
  std::vector<int32_t> first;
  std::vector<int32_t> request, qo_begin, lo, hi;  // per tile
  std::vector<int32_t> longest;                    // per request: its longest tile's keys
  std::vector<uint16_t> bucket;                    // per tile: its cost bucket (order_tiles)
  std::vector<int32_t> start;                      // per cost bucket: its first tile in order
  std::vector<int32_t> order;                      // tiles in work order
  int64_t total_keys = 0, longest_keys = 0;
  int32_t request_count() const { return int32_t(first.size()) - 1; }
  int32_t count(int32_t r) const { return first[r + 1] - first[r]; }
};

// The planner's working arrays, kept per thread between plans: fresh vectors cost an allocation
// and page faults on every call.
struct PlanScratch {
  std::vector<int32_t> qo_len, kv_len, chunks;
  Tiles tiles;
};

// This thread's scratch, by reference (a thread_local named in the planner's body costs a TLS
// lookup at each use).
__attribute__((noinline)) PlanScratch& plan_scratch() {
  thread_local PlanScratch scratch;
  return scratch;
}

// The keys [lo, hi) that a tile of a request's packed rows [p, p + step) can see: causal hides
// keys past the tile's last row, the window keys before its first row (row = packed row / group:
// a shift for power-of-two groups; two divisions per tile were a large part of a batch-256 x 1024
// plan). d = kv_len - qo_len; rows are below qo_len and d + row + 1 <= kv_len, so causal bounds
// fit 32 bits.
__attribute__((always_inline)) inline void tile_keys(int32_t p, int32_t step, int32_t packed, int32_t group, int32_t group_shift, int32_t kv_len,
                                                     int32_t d, bool causal, int64_t window_left, int32_t& lo, int32_t& hi) {
  const int32_t last = p + std::min(step, packed - p) - 1;
  const int32_t last_row = group_shift >= 0 ? last >> group_shift : last / group;
  hi = causal ? std::max(std::min(kv_len, last_row + d + 1), 0) : kv_len;
  lo = 0;
  if (window_left >= 0) {
    const int32_t first_row = group_shift >= 0 ? p >> group_shift : p / group;
    lo = int32_t(std::min<int64_t>(std::max<int64_t>(int64_t(first_row) + d - window_left, 0), hi));
  }
}

// Request r's `count` tiles of `step` packed rows (tile_keys), written from index 0 of the arrays.
// Returns the longest tile's keys; adds all tiles' keys to *keys.
__attribute__((target_clones("avx2", "default"))) int32_t fill_request_tiles(
    int32_t r, int32_t count, int32_t step, int32_t packed, int32_t group, int32_t group_shift, int32_t kv_len, int32_t d, bool causal,
    int64_t window_left, int32_t* __restrict request, int32_t* __restrict qo_begin, int32_t* __restrict lo, int32_t* __restrict hi,
    int64_t* keys) {
  int32_t longest = 0;
  int64_t sum = 0;
  for (int32_t i = 0; i < count; ++i) {
    int32_t l, h;
    tile_keys(i * step, step, packed, group, group_shift, kv_len, d, causal, window_left, l, h);
    request[i] = r;
    qo_begin[i] = i * step;
    lo[i] = l;
    hi[i] = h;
    longest = std::max(longest, h - l);
    sum += h - l;
  }
  *keys += sum;
  return longest;
}

// Cuts the batch into query tiles of `tile` packed rows (one tile per request for the decode
// kernels, whose work item covers all query heads of a request).
void make_tiles(const fi_prefill_plan_args& a, const std::vector<int32_t>& qo_len, const std::vector<int32_t>& kv_len, int32_t tile,
                bool decode, Tiles& t) {
  const int32_t batch = a.batch_size, group = a.num_qo_heads / a.num_kv_heads;
  const uint32_t ug = uint32_t(group);
  const int32_t group_shift = (ug & (ug - 1)) == 0 ? __builtin_ctz(ug) : -1;
  t.first.resize(batch + 1);
  t.first[0] = 0;
  // Tiles per request: one for a decode item (none when empty); ceil(packed / tile) otherwise,
  // by a shift (tiles are 16, 64 or 128 rows; an integer division per request was a tenth of a
  // batch-256 plan's native time).
  require(tile > 0 && (tile & (tile - 1)) == 0, "internal: a query tile of ", tile, " rows is not a power of two");
  const int32_t tile_shift = __builtin_ctz(uint32_t(tile));
  for (int32_t r = 0; r < batch; ++r) {
    const int32_t packed = qo_len[r] * group;  // fits 32 bits (checked by the caller)
    t.first[r + 1] = t.first[r] + (decode ? int32_t(packed > 0) : (packed + tile - 1) >> tile_shift);
  }
  const int32_t n = t.first[batch];
  for (auto* v : {&t.request, &t.qo_begin, &t.lo, &t.hi}) v->resize(n);
  t.longest.resize(batch);
  t.total_keys = 0;
  t.longest_keys = 0;
  const bool causal = a.mask_mode == FI_MASK_CAUSAL;
  for (int32_t r = 0; r < batch; ++r) {
    const int32_t f = t.first[r], count = t.count(r), packed = qo_len[r] * group, d = kv_len[r] - qo_len[r];
    const int32_t step = decode ? std::max(packed, 1) : tile;
    if (count == 1) {  // decode and short requests: inline (a call per request was most of a batch-256 decode plan's tiling)
      int32_t lo, hi;
      tile_keys(0, step, packed, group, group_shift, kv_len[r], d, causal, a.window_left, lo, hi);
      t.request[f] = r;
      t.qo_begin[f] = 0;
      t.lo[f] = lo;
      t.hi[f] = hi;
      t.longest[r] = hi - lo;
      t.total_keys += hi - lo;
    } else {
      t.longest[r] = fill_request_tiles(r, count, step, packed, group, group_shift, kv_len[r], d, causal, a.window_left,
                                        t.request.data() + f, t.qo_begin.data() + f, t.lo.data() + f, t.hi.data() + f, &t.total_keys);
    }
    t.longest_keys = std::max<int64_t>(t.longest_keys, t.longest[r]);
  }
}

// Fills chunks with each request's piece count for pieces of at most `piece` keys (a request's
// tiles share its count, set by its longest tile) and returns the work items they make.
int64_t cut_tiles(const Tiles& t, int64_t piece, std::vector<int32_t>& chunks) {
  int64_t items = 0;
  for (int32_t r = 0; r < t.request_count(); ++r) {
    chunks[r] = t.longest[r] > piece ? int32_t((t.longest[r] + piece - 1) / piece) : 1;
    items += int64_t(chunks[r]) * t.count(r);
  }
  return items;
}

// The shortest split piece (a multiple of 16 keys, from `shortest` up) that cuts the tiles into
// at most `budget` work items, a request's tiles sharing its count; fills chunks with the counts.
// All pieces then run in the device's first wave, as short as that allows: the average alone
// (keys / budget) could give a count just over the budget, and those few extra pieces ran as a
// second wave as long as the first (the cascade's prefix level on fa2: 272 pieces for 264 slots).
int64_t shortest_fitting_piece(const Tiles& tiles, int64_t shortest, int64_t longest, int64_t budget, std::vector<int32_t>& chunks) {
  auto cut = [&](int64_t piece) { return cut_tiles(tiles, piece, chunks); };
  // Binary search in units of 16 keys; one piece per tile (longest) always fits the budget here.
  int64_t lo = (std::max<int64_t>(shortest, 1) + 15) / 16, hi = std::max<int64_t>((longest + 15) / 16, lo);
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (cut(mid * 16) <= budget) hi = mid;
    else lo = mid + 1;
  }
  cut(hi * 16);
  return hi * 16;
}

// Each tile's cost bucket: keys per work item, scaled to [0, buckets). (One multiply per tile: a
// 64-bit division per tile was a third of a 256-request plan's native time.)
__attribute__((target_clones("avx2", "default"))) void bucket_tiles(int32_t count, const int32_t* lo, const int32_t* hi, int32_t pieces,
                                                                      double to_bucket, int32_t max_bucket, uint16_t* __restrict bucket) {
  for (int32_t i = 0; i < count; ++i) {
    const int32_t keys = hi[i] - lo[i];
    const int32_t cost = pieces == 1 ? keys : (keys + pieces - 1) / pieces;
    bucket[i] = uint16_t(std::min(max_bucket, int32_t(double(cost) * to_bucket)));
  }
}

// Work-item order: ascending keys per item (a request's tiles by ascending rows when causal) so
// the CUDA kernels, which walk the list in reverse, start the longest items first and end on a
// short last wave. A stable counting sort of the tiles over at most 4096 cost buckets into
// t.order (an exact comparison sort of thousands of tiles would cost more than the order is
// worth). The sort writes tile numbers, a small array that stays in cache; the work items are
// then written in order, one stream per plan array (scattering the items themselves over the
// buckets was slower).
void order_tiles(Tiles& t, const std::vector<int32_t>& chunks) {
  const int32_t batch = t.request_count(), n = t.first[batch];
  int64_t max_cost = 0;  // the longest tile's cost in each request is that request's largest
  for (int32_t r = 0; r < batch; ++r)
    if (t.count(r) > 0) max_cost = std::max<int64_t>(max_cost, (t.longest[r] + chunks[r] - 1) / chunks[r]);
  const int32_t buckets = std::max(1, std::min(n, 4096));
  const double to_bucket = max_cost == 0 ? 0.0 : double(buckets - 1) / double(max_cost);
  t.bucket.resize(n);
  t.start.assign(buckets + 1, 0);
  if (std::all_of(chunks.begin(), chunks.end(), [](int32_t c) { return c == 1; })) {
    bucket_tiles(n, t.lo.data(), t.hi.data(), 1, to_bucket, buckets - 1, t.bucket.data());  // one pass when nothing is split
  } else {
    for (int32_t r = 0; r < batch; ++r) {
      const int32_t f = t.first[r];
      bucket_tiles(t.count(r), t.lo.data() + f, t.hi.data() + f, chunks[r], to_bucket, buckets - 1, t.bucket.data() + f);
    }
  }
  for (int32_t i = 0; i < n; ++i) ++t.start[t.bucket[i] + 1];
  for (int32_t b = 0; b < buckets; ++b) t.start[b + 1] += t.start[b];
  t.order.resize(n);
  for (int32_t i = 0; i < n; ++i) t.order[t.start[t.bucket[i]]++] = i;
}

// The work items of a plan that splits nothing, one per tile in t.order: gathers, which
// vectorize (the general walk in fi_prefill_plan stores one element at a time).
__attribute__((target_clones("avx2", "default"))) void emit_whole_tiles(const Tiles& t, int32_t* __restrict request,
                                                                          int32_t* __restrict qo_begin, int32_t* __restrict kv_begin,
                                                                          int32_t* __restrict kv_end, int32_t* __restrict chunk) {
  const int32_t n = int32_t(t.order.size());
  const int32_t* order = t.order.data();
  const int32_t *req = t.request.data(), *qo = t.qo_begin.data(), *lo = t.lo.data(), *hi = t.hi.data();
  for (int32_t i = 0; i < n; ++i) {
    const int32_t ti = order[i];
    request[i] = req[ti];
    qo_begin[i] = qo[ti];
    kv_begin[i] = lo[ti];
    kv_end[i] = hi[ti];
    chunk[i] = -1;
  }
}

}  // namespace
}  // namespace fi

using namespace fi;

extern "C" FI_API int32_t fi_prefill_plan(const fi_prefill_plan_args* args, void* host_plan, uint64_t host_plan_bytes,
                                          void* workspace, uint64_t workspace_bytes, void* stream,
                                          fi_prefill_plan_info* info) {
  return guard([&] {
    require(args != nullptr && info != nullptr, "args, info: null pointer");
    const fi_prefill_plan_args& a = *args;
    validate_plan_args(a);
    const int32_t batch = a.batch_size, group = a.num_qo_heads / a.num_kv_heads;
    const bool paged = a.page_size > 0;
    const int32_t nnz = paged ? a.kv_indptr[batch] : 0;

    // Page indices: all >= 0; the largest is checked against the cache at run. One branch-free
    // min/max pass, then a search for the first bad one only when there is one.
    int32_t max_page = -1, min_page = 0;
    min_max_int32(a.kv_indices, nnz, &min_page, &max_page);
    if (min_page < 0) {
      const int32_t i = int32_t(std::find_if(a.kv_indices, a.kv_indices + nnz, [](int32_t x) { return x < 0; }) - a.kv_indices);
      fail(FI_ERR_INVALID_ARGUMENT, "kv_indices[", i, "]: page index must be >= 0, got ", a.kv_indices[i]);
    }

    // Lengths.
    PlanScratch& scratch = plan_scratch();
    std::vector<int32_t>& qo_len = scratch.qo_len;
    std::vector<int32_t>& kv_len = scratch.kv_len;
    qo_len.resize(batch);
    kv_len.resize(batch);
    int64_t total_kv = 0, packed_total = 0, mask_bits_bytes = 0;
    for (int32_t r = 0; r < batch; ++r) {
      qo_len[r] = a.qo_indptr[r + 1] - a.qo_indptr[r];
      int64_t len = a.kv_indptr[r + 1] - a.kv_indptr[r];
      if (paged) len = len == 0 ? 0 : (len - 1) * a.page_size + a.kv_last_page_len[r];
      require(len < (int64_t(1) << 31), "kv_indptr: request ", r, " has ", len, " keys, more than 2^31 - 1");
      kv_len[r] = int32_t(len);
      total_kv += len;
      packed_total += int64_t(qo_len[r]) * group;
      mask_bits_bytes += (int64_t(qo_len[r]) * len + 7) / 8;
    }
    const int32_t total_qo = a.qo_indptr[batch];
    require(total_kv < (int64_t(1) << 31), "kv_indptr: total KV length ", total_kv, " exceeds 2^31 - 1");
    require(packed_total < (int64_t(1) << 31), "qo_indptr: total query rows x group size ", packed_total, " exceeds 2^31 - 1");
    if (a.mask_mode == FI_MASK_CUSTOM)
      require(mask_bits_bytes < (int64_t(1) << 31), "custom mask: ", mask_bits_bytes, " bytes of packed mask exceed 2^31 - 1");

    // CUDA-graph mode: every launch shape and workspace offset follows from the batch size and the
    // bound on query rows, never from this batch's lengths: the tile and kernel are chosen from the
    // bound, and nothing is split.
    const bool one_row_per_request = total_qo == batch && std::all_of(qo_len.begin(), qo_len.end(), [](int32_t n) { return n == 1; });
    const int32_t qo_bound = a.fixed_grid ? (a.max_total_qo > 0 ? a.max_total_qo : batch) : total_qo;
    if (a.fixed_grid) {
      require(total_qo <= qo_bound, "qo_indptr: ", total_qo, " query rows exceed this CUDA-graph plan's bound of ", qo_bound,
              a.max_total_qo > 0 ? " (max_total_qo)" : " (one per request)");
      require(qo_bound > batch || one_row_per_request, "qo_indptr: a CUDA-graph plan with one query row per request (max_total_qo ",
              qo_bound, " = batch_size) needs exactly one row in each request");
      require(int64_t(qo_bound) * group < (int64_t(1) << 31), "max_total_qo: ", qo_bound, " rows x group size exceed 2^31 - 1");
    }

    // Query tile from the average packed query length (128 rows at head dim 256 only on the Hopper
    // kernel: the mma.sync kernel's tile would not fit its shared memory).
    const double avg_packed = double(a.fixed_grid ? int64_t(qo_bound) * group : packed_total) / batch;
    const bool big_dims = std::max(a.head_dim_qk, a.head_dim_vo) >= 256;
    int32_t tile = avg_packed > 64 ? 128 : avg_packed > 16 ? 64 : 16;
    const int32_t kernel = resolve_kernel(a, a.fixed_grid ? qo_bound == batch : one_row_per_request, tile);
    if (kernel != FI_KERNEL_FA3 && big_dims && tile == 128) tile = 64;
    const int32_t backend = backend_of(kernel);
    const bool decode = kernel == FI_KERNEL_DECODE || kernel == FI_KERNEL_DECODE_TC;
    if (a.fixed_grid && qo_bound == batch && !decode)
      fail(FI_ERR_UNSUPPORTED, "fixed_grid: a CUDA-graph plan of one query row per request runs on the decode kernels (paged cache, "
           "equal head dims 64, 128 or 256, backend auto or fa2); this plan runs on ", backend_name(backend));

    // Query tiles and the keys each one can see (a decode kernel's work item covers every query
    // head of its request: one tile per request).
    Tiles& tiles = scratch.tiles;
    make_tiles(a, qo_len, kv_len, tile, decode, tiles);

    // KV split: when tiles x kv heads leave the device partly idle, every tile of request r is cut
    // into chunks[r] pieces (one count per request, so all heads of a query row share merge slots).
    const PrefillMachine m = prefill_machine(a, kernel, tile);
    std::vector<int32_t>& chunks = scratch.chunks;
    chunks.assign(batch, 1);
    const int64_t num_tiles = tiles.first[batch];
    int64_t decode_items_wanted = 0, split_piece = 0;  // split_piece: keys per piece, 0 for even pieces
    if (a.disable_split_kv || (a.fixed_grid && !decode)) {
      // One item per tile (FlashInfer's disable_split_kv; CUDA-graph prefill, whose captured
      // launches include no merge).
    } else if (a.fixed_split_size > 0) {
      split_piece = a.fixed_split_size;
      cut_tiles(tiles, split_piece, chunks);
    } else if (decode) {
      // Decode: requests of at most `chunk` keys, chunk no smaller than the minimum, and small
      // enough that the pieces of the whole batch fill the device once (a CTA per KV head and
      // group of query heads).
      const int32_t rows_per_cta = kernel == FI_KERNEL_DECODE_TC ? 16 : decode_heads_per_cta(group);
      const int64_t head_tasks = int64_t(a.num_kv_heads) * ((group + rows_per_cta - 1) / rows_per_cta);
      decode_items_wanted = std::max<int64_t>(1, m.concurrent_ctas / head_tasks);
      const int64_t max_len = std::max<int64_t>(1, tiles.longest_keys), keys = tiles.total_keys;
      int64_t chunk = max_len;
      if (batch < decode_items_wanted) {
        const int64_t even = (keys + decode_items_wanted - 1) / decode_items_wanted;
        chunk = shortest_fitting_piece(tiles, std::max(even, m.min_decode_piece), max_len, decode_items_wanted, chunks);
        // Long pieces only while they still fill half a wave (short requests need the CTAs).
        if (2 * cut_tiles(tiles, chunk, chunks) < decode_items_wanted && m.min_decode_piece > m.min_chunk)
          chunk = shortest_fitting_piece(tiles, std::max(even, m.min_chunk), max_len, decode_items_wanted, chunks);
      } else if (!a.fixed_grid && kernel == FI_KERNEL_DECODE_TC && max_len >= 2048 && batch * head_tasks > m.concurrent_ctas &&
               2 * batch * head_tasks <= 3 * m.concurrent_ctas)
        // A batch just over one wave (by at most half) leaves its last CTAs running on an almost
        // idle device for a whole request's time; halves make ~2.6 waves of half the length (H100,
        // batch 64 x 2048, 32/8 heads, 512 CTAs for 396 slots: whole requests 271 us, halves of
        // 1024 keys 230 us; with more waves, or pieces under 1024 keys, halves measured slower).
        chunk = align_up(uint64_t((max_len + 1) / 2), 16);
      if (batch >= decode_items_wanted && chunk < max_len) cut_tiles(tiles, chunk, chunks);
      split_piece = chunk;
    } else if (num_tiles > 0 && num_tiles * a.num_kv_heads < m.concurrent_ctas) {
      const int64_t budget = std::max<int64_t>(1, m.concurrent_ctas / a.num_kv_heads);
      shortest_fitting_piece(tiles, std::max<int64_t>(m.min_chunk, (tiles.total_keys + budget - 1) / budget), tiles.longest_keys, budget,
                             chunks);
    }

    int64_t num_work = 0, num_partials = 0;
    int32_t chunks_max = 1;
    for (int32_t r = 0; r < batch; ++r) {
      num_work += int64_t(chunks[r]) * tiles.count(r);
      if (chunks[r] > 1) num_partials += int64_t(qo_len[r]) * chunks[r];
      chunks_max = std::max(chunks_max, chunks[r]);
    }
    const int64_t valid_work = num_work;
    if (a.fixed_grid && decode) {
      // Shapes that depend on the batch size only: chunk >= keys / items wanted bounds the count
      // of pieces (and of partial slots) by batch + items wanted.
      num_work = num_partials = batch + decode_items_wanted;
    } else if (a.fixed_grid) {
      // A request of n packed rows has ceil(n / tile) <= n / tile + 1 tiles: at most
      // ceil(bound x group / tile) + batch in all.
      num_work = (int64_t(qo_bound) * group + tile - 1) / tile + batch;
    }
    require(num_work < (int64_t(1) << 31) && num_partials < (int64_t(1) << 31), "qo_indptr: too many work items");

    fi_prefill_plan_info r{};
    r.batch_size = batch;
    r.num_qo_heads = a.num_qo_heads;
    r.num_kv_heads = a.num_kv_heads;
    r.head_dim_qk = a.head_dim_qk;
    r.head_dim_vo = a.head_dim_vo;
    r.page_size = a.page_size;
    r.q_dtype = a.q_dtype;
    r.kv_dtype = a.kv_dtype;
    r.device = a.device;
    r.mask_mode = a.mask_mode;
    r.window_left = a.window_left;
    r.num_work = int32_t(num_work);
    r.cta_tile_q = tile;
    r.total_qo = qo_bound;  // the rows runs take (this batch's own count in CUDA-graph mode: the plan header)
    r.num_partials = int32_t(num_partials);
    r.kv_chunks_max = chunks_max;
    r.max_page_index = max_page;
    r.nnz_pages = nnz;
    r.any_split = num_partials > 0 ? 1 : 0;
    r.backend = backend;
    r.kernel = kernel;
    r.fixed_grid = a.fixed_grid;
    r.total_kv_len = paged ? total_kv : a.kv_indptr[batch];
    r.mask_bytes = a.mask_mode == FI_MASK_CUSTOM ? mask_bits_bytes : 0;
    r.plan_bytes = prefill_plan_ints(r.num_work, batch, qo_bound) * 4;
    const uint64_t partial_o_bytes = uint64_t(num_partials) * a.num_qo_heads * a.head_dim_vo * 4;
    const uint64_t partial_lse_bytes = uint64_t(num_partials) * a.num_qo_heads * 4;
    if (a.fixed_grid) {
      // Every offset a captured launch uses stays put: the page indices, whose count varies, go last.
      r.off_partial_o = align_up(r.plan_bytes, kWorkspaceAlign);
      r.off_partial_lse = align_up(r.off_partial_o + partial_o_bytes, kWorkspaceAlign);
      r.off_indices = align_up(r.off_partial_lse + partial_lse_bytes, kWorkspaceAlign);
      r.workspace_bytes = r.off_indices + uint64_t(nnz) * 4;
    } else {
      r.off_indices = r.plan_bytes;
      r.off_partial_o = align_up(r.off_indices + uint64_t(nnz) * 4, kWorkspaceAlign);
      r.off_partial_lse = align_up(r.off_partial_o + partial_o_bytes, kWorkspaceAlign);
      r.workspace_bytes = r.off_partial_lse + partial_lse_bytes;
    }
    r.host_bytes = a.device == FI_DEVICE_CPU ? 0 : r.plan_bytes + uint64_t(nnz) * 4;
    *info = r;

    require(workspace != nullptr && workspace_bytes >= r.workspace_bytes, "workspace: this plan needs ", r.workspace_bytes,
            " bytes, the buffer has ", workspace_bytes);
    if (a.device != FI_DEVICE_CPU)
      require(host_plan != nullptr && host_plan_bytes >= r.host_bytes, "host_plan: needs ", r.host_bytes,
              " bytes of page-locked staging, got ", host_plan_bytes);
    int32_t* staging = static_cast<int32_t*>(a.device == FI_DEVICE_CPU ? workspace : host_plan);

    // Work items in cost order (order_tiles); the decode kernels take them in request order (one
    // short item each: order does not pay there).
    if (!decode) order_tiles(tiles, chunks);

    // Every section is written below except merge_indptr when nothing is split (no kernel reads it
    // then: it has a slot per query row, and writing it was most of a batch-256 x 1024 prefill plan).
    std::memset(staging, 0, sizeof(int32_t) * kPrefillHeaderInts);
    staging[0] = int32_t(valid_work);
    staging[1] = batch;
    staging[2] = tile;
    staging[kPlanSerialSlot] = info->plan_serial = next_plan_serial();
    staging[3] = total_qo;
    staging[4] = r.any_split;
    int32_t* work_request = staging + kPrefillHeaderInts;
    int32_t* work_qo_begin = work_request + num_work;
    int32_t* work_kv_begin = work_qo_begin + num_work;
    int32_t* work_kv_end = work_kv_begin + num_work;
    int32_t* work_chunk = work_kv_end + num_work;
    int32_t* qo_indptr = work_chunk + num_work;
    int32_t* kv_indptr = qo_indptr + batch + 1;
    int32_t* kv_len_out = kv_indptr + batch + 1;
    int32_t* mask_offset = kv_len_out + batch;
    int32_t* merge_indptr = mask_offset + batch;
    // Pieces of each tile's keys, multiples of 16 so CUDA key tiles stay aligned to the range
    // start; trailing pieces may be empty (they write an empty partial state). Prefill: even
    // pieces. Decode: pieces of the chunk, the remainder last. The batch's pieces may outnumber the
    // CTAs that fit at once (by up to one per request); full-chunk pieces then fill one wave and
    // the short remainders trail, where even pieces all lengthen a second, partial wave (batch 16 x
    // 8192, H100: the decode planner before the engine cut 3 x 2688 + 128 and ran 225 us; the
    // engine's even pieces, 4 x 2048, 272 us).
    int64_t w = 0, piece_max = 0;
    // Even pieces start on 16 keys; on the wgmma MLA kernel on 64 (its key tile: pages of up to 64
    // then reach it whole, by TMA, rather than gathered key by key).
    const int64_t piece_align = kernel == FI_KERNEL_FA3 && a.head_dim_qk == 576 && a.head_dim_vo == 512 ? 64 : 16;
    auto emit = [&](int32_t ti) {
      const int32_t q = tiles.request[ti], n = chunks[q], lo = tiles.lo[ti], hi = tiles.hi[ti];
      if (n == 1) {
        work_request[w] = q;
        work_qo_begin[w] = tiles.qo_begin[ti];
        work_kv_begin[w] = lo;
        work_kv_end[w] = hi;
        work_chunk[w] = -1;
        ++w;
        return;
      }
      const int64_t piece = split_piece > 0 ? split_piece : align_up(uint64_t((int64_t(hi - lo) + n - 1) / n), piece_align);
      piece_max = std::max(piece_max, piece);
      for (int32_t c = 0; c < n; ++c, ++w) {
        work_request[w] = q;
        work_qo_begin[w] = tiles.qo_begin[ti];
        work_kv_begin[w] = int32_t(std::min<int64_t>(hi, lo + c * piece));
        work_kv_end[w] = int32_t(std::min<int64_t>(hi, lo + (c + 1) * piece));
        work_chunk[w] = c;
      }
    };
    if (decode) {
      for (int32_t ti = 0; ti < num_tiles; ++ti) emit(ti);  // request order
    } else if (chunks_max == 1) {
      emit_whole_tiles(tiles, work_request, work_qo_begin, work_kv_begin, work_kv_end, work_chunk);
      w = num_tiles;
    } else {
      for (int32_t ti : tiles.order) emit(ti);
    }
    for (int64_t pad = w; pad < num_work; ++pad)  // a fixed grid's padding items (the kernels return on them)
      work_request[pad] = work_qo_begin[pad] = work_kv_begin[pad] = work_kv_end[pad] = 0, work_chunk[pad] = -1;
    info->chunk_tokens = int32_t(piece_max);
    std::memcpy(qo_indptr, a.qo_indptr, sizeof(int32_t) * (batch + 1));
    std::memcpy(kv_indptr, a.kv_indptr, sizeof(int32_t) * (batch + 1));
    std::memcpy(kv_len_out, kv_len.data(), sizeof(int32_t) * batch);
    int64_t mask_at = 0, slot = 0;
    for (int32_t q = 0; q < batch; ++q) {
      mask_offset[q] = a.mask_mode == FI_MASK_CUSTOM ? int32_t(mask_at) : 0;
      mask_at += (int64_t(qo_len[q]) * kv_len[q] + 7) / 8;
    }
    if (r.any_split) {
      merge_indptr[0] = 0;
      for (int32_t q = 0; q < batch; ++q) {
        const int32_t row0 = a.qo_indptr[q];
        if (chunks[q] == 1) {  // rows written directly: no slots
          std::fill(merge_indptr + row0 + 1, merge_indptr + row0 + 1 + qo_len[q], int32_t(slot));
          continue;
        }
        for (int32_t i = 0; i < qo_len[q]; ++i) merge_indptr[row0 + i + 1] = int32_t(slot += chunks[q]);
      }
    }
    if (a.device == FI_DEVICE_CPU) {
      if (nnz > 0) std::memcpy(static_cast<char*>(workspace) + r.off_indices, a.kv_indices, sizeof(int32_t) * nnz);
      return;
    }
#ifdef FI_WITH_CUDA
    if (nnz > 0) std::memcpy(reinterpret_cast<char*>(staging) + r.plan_bytes, a.kv_indices, sizeof(int32_t) * nnz);
    set_device(a.device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (r.off_indices == r.plan_bytes) {  // plan and indices are adjacent in both buffers
      cuda_check(cudaMemcpyAsync(workspace, staging, r.host_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync(plan)");
      return;
    }
    cuda_check(cudaMemcpyAsync(workspace, staging, r.plan_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync(plan)");
    if (nnz > 0)
      cuda_check(cudaMemcpyAsync(static_cast<char*>(workspace) + r.off_indices, reinterpret_cast<char*>(staging) + r.plan_bytes,
                                 sizeof(int32_t) * nnz, cudaMemcpyHostToDevice, s),
                 "cudaMemcpyAsync(indices)");
#endif
  });
}

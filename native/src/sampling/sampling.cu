// CUDA kernels of the sampling family. One block per request (row); nothing is sorted.
//
// Every kernel is built from one primitive, a pass: the block reads the row once (16-byte loads
// when the row allows it) and, per thread, accumulates for a few pivot keys the count and mass
// of the entries above each pivot, plus the mass of the entries in the current proposal set.
// A key is an entry's float bits (probabilities: negative / NaN / inf weigh 0, so keys order
// like values; logits: an order-preserving map of the signed float, NaN as -inf).
//
// Sampling is rejection sampling with pivots. Round r draws one token from the proposal set
// {key >= lo} in proportion to probability: a block scan of the per-thread proposal masses
// picks a thread with one uniform, and that thread's warp re-reads its entries (from L2) to
// pick the entry. The same pass also evaluates the filter exactly at the pivots and at the
// previous round's undecided draw (the filter keeps an entry x iff the count / mass of entries
// above x is below k / top_p * mass, a monotone test in x). So each round is one pass: it
// decides the previous draw, narrows the bracket (L, H) of the threshold (keys <= L are
// rejected, keys >= H kept), and draws again from {key > L}. A draw at or above H is accepted
// at once, at or below L dropped, otherwise decided by the next pass. Every proposal set holds
// the kept set and each round uses fresh randomness, so accepted draws follow the filtered
// distribution exactly. Pivots split (L, H) evenly in key space, so the bracket shrinks 9x per
// pass and the loop ends within ~12 passes even in the worst case. Measured on an H100 (batch 128 x
// vocab 128256): about 2 passes for top-p 0.9, 4 for top-p 0.5, 5-15 for top-k and the searches
// (see bench/README.md for the levers). Once the bracket's lower end L leaves at most kCap
// entries above it, one pass also copies those into shared memory and later passes read the
// copy instead of the row (see Cand); if they do not fit, the passes keep reading the row.
//
// Renorm and mask search the threshold the same way (no draws) until no entry lies inside the
// bracket, then write the row in one more pass. Randomness: uniform r of request b comes from
// Philox counter offset + b * FI_SAMPLING_COUNTERS + r / 4 (see flashinfer.h).
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <initializer_list>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../common/runtime.h"
#include "sampling.h"

namespace fi {
namespace {

constexpr int kThreads = 512;
constexpr int kPivots = 8;        // pivots per pass; slot kPivots holds the pending draw
constexpr int kSlots = kPivots + 1;
constexpr int kMaxRounds = 60;    // uniforms available: 4 * FI_SAMPLING_COUNTERS
constexpr uint32_t kNone = 0xffffffffu;  // an empty pivot slot (no key is greater)
constexpr uint32_t kInfKey = 0x7f800000u;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kPassUnroll = 8;   // 16-byte loads in flight per thread in a pass (lever 2)

enum Mode { kSample = 0, kRenorm = 1, kMask = 2 };

// ---- keys and loads

__device__ __forceinline__ float clean_prob(float x) { return (x > 0.f && x <= FLT_MAX) ? x : 0.f; }
__device__ __forceinline__ uint32_t logit_key(float x) {
  if (x != x) x = -INFINITY;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <int VEC>
__device__ __forceinline__ void load_vec(const float* p, int64_t v, float (&x)[VEC]) {
  if constexpr (VEC == 4) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p) + v);
    x[0] = f.x; x[1] = f.y; x[2] = f.z; x[3] = f.w;
  } else {
    x[0] = __ldg(p + v);
  }
}

// ---- per-thread statistics of a pass and their block reduction

struct Stats {
  float mass[kSlots];  // mass of entries with key > slot key
  int cnt[kSlots];     // count of entries with key > slot key
  int eq[kSlots];      // count of entries with key == slot key
  float total;         // mass of positive entries
  float maxv;          // largest entry
  int pos;             // positive entries
};

struct StatsSum {
  __device__ __forceinline__ Stats operator()(const Stats& a, const Stats& b) const {
    Stats r;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      r.mass[j] = a.mass[j] + b.mass[j];
      r.cnt[j] = a.cnt[j] + b.cnt[j];
      r.eq[j] = a.eq[j] + b.eq[j];
    }
    r.total = a.total + b.total;
    r.maxv = fmaxf(a.maxv, b.maxv);
    r.pos = a.pos + b.pos;
    return r;
  }
};

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

using BlockReduceStats = cub::BlockReduce<Stats, kThreads>;
using BlockScanF = cub::BlockScan<float, kThreads>;
using BlockReduceF = cub::BlockReduce<float, kThreads>;

// Block-uniform control, written by thread 0 between passes.
struct Control {
  uint32_t piv[kSlots];
  uint32_t lo;       // proposal: key >= lo
  int done;
  int token;
  int chosen_thread;
  float residual;    // target mass left inside the chosen thread's entries
  int picked;        // token picked by the warp
  int search;        // 1: no draw this pass (top_k_first's search for the top-k set)
  int compact;       // 0: passes read the row; 1: this pass also copies keys >= clo; 2: passes read Cand
  uint32_t clo;
  float tried;       // candidate estimate at the last copy (retry only below it); in shared, not a register
};

struct Shared {
  union {
    typename BlockReduceStats::TempStorage reduce;
    typename BlockScanF::TempStorage scan;
    typename BlockReduceF::TempStorage reducef;
  } cub;
  Stats stats;
  Control ctl;
};

__device__ __forceinline__ void init_stats(Stats& st, float& prop, bool logits) {
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    st.mass[j] = 0.f;
    st.cnt[j] = 0;
    st.eq[j] = 0;
  }
  st.total = 0.f;
  st.maxv = logits ? -INFINITY : 0.f;
  st.pos = 0;
  prop = 0.f;
}

// Adds one entry x (a probability, or a logit when LOGITS) to the statistics.
template <bool MASS, bool CNT, bool LOGITS>
__device__ __forceinline__ void accum(float x, const uint32_t (&piv)[kSlots], float lo_f, bool proposal, Stats& st,
                                      float& prop) {
  uint32_t key;
  float p = 0.f;
  if constexpr (LOGITS) {
    key = logit_key(x);
    st.maxv = fmaxf(st.maxv, x);
  } else {
    p = clean_prob(x);
    key = __float_as_uint(p);
    st.total += p;
    st.maxv = fmaxf(st.maxv, p);
    st.pos += p > 0.f;
    if (proposal && p >= lo_f) prop += p;
  }
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    const bool gt = key > piv[j];
    if constexpr (MASS) st.mass[j] += gt ? p : 0.f;
    if constexpr (CNT) {
      st.cnt[j] += gt;
      st.eq[j] += key == piv[j];
    }
  }
}

// Candidates in shared memory (lever 1 of bench/README.md). Once the bracket's lower end L is
// known and few entries lie above it, one HBM pass also copies the entries with key >= clo
// (= L + 1) here; every later pass reads these instead of the row. That is exact: later pivots,
// proposals and pending draws all lie above L (L only grows), and the statistics that count
// entries at or below L (total, max, positives) are only used after the first pass. Each warp
// owns a fixed region and appends in a fixed order (ballot prefix), so the layout, and with it
// every draw, is deterministic. Unused slots hold 0 (probabilities: weight 0, key 0, below every
// pivot) or NaN (logits: skipped). A warp whose region overflows makes the copy fail; the
// kernel then stays on the HBM passes.
constexpr int kWarps = kThreads / 32;
constexpr int kCap = 4096;               // candidates: 32 KiB of values and token ids
constexpr int kRegion = kCap / kWarps;   // slots per warp
struct Cand {
  float val[kCap];   // cleaned probability, or logit with NaN -> -inf
  int32_t idx[kCap]; // token id
  int wcnt[kWarps];  // entries each warp found (> kRegion: overflow)
};

// One pass over the row: statistics at the slot keys and the proposal mass of this thread.
// MASS / CNT: which statistics are needed. LOGITS: keys of logits (mask mode). COMPACT: also
// copy the entries with key >= clo into cand (see Cand).
template <int VEC, bool MASS, bool CNT, bool LOGITS, bool COMPACT = false, int UNROLL = kPassUnroll>
__device__ __forceinline__ void row_pass(const float* row, int64_t nvec, const uint32_t (&piv)[kSlots], uint32_t lo,
                                         bool proposal, Stats& st, float& prop, Cand* cand = nullptr,
                                         uint32_t clo = 0u) {
  init_stats(st, prop, LOGITS);
  const float lo_f = __uint_as_float(lo);
  const int lane = threadIdx.x & 31;
  const int wbase = (threadIdx.x >> 5) * kRegion;
  int wcount = 0;  // same in every lane of the warp
  // kUnroll vectors are loaded before any is used, so each thread keeps several 16-byte loads
  // in flight (one block per SM must cover the memory latency by itself at batch ~ SM count).
  // When compacting, the loop runs while any lane of the warp has work, so ballots see the
  // whole warp (lanes past the row see padding).
  constexpr int kUnroll = UNROLL;
  for (int64_t v0 = threadIdx.x; (COMPACT ? v0 - lane : v0) < nvec; v0 += int64_t(kThreads) * kUnroll) {
    float xs[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + int64_t(u) * kThreads;
      if (v < nvec) load_vec<VEC>(row, v, xs[u]);
      else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) xs[u][e] = LOGITS ? -INFINITY : 0.f;
      }
    }
#pragma unroll
    for (int ue = 0; ue < kUnroll * VEC; ++ue) {
      const float x = xs[ue / VEC][ue % VEC];
      const int64_t v = v0 + int64_t(ue / VEC) * kThreads;
      if constexpr (COMPACT) {
        const bool valid = v < nvec;
        const float c = LOGITS ? (x != x ? -INFINITY : x) : clean_prob(x);
        const uint32_t key = LOGITS ? logit_key(x) : __float_as_uint(c);
        const bool take = valid && key >= clo;
        const unsigned bal = __ballot_sync(kFull, take);
        if (bal) {
          const int slot = wcount + __popc(bal & ((1u << lane) - 1u));
          if (take && slot < kRegion) {
            cand->val[wbase + slot] = c;
            cand->idx[wbase + slot] = int32_t(v * VEC + ue % VEC);
          }
          wcount += __popc(bal);
        }
      }
      if (LOGITS && v >= nvec) continue;  // padding (probabilities pad with 0)
      accum<MASS, CNT, LOGITS>(x, piv, lo_f, proposal, st, prop);
    }
  }
  if constexpr (COMPACT) {
    for (int s = wcount + lane; s < kRegion; s += 32) cand->val[wbase + s] = LOGITS ? NAN : 0.f;
    if (lane == 0) cand->wcnt[threadIdx.x >> 5] = wcount;
  }
}

// The same pass over the candidates in shared memory; thread t owns slots t, t + kThreads, ...
template <bool MASS, bool CNT, bool LOGITS>
__device__ __forceinline__ void cand_pass(const Cand& cand, const uint32_t (&piv)[kSlots], uint32_t lo, bool proposal,
                                          Stats& st, float& prop) {
  init_stats(st, prop, LOGITS);
  const float lo_f = __uint_as_float(lo);
#pragma unroll 2
  for (int i = threadIdx.x; i < kCap; i += kThreads) {
    const float x = cand.val[i];
    if (LOGITS && x != x) continue;  // unused slot
    accum<MASS, CNT, LOGITS>(x, piv, lo_f, proposal, st, prop);
  }
}

// Thread 0, after a compacting pass: did every warp's candidates fit?
__device__ __forceinline__ bool cand_fit(const Cand& cand) {
  for (int w = 0; w < kWarps; ++w) {
    if (cand.wcnt[w] > kRegion) return false;
  }
  return true;
}

// Reduces the pass statistics into sh.stats (visible to all threads on return).
__device__ __forceinline__ void reduce_stats(Shared& sh, const Stats& st) {
  __syncthreads();  // the temp storage may still be in use by a previous primitive
  const Stats r = BlockReduceStats(sh.cub.reduce).Reduce(st, StatsSum());
  if (threadIdx.x == 0) sh.stats = r;
  __syncthreads();
}

// Picks a token from the proposal set with uniform u: a block scan over the per-thread proposal
// masses picks a thread, then that thread's warp walks its vectors t, t + kThreads, ... (32 at a
// time, from L2) to pick the entry. weights(v, w) writes the weights of vector v; they must be
// the ones the pass summed into `prop`. Returns the token (every thread), -1 for an empty set.
template <int VEC, typename Weights>
__device__ int pick(Shared& sh, int64_t nvec, float prop, float u, Weights weights) {
  float prefix, total;
  __syncthreads();
  BlockScanF(sh.cub.scan).ExclusiveSum(prop, prefix, total);
  if (threadIdx.x == 0) {
    sh.ctl.chosen_thread = -1;
    sh.ctl.picked = -1;
  }
  __syncthreads();
  const float target = u * total;
  if (prop > 0.f && prefix <= target) atomicMax(&sh.ctl.chosen_thread, int(threadIdx.x));
  __syncthreads();
  const int t = sh.ctl.chosen_thread;
  if (t < 0) return -1;
  if (int(threadIdx.x) == t) sh.ctl.residual = target - prefix;
  __syncthreads();
  if (int(threadIdx.x) / 32 == t / 32) {
    const int lane = threadIdx.x & 31;
    const float r = sh.ctl.residual;
    float acc = 0.f;
    for (int64_t base = 0; t + base * kThreads < nvec; base += 32) {
      const int64_t v = t + (base + lane) * kThreads;
      float w[VEC];
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < VEC; ++e) w[e] = 0.f;
      if (v < nvec) weights(v, w);
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += w[e];
      float incl = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += y;
      }
      const unsigned hit = __ballot_sync(kFull, s > 0.f && acc + incl > r);
      const unsigned nonzero = __ballot_sync(kFull, s > 0.f);
      const int src = hit ? __ffs(hit) - 1 : (nonzero ? 31 - __clz(nonzero) : -1);
      if (lane == src) {
        // Within the vector: the first entry crossing r (or, when rounding left r beyond the
        // thread's entries, the last positive one seen so far).
        float a = acc + incl - s;
        int e_pick = -1, e_last = 0;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          if (w[e] > 0.f) {
            a += w[e];
            e_last = e;
            if (e_pick < 0 && a > r) e_pick = e;
          }
        }
        sh.ctl.picked = int(v * VEC + (hit && e_pick >= 0 ? e_pick : e_last));
      }
      if (hit) break;
      acc += __shfl_sync(kFull, incl, 31);
    }
  }
  __syncthreads();
  return sh.ctl.picked;
}

// ---- the search state (thread 0 only)

struct Bracket {
  uint32_t L, H;    // keys <= L rejected, keys >= H kept
  int cL, cH, eH;   // count above L, count above H, count equal to H
  float mL;         // mass above L
  bool counts;      // counts are tracked
};

struct Criterion {
  int k;           // keep x iff fewer than k entries lie above it
  float target;    // and their mass is below target
  __device__ bool kept(int c, float m) const { return c < k && m < target; }
};

// Applies the statistics of the pivot slots to the bracket.
__device__ void narrow(Bracket& br, const Stats& s, const uint32_t (&piv)[kSlots], const Criterion& cr) {
  for (int j = 0; j < kPivots; ++j) {
    if (piv[j] == kNone) continue;
    if (cr.kept(s.cnt[j], s.mass[j])) {
      if (piv[j] < br.H) {
        br.H = piv[j];
        br.cH = s.cnt[j];
        br.eH = s.eq[j];
      }
    } else if (piv[j] > br.L) {
      br.L = piv[j];
      br.cL = s.cnt[j];
      br.mL = s.mass[j];
    }
  }
}

// No entry lies strictly between L and H: the kept set is exactly {key > L}.
__device__ bool settled(const Bracket& br, uint32_t none) {
  return br.counts && br.cL - br.cH - (br.H == none ? 0 : br.eH) == 0;
}

// Pivots spread evenly over (L, hi) in key space.
__device__ void spread(uint32_t* piv, uint32_t L, uint32_t hi) {
  const uint64_t span = hi > L ? uint64_t(hi) - L : 1;
  for (int j = 0; j < kPivots; ++j) {
    uint64_t q = L + (span * uint64_t(j + 1)) / (kPivots + 1);
    if (q <= L) q = uint64_t(L) + 1;
    if (q >= hi && hi > L + 1) q = hi - 1;
    piv[j] = uint32_t(q > 0xfffffffeull ? 0xfffffffeull : q);
  }
}

// First-pass pivots for probabilities, in multiples of the mean 1 / vocab: a fine grid (steps of
// sqrt 2) around the mean, where the top-p threshold of flat distributions lies, and two coarse
// ones above it for the top-k threshold.
__device__ void first_pivots(uint32_t* piv, int64_t vocab) {
  constexpr float kGrid[kPivots] = {0.35355339f, 0.5f, 0.70710678f, 1.f, 1.41421356f, 2.f, 8.f, 32.f};
  const float mean = 1.f / float(vocab);
#pragma unroll
  for (int j = 0; j < kPivots; ++j) piv[j] = __float_as_uint(fminf(mean * kGrid[j], 1.f));
}

template <typename T>
__device__ __forceinline__ T at(const Vec1<T>& v, int64_t i) { return v.data[i * v.stride]; }

// Thread 0's search state, kept in shared memory rather than in registers that every thread
// would reserve across the pass loop (it would make the passes spill).
struct SearchState {
  Bracket br;
  Criterion cr;
  int pending;
  uint32_t pending_key;
  float total, maxv;
  bool exact;
  uint32_t top;
};

// ---- sampling from probabilities, with or without filters

template <int VEC, bool MASS, bool CNT>
__global__ void __launch_bounds__(kThreads) sample_kernel(const SampleArgs a) {
  __shared__ Shared sh;
  __shared__ Cand cand;
  // With counts and the draw state, 8 loads in flight spill registers; keep 4 there (these
  // filters make most passes over the candidates in shared memory anyway).
  constexpr int kU = CNT ? (VEC == 4 ? 4 : 2) : kPassUnroll;
  constexpr int kUc = CNT ? 2 : 4;  // the one copying pass carries the ballots too
  const int64_t b = blockIdx.x;
  const int64_t row = a.indices.data ? int64_t(at(a.indices, b)) : b;
  if (row < 0 || row >= a.rows) {  // only on cuda, where indices are not checked on the host
    if (threadIdx.x == 0) a.out[b * a.out_stride] = 0;
    return;
  }
  const float* p = a.probs + row * a.row_stride;
  const int64_t nvec = a.vocab / VEC;
  const uint64_t base = request_base(a, b), seed = request_seed(a, b);
  const int f = a.filters;
  const bool min_p = f & FI_SAMPLING_MIN_P;
  const bool k_first = f & FI_SAMPLING_TOP_K_FIRST;
  // Parameters, clamped into range (cuda does not check values; see flashinfer.h).
  int k = (f & FI_SAMPLING_TOP_K) ? (a.top_k.data ? at(a.top_k, b) : a.top_k_val) : INT32_MAX;
  if (k < 1) k = 1;
  float top_p = (f & FI_SAMPLING_TOP_P) ? (a.top_p.data ? at(a.top_p, b) : a.top_p_val) : 1.f;
  top_p = top_p > 0.f ? fminf(top_p, 1.f) : (top_p <= 0.f ? FLT_MIN : 1.f);  // NaN -> 1
  float mp = min_p ? (a.min_p.data ? at(a.min_p, b) : a.min_p_val) : 0.f;
  mp = mp > 0.f ? fminf(mp, 1.f) : 0.f;
  const bool use_k = k < INT32_MAX && (f & FI_SAMPLING_TOP_K);
  const bool use_p = top_p < 1.f;
  const bool filtered = use_k || use_p;

  // thread 0's state
  __shared__ SearchState t0;
  Bracket& br = t0.br;
  Criterion& cr = t0.cr;
  int& pending = t0.pending;
  uint32_t& pending_key = t0.pending_key;
  float& total = t0.total;
  float& maxv = t0.maxv;
  bool& exact = t0.exact;
  int round = 0;

  if (threadIdx.x == 0) {
    br = Bracket{0u, kInfKey, 0, 0, 0, 0.f, CNT};
    cr = Criterion{use_k ? k : INT32_MAX, INFINITY};
    pending = -1;
    pending_key = 0;
    total = 0.f;
    maxv = 0.f;
    exact = !filtered && !min_p;
    first_pivots(sh.ctl.piv, a.vocab);
    sh.ctl.piv[kPivots] = kNone;
    sh.ctl.lo = 1u;
    sh.ctl.done = 0;
    sh.ctl.search = use_k && use_p && k_first;
    sh.ctl.compact = 0;
    sh.ctl.clo = 0u;
    sh.ctl.tried = INFINITY;
  }
  __syncthreads();
  for (int pass = 0;; ++pass) {
    uint32_t piv[kSlots];
#pragma unroll
    for (int j = 0; j < kSlots; ++j) piv[j] = sh.ctl.piv[j];
    const uint32_t lo = sh.ctl.lo;
    const bool drawing = !sh.ctl.search;
    const int mode = sh.ctl.compact;
    Stats st;
    float prop;
    if (mode == 2) cand_pass<MASS, CNT, false>(cand, piv, lo, drawing, st, prop);
    else if (mode == 1) row_pass<VEC, MASS, CNT, false, true, kUc>(p, nvec, piv, lo, drawing, st, prop, &cand, sh.ctl.clo);
    else row_pass<VEC, MASS, CNT, false, false, kU>(p, nvec, piv, lo, drawing, st, prop);
    reduce_stats(sh, st);
    int tok = -1;
    if (drawing && mode == 2) {
      const float u = sampling_uniform(seed, base, uint32_t(round < kMaxRounds ? round : kMaxRounds));
      const float lo_f = __uint_as_float(lo);
      const int slot = pick<1>(sh, kCap, prop, u, [&](int64_t v, float (&w)[1]) {
        const float c = cand.val[v];
        w[0] = c >= lo_f ? c : 0.f;
      });
      tok = slot >= 0 ? cand.idx[slot] : -1;
      ++round;
    } else if (drawing) {
      const float u = sampling_uniform(seed, base, uint32_t(round < kMaxRounds ? round : kMaxRounds));
      const float lo_f = __uint_as_float(lo);
      tok = pick<VEC>(sh, nvec, prop, u, [&](int64_t v, float (&w)[VEC]) {
        float x[VEC];
        load_vec<VEC>(p, v, x);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float c = clean_prob(x[e]);
          w[e] = c >= lo_f ? c : 0.f;
        }
      });
      ++round;
    }
    if (threadIdx.x == 0) {
      const Stats& s = sh.stats;
      Control& c = sh.ctl;
      bool search = c.search;
      if (pass == 0) {
        total = s.total;
        maxv = s.maxv;
        br.cL = s.pos;
        br.mL = total;
        if (use_p && !search) cr.target = top_p * total;
      }
      int out = -1;
      if (!(total > 0.f)) {
        out = 0;  // no positive weight: token 0 (see flashinfer.h)
      } else if (min_p) {
        if (exact || (tok >= 0 && clean_prob(p[tok]) >= mp * maxv)) {
          out = tok;
        } else {
          const uint32_t thr = __float_as_uint(mp * maxv);  // float32 product, as on cpu
          c.lo = thr > 1u ? thr : 1u;
          exact = true;
        }
      } else if (exact) {
        out = tok;
      } else {
        narrow(br, s, piv, cr);
        if (pending >= 0) {
          if (cr.kept(s.cnt[kPivots], s.mass[kPivots])) {
            out = pending;
          } else if (pending_key > br.L) {
            br.L = pending_key;
            br.cL = s.cnt[kPivots];
            br.mL = s.mass[kPivots];
          }
          pending = -1;
        }
        if (out < 0 && !search && pass == 0 && cr.kept(br.cL, br.mL)) exact = true;  // every positive entry is kept
        if (out < 0 && search && (cr.kept(br.cL, br.mL) || settled(br, kInfKey))) {
          // top_k_first: the top k are the keys above L (mass mL); now top-p within them.
          search = false;
          cr = Criterion{INT32_MAX, top_p * br.mL};
          br.H = kInfKey;
          br.cH = 0;
          br.eH = 0;
        } else if (out < 0 && tok >= 0) {
          const uint32_t key = __float_as_uint(clean_prob(p[tok]));
          if (exact || key >= br.H) {
            out = tok;
          } else if (key > br.L) {
            pending = tok;
            pending_key = key;
          }
        }
        if (out < 0) {
          exact = exact || settled(br, kInfKey);
          c.lo = br.L + 1;
          const uint32_t top = __float_as_uint(maxv) + 1u;
          spread(c.piv, br.L, br.H < top ? br.H : top);
          c.piv[kPivots] = pending >= 0 ? pending_key : kNone;
          // Copy the candidates {key > L} during the next pass when they may fit. Without
          // counts (top-p alone), each entry above L weighs more than L, so mL / L bounds them.
          if (mode == 1 && cand_fit(cand)) c.compact = 2;
          else if (mode == 1) c.compact = 0;
          if (c.compact == 0 && br.L > 0u) {
            const float est = CNT ? float(br.cL) : br.mL / __uint_as_float(br.L) * 1.001f + 1.f;
            if (est <= float(kCap) && est < c.tried) {
              c.compact = 1;
              c.clo = br.L + 1;
              c.tried = est;
            }
          }
        }
      }
      if (out < 0 && (round >= kMaxRounds || pass >= 2 * kMaxRounds)) out = pending >= 0 ? pending : (tok >= 0 ? tok : 0);
      c.done = out >= 0;
      c.token = out;
      c.search = search;
    }
    __syncthreads();
    if (sh.ctl.done) break;
  }
  if (threadIdx.x == 0) a.out[b * a.out_stride] = sh.ctl.token;
}

// ---- sampling from logits: one pass, per-thread online softmax

__device__ __forceinline__ float clean_logit(float x) { return x != x ? -INFINITY : fminf(x, FLT_MAX); }

template <int VEC>
__global__ void __launch_bounds__(kThreads) sample_logits_kernel(const SampleArgs a) {
  __shared__ Shared sh;
  __shared__ float s_max;
  const int64_t b = blockIdx.x;
  const int64_t row = a.indices.data ? int64_t(at(a.indices, b)) : b;
  if (row < 0 || row >= a.rows) {
    if (threadIdx.x == 0) a.out[b * a.out_stride] = 0;
    return;
  }
  const float* x = a.probs + row * a.row_stride;
  const int64_t nvec = a.vocab / VEC;
  float m = -INFINITY, s = 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    float y[VEC];
    load_vec<VEC>(x, v, y);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float z = clean_logit(y[e]);
      if (z == -INFINITY) continue;
      if (z > m) {
        s = s * expf(m - z) + 1.f;
        m = z;
      } else {
        s += expf(z - m);
      }
    }
  }
  const float mx = BlockReduceF(sh.cub.reducef).Reduce(m, MaxOp());
  if (threadIdx.x == 0) s_max = mx;
  __syncthreads();
  const float M = s_max;
  const float prop = m == -INFINITY ? 0.f : s * expf(m - M);
  const float u = sampling_uniform(request_seed(a, b), request_base(a, b), 0);
  int tok = pick<VEC>(sh, nvec, prop, u, [&](int64_t v, float (&w)[VEC]) {
    float y[VEC];
    load_vec<VEC>(x, v, y);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float z = clean_logit(y[e]);
      w[e] = z == -INFINITY ? 0.f : expf(z - M);
    }
  });
  if (threadIdx.x == 0) a.out[b * a.out_stride] = tok < 0 ? 0 : tok;
}

// ---- softmax

template <int VEC>
__global__ void __launch_bounds__(kThreads) softmax_kernel(const SoftmaxArgs a) {
  __shared__ typename BlockReduceF::TempStorage tmp;
  __shared__ float s_val;
  const int64_t r = blockIdx.x;
  const float* x = a.logits + r * a.in_stride;
  float* y = a.out + r * a.out_stride;
  float t = a.temperature.data ? at(a.temperature, r) : a.temperature_val;
  t = fabsf(t);
  if (!(t > 0.f) || t == INFINITY) t = 1.f;
  const float inv = 1.f / t;
  const int64_t nvec = a.vocab / VEC;
  float m = -INFINITY, s = 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    float z[VEC];
    load_vec<VEC>(x, v, z);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float q = clean_logit(z[e]) * inv;
      if (q == -INFINITY) continue;
      if (q > m) {
        s = s * expf(m - q) + 1.f;
        m = q;
      } else {
        s += expf(q - m);
      }
    }
  }
  const float mx = BlockReduceF(tmp).Reduce(m, MaxOp());
  if (threadIdx.x == 0) s_val = mx;
  __syncthreads();
  const float M = s_val;
  __syncthreads();
  const float sum = BlockReduceF(tmp).Sum(m == -INFINITY ? 0.f : s * expf(m - M));
  if (threadIdx.x == 0) s_val = sum;
  __syncthreads();
  const float S = s_val;
  const float scale = S > 0.f ? 1.f / S : 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    float z[VEC];
    load_vec<VEC>(x, v, z);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float q = clean_logit(z[e]) * inv;
      z[e] = (q == -INFINITY || M == -INFINITY) ? 0.f : expf(q - M) * scale;
    }
    if constexpr (VEC == 4) reinterpret_cast<float4*>(y)[v] = make_float4(z[0], z[1], z[2], z[3]);
    else y[v] = z[0];
  }
}

// ---- renormalization by top-k / top-p, and top-k masking of logits

template <int VEC, bool LOGITS>
__global__ void __launch_bounds__(kThreads) renorm_kernel(const RenormArgs a) {
  __shared__ Shared sh;
  __shared__ Cand cand;
  const int64_t r = blockIdx.x;
  const float* x = a.in + r * a.in_stride;
  float* y = a.out + r * a.out_stride;
  const int64_t nvec = a.vocab / VEC;
  const bool by_k = a.filter == FI_SAMPLING_TOP_K;
  int k = by_k ? (a.top_k.data ? at(a.top_k, r) : a.top_k_val) : INT32_MAX;
  if (k < 1) k = 1;
  float top_p = by_k ? 1.f : (a.top_p.data ? at(a.top_p, r) : a.top_p_val);
  top_p = top_p > 0.f ? fminf(top_p, 1.f) : (top_p <= 0.f ? FLT_MIN : 1.f);
  const uint32_t none = LOGITS ? 0xffffffffu : kInfKey;
  __shared__ SearchState t0;
  Bracket& br = t0.br;
  Criterion& cr = t0.cr;
  uint32_t& top = t0.top;
  if (threadIdx.x == 0) {
    br = Bracket{0u, none, 0, 0, 0, 0.f, true};
    cr = Criterion{k, INFINITY};
    top = none;
    if (LOGITS) spread(sh.ctl.piv, 0u, 0xffffffffu);
    else first_pivots(sh.ctl.piv, a.vocab);
    sh.ctl.piv[kPivots] = kNone;
    sh.ctl.done = 0;
    sh.ctl.compact = 0;
    sh.ctl.clo = 0u;
    sh.ctl.tried = INFINITY;
  }
  __syncthreads();
  for (int pass = 0;; ++pass) {
    uint32_t piv[kSlots];
#pragma unroll
    for (int j = 0; j < kSlots; ++j) piv[j] = sh.ctl.piv[j];
    const int mode = sh.ctl.compact;
    Stats st;
    float prop;
    if (mode == 2) cand_pass<!LOGITS, true, LOGITS>(cand, piv, 1u, false, st, prop);
    else if (mode == 1) row_pass<VEC, !LOGITS, true, LOGITS, true>(x, nvec, piv, 1u, false, st, prop, &cand, sh.ctl.clo);
    else row_pass<VEC, !LOGITS, true, LOGITS>(x, nvec, piv, 1u, false, st, prop);
    reduce_stats(sh, st);
    if (threadIdx.x == 0) {
      const Stats& s = sh.stats;
      Control& c = sh.ctl;
      bool done = false;
      if (pass == 0) {
        br.cL = LOGITS ? int(a.vocab) : s.pos;  // every logit key is above 0
        br.mL = s.total;
        if (!by_k) cr.target = top_p < 1.f ? top_p * s.total : INFINITY;
        top = LOGITS ? (logit_key(s.maxv) < 0xffffffffu ? logit_key(s.maxv) + 1 : 0xffffffffu) : __float_as_uint(s.maxv) + 1u;
        done = cr.kept(br.cL, br.mL);  // everything is kept
      }
      if (!done) {
        narrow(br, s, piv, cr);
        done = settled(br, none) || pass >= 2 * kMaxRounds;
      }
      if (!done) {
        spread(c.piv, br.L, br.H < top ? br.H : top);
        // Search among the candidates {key > L} in shared memory once they fit (see Cand).
        if (mode == 1 && cand_fit(cand)) c.compact = 2;
        else if (mode == 1) c.compact = 0;
        if (c.compact == 0 && br.L < 0xffffffffu && br.cL <= kCap && float(br.cL) < c.tried) {
          c.compact = 1;
          c.clo = br.L + 1;
          c.tried = float(br.cL);
        }
      }
      c.done = done;
      c.lo = br.L;
      c.residual = br.mL;
    }
    __syncthreads();
    if (sh.ctl.done) break;
  }
  // The kept entries are the keys above L.
  const uint32_t L = sh.ctl.lo;
  const float mass = sh.ctl.residual;
  const float scale = mass > 0.f ? 1.f / mass : 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    float z[VEC];
    load_vec<VEC>(x, v, z);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if constexpr (LOGITS) {
        z[e] = (z[e] == z[e] && logit_key(z[e]) > L) ? z[e] : -INFINITY;
      } else {
        const float q = clean_prob(z[e]);
        z[e] = __float_as_uint(q) > L ? q * scale : 0.f;
      }
    }
    if constexpr (VEC == 4) reinterpret_cast<float4*>(y)[v] = make_float4(z[0], z[1], z[2], z[3]);
    else y[v] = z[0];
  }
}

// ---- chain speculative sampling

template <int VEC>
__global__ void __launch_bounds__(kThreads) chain_kernel(const ChainArgs a) {
  __shared__ Shared sh;
  __shared__ int s_emitted;
  __shared__ float s_resid;
  const int64_t b = blockIdx.x;
  const uint64_t base = a.offset + uint64_t(b) * chain_counters(a.n);
  if (threadIdx.x == 0) {
    int accepted = 0, emitted = 0;
    for (int64_t i = 0; i < a.n; ++i) {
      const int32_t id = a.draft_ids[b * a.ids_s0 + i * a.ids_s1];
      const bool valid = id >= 0 && id < a.vocab;  // an invalid draft token counts as rejected
      const float q = valid ? clean_prob(a.draft[b * a.draft_s0 + i * a.draft_s1 + id]) : 0.f;
      const float pp = valid ? clean_prob(a.target[b * a.target_s0 + i * a.target_s1 + id]) : 0.f;
      const bool accept = valid && sampling_uniform(a.seed, base, uint32_t(i)) * q < pp;
      accepted += accept;
      if (accept && emitted == i) ++emitted;
    }
    a.accepted[b * a.acc_s] = accepted;
    a.emitted[b * a.emit_s] = emitted;
    s_emitted = emitted;
  }
  __syncthreads();
  const int64_t j = s_emitted;
  const float* t = a.target + b * a.target_s0 + j * a.target_s1;
  const float* d = j < a.n ? a.draft + b * a.draft_s0 + j * a.draft_s1 : nullptr;
  const int64_t nvec = a.vocab / VEC;
  float m_res = 0.f, m_tgt = 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    float tv[VEC], dv[VEC];
    load_vec<VEC>(t, v, tv);
    if (d) load_vec<VEC>(d, v, dv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float pt = clean_prob(tv[e]);
      m_tgt += pt;
      if (d) m_res += fmaxf(pt - clean_prob(dv[e]), 0.f);
    }
  }
  const float res_total = BlockReduceF(sh.cub.reducef).Sum(m_res);
  if (threadIdx.x == 0) s_resid = res_total;
  __syncthreads();
  const bool residual = d != nullptr && s_resid > 0.f;
  const float u = sampling_uniform(a.seed, base, uint32_t(a.n));
  const int tok = pick<VEC>(sh, nvec, residual ? m_res : m_tgt, u, [&](int64_t v, float (&w)[VEC]) {
    float tv[VEC], dv[VEC];
    load_vec<VEC>(t, v, tv);
    if (residual) load_vec<VEC>(d, v, dv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float pt = clean_prob(tv[e]);
      w[e] = residual ? fmaxf(pt - clean_prob(dv[e]), 0.f) : pt;
    }
  });
  for (int64_t i = threadIdx.x; i <= a.n; i += kThreads) {
    a.out_ids[b * a.out_s0 + i * a.out_s1] =
        i < j ? a.draft_ids[b * a.ids_s0 + i * a.ids_s1] : i == j ? (tok < 0 ? 0 : tok) : -1;
  }
}

// ---- launchers

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
bool vec4(const void* p, int64_t vocab, std::initializer_list<int64_t> strides) {
  if (vocab % 4 != 0 || !aligned16(p)) return false;
  for (int64_t s : strides) {
    if (s % 4 != 0) return false;
  }
  return true;
}

unsigned grid_of(int64_t n) {
  require(n <= 0x7fffffff, "sampling: batch ", n, " exceeds the CUDA grid limit");
  return unsigned(n);
}

template <int VEC>
void launch_sample(const SampleArgs& a, cudaStream_t s) {
  const unsigned g = grid_of(a.batch);
  const int f = a.filters;
  if (a.from_logits) sample_logits_kernel<VEC><<<g, kThreads, 0, s>>>(a);
  else if ((f & FI_SAMPLING_TOP_K) && (f & FI_SAMPLING_TOP_P)) sample_kernel<VEC, true, true><<<g, kThreads, 0, s>>>(a);
  else if (f & FI_SAMPLING_TOP_K) sample_kernel<VEC, false, true><<<g, kThreads, 0, s>>>(a);
  else if (f & FI_SAMPLING_TOP_P) sample_kernel<VEC, true, false><<<g, kThreads, 0, s>>>(a);
  else sample_kernel<VEC, false, false><<<g, kThreads, 0, s>>>(a);
}

}  // namespace

void sample_cuda(const SampleArgs& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (vec4(a.probs, a.vocab, {a.row_stride})) launch_sample<4>(a, s);
  else launch_sample<1>(a, s);
  check_launch("sampling kernel launch");
}

void softmax_cuda(const SoftmaxArgs& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned g = grid_of(a.rows);
  if (vec4(a.logits, a.vocab, {a.in_stride, a.out_stride}) && aligned16(a.out)) softmax_kernel<4><<<g, kThreads, 0, s>>>(a);
  else softmax_kernel<1><<<g, kThreads, 0, s>>>(a);
  check_launch("softmax kernel launch");
}

void renorm_cuda(const RenormArgs& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned g = grid_of(a.rows);
  const bool v4 = vec4(a.in, a.vocab, {a.in_stride, a.out_stride}) && aligned16(a.out);
  if (a.mask) {
    if (v4) renorm_kernel<4, true><<<g, kThreads, 0, s>>>(a);
    else renorm_kernel<1, true><<<g, kThreads, 0, s>>>(a);
  } else {
    if (v4) renorm_kernel<4, false><<<g, kThreads, 0, s>>>(a);
    else renorm_kernel<1, false><<<g, kThreads, 0, s>>>(a);
  }
  check_launch("renorm kernel launch");
}

void chain_speculative_cuda(const ChainArgs& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned g = grid_of(a.batch);
  if (vec4(a.draft, a.vocab, {a.draft_s0, a.draft_s1, a.target_s0, a.target_s1}) && aligned16(a.target)) {
    chain_kernel<4><<<g, kThreads, 0, s>>>(a);
  } else {
    chain_kernel<1><<<g, kThreads, 0, s>>>(a);
  }
  check_launch("chain speculative sampling kernel launch");
}

}  // namespace fi

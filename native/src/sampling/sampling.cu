// CUDA kernels of the sampling family. One block of 512 threads per request (row); nothing is
// sorted.
//
// Filters (top-k, top-p, both, top-k first) and renorm / mask all reduce to one threshold key:
// keep x iff fewer than k entries lie above it and their mass is below a target (Criterion;
// ties at the threshold kept), so the kept set is {key >= T*}. T* is found exactly by a radix
// select over the 32-bit keys (radix_select.cuh: three digits of 11, 10-11 and 10 bits):
//   pass 0 (HBM)  a histogram of the top digit in shared memory, count and exact mass per bucket
//                 (integer atomics: deterministic); a scan of it from the top finds the bucket B
//                 that holds T* (the lowest non-empty bucket whose top entry is kept).
//   pass 1 (HBM)  the histogram of the next digit of the entries in B. When B's entries fit the
//                 candidate buffer (kCap entries in shared memory; when everything from B up fits,
//                 those too), the same pass copies them there (key, token id; each warp into its
//                 own region in a fixed order) and sums per thread the mass above them. The
//                 remaining digits are then read from the copy: no more passes. When B is too
//                 large (or a warp's region overflows), the next level reads the row again.
// The last digit gives T* and the exact kept mass. Sampling then draws one uniform u from the
// kept set in proportion to probability: u * (A + C) with A the mass above the candidates (a
// block scan of the per-thread sums picks a thread, whose warp re-reads its vectors from L2)
// and C the candidates' kept mass (picked in shared memory). If the candidates do not hold T*,
// one more pass sums the per-thread kept mass and picks the same way. Common case: 2 HBM passes
// and a pick; renorm / mask add one writing pass. top_k_first finds the top-k threshold first,
// then runs a second descent with target top_p * (mass of the top-k set) from the same level-0
// histogram, usually over the candidates. When pass 0 shows that every entry is kept, the draw
// uses pass 0's per-thread masses (one pass).
//
// No filter and min-p: one pass sums the per-thread mass (and the max) and picks; min-p accepts
// the draw if it clears min_p * max (a draw from the full distribution that is accepted follows
// the filtered one), else draws again (uniform 1) from {key >= min_p * max} in one more pass.
// Randomness: uniform j of request b comes from Philox counter offset + b * FI_SAMPLING_COUNTERS
// + j / 4 (see flashinfer.h); filtered sampling uses uniform 0 only.
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../common/runtime.h"
#include "radix_select.cuh"
#include "sampling.h"

namespace fi {
namespace {

constexpr int kPassUnroll = 8;  // 16-byte loads in flight per thread in a histogram pass
constexpr int kCopyUnroll = 4;  // in the copying pass (it also carries a ballot per element)
static_assert(kRegion == kThreads, "thread t owns slot t of every warp's candidate region");

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

using BlockScanF = cub::BlockScan<float, kThreads>;
using BlockReduceF = cub::BlockReduce<float, kThreads>;

// Block-shared state: cub temporaries, the pick, the last histogram scan and the candidates.
struct Shared {
  union {
    typename BlockScanF::TempStorage scan;
    typename BlockReduceF::TempStorage reducef;
  } cub;
  int chosen_thread;
  float residual;     // target mass left inside the chosen thread's entries
  int picked;         // token (or slot) picked by the warp
  float value;        // a broadcast
  ScanOut hs;         // the last histogram scan
  CountMass warp_sums[kWarps];
  int cands;          // the candidates hold every entry with klo <= key <= khi
  uint32_t klo, khi;
  int wcnt[kWarps];   // entries each warp found (> kRegion: its region overflowed)
};

template <typename T>
__device__ __forceinline__ T at(const Vec1<T>& v, int64_t i) { return v.data[i * v.stride]; }

// ---- picking a token

// Exclusive block scan of the per-thread masses (total: their sum).
__device__ __forceinline__ void block_scan(Shared& sh, float prop, float& prefix, float& total) {
  __syncthreads();  // the temp storage may still be in use by a previous primitive
  BlockScanF(sh.cub.scan).ExclusiveSum(prop, prefix, total);
}

// Picks the entry at cumulative mass `target` of the set whose per-thread masses are prop (with
// exclusive prefix `prefix`): the last thread whose prefix <= target, then that thread's warp
// walks its vectors t, t + kThreads, ... (32 at a time, from L2). weights(v, w) writes the
// weights of vector v; they must be the ones the thread summed into prop (rounding aside: a
// target past the thread's entries picks its last positive one). Returns the element index
// (every thread), -1 for an empty set.
template <int VEC, typename Weights>
__device__ int pick_in(Shared& sh, int64_t nvec, float prop, float prefix, float target, Weights weights) {
  if (threadIdx.x == 0) {
    sh.chosen_thread = -1;
    sh.picked = -1;
  }
  __syncthreads();
  if (prop > 0.f && prefix <= target) atomicMax(&sh.chosen_thread, int(threadIdx.x));
  __syncthreads();
  const int t = sh.chosen_thread;
  if (t < 0) return -1;
  if (int(threadIdx.x) == t) sh.residual = target - prefix;
  __syncthreads();
  if (int(threadIdx.x) / 32 == t / 32) {
    const int lane = threadIdx.x & 31;
    const float r = sh.residual;
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
        sh.picked = int(v * VEC + (hit && e_pick >= 0 ? e_pick : e_last));
      }
      if (hit) break;
      acc += __shfl_sync(kFull, incl, 31);
    }
  }
  __syncthreads();
  return sh.picked;
}

// The pick's weights of a probability row: vector v's cleaned entries whose key passes keep(key),
// 0 for the others (keep must be the test the per-thread masses were summed with).
template <int VEC, typename Keep>
__device__ __forceinline__ auto prob_weights(const float* row, Keep keep) {
  return [=](int64_t v, float (&w)[VEC]) {
    float x[VEC];
    load_vec<VEC>(row, v, x);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float p = clean_prob(x[e]);
      w[e] = keep(__float_as_uint(p)) ? p : 0.f;
    }
  };
}

// Picks with uniform u from the set whose per-thread masses are prop.
template <int VEC, typename Weights>
__device__ int pick(Shared& sh, int64_t nvec, float prop, float u, Weights weights) {
  float prefix, total;
  block_scan(sh, prop, prefix, total);
  return pick_in<VEC>(sh, nvec, prop, prefix, u * total, weights);
}

// Draws with uniform u from {key >= T} of a probability row: one pass for the per-thread
// masses, then the pick.
template <int VEC>
__device__ int threshold_draw(Shared& sh, const float* row, int64_t nvec, uint32_t T, float u) {
  const auto keep = [T](uint32_t key) { return key >= T; };
  float prop = 0.f;
  row_loop<VEC, kPassUnroll, false>(row, nvec, [&](float x, int64_t, bool) {
    const float p = clean_prob(x);
    prop += keep(__float_as_uint(p)) ? p : 0.f;
  });
  return pick<VEC>(sh, nvec, prop, u, prob_weights<VEC>(row, keep));
}

// ---- the radix select (see radix_select.cuh for keys, digits and histograms)

// Dynamic shared memory of the radix kernels: the level-0 histogram, the histogram of the lower
// levels, and the candidates. Probabilities: 100 KiB; logits (counts only): 80 KiB.
template <bool LOGITS>
struct RadixMem {
  static constexpr bool kMass = !LOGITS;
  static constexpr int kWords = kMass ? 3 : 1;
  static constexpr int kBuckets1 = LOGITS ? 2048 : 1024;
  static constexpr size_t kBytes = size_t(kBuckets0 + kBuckets1) * kWords * 4 + size_t(kCap) * 8;
  uint32_t* base;
  // The histogram of level 0, and the one of the lower levels.
  __device__ Hist<kMass> h0() const { return Hist<kMass>{base, kBuckets0}; }
  __device__ Hist<kMass> hn() const { return Hist<kMass>{base + kWords * kBuckets0, kBuckets1}; }
  __device__ Hist<kMass> hist(int level) const { return level == 0 ? h0() : hn(); }
  // Candidates: key and token id; warp w owns slots [w * kRegion, (w + 1) * kRegion).
  __device__ uint32_t* key() const { return base + kWords * (kBuckets0 + kBuckets1); }
  __device__ int32_t* idx() const { return reinterpret_cast<int32_t*>(key() + kCap); }
};

// HBM pass: the histogram of the digit at `shift` of the entries in range r (ALL: every entry,
// level 0) into h. Returns this thread's mass of positive entries (probabilities).
template <int VEC, bool LOGITS, bool ALL>
__device__ float hist_pass(const float* row, int64_t nvec, const Hist<!LOGITS>& h, Range r, int shift, uint32_t dmask) {
  float acc = 0.f;
  row_loop<VEC, kPassUnroll, false>(row, nvec, [&](float x, int64_t, bool valid) {
    float p;
    const uint32_t key = key_of<LOGITS>(x, p);
    if constexpr (LOGITS) {
      if (valid && (ALL || r.has(key))) h.add((key >> shift) & dmask, key);
    } else {
      acc += p;
      if (key != 0u && (ALL || r.has(key))) h.add((key >> shift) & dmask, key);  // zeros weigh nothing
    }
  });
  return acc;
}

// HBM pass: copies the entries with klo <= key <= khi into the candidates (each warp into its own
// region, in ballot order: deterministic), adds the digit at `shift` of those in range nr to the
// histogram hn, and returns this thread's mass of {key > khi}. Writes the per-warp counts.
template <int VEC, bool LOGITS>
__device__ float copy_pass(const float* row, int64_t nvec, const RadixMem<LOGITS>& m, int* wcnt, uint32_t klo,
                           uint32_t khi, Range nr, int shift, uint32_t dmask) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t* const keys = m.key() + warp * kRegion;
  int32_t* const ids = m.idx() + warp * kRegion;
  const unsigned below = (1u << lane) - 1u;
  float above = 0.f;
  int wcount = 0;  // same in every lane of the warp
  row_loop<VEC, kCopyUnroll, true>(row, nvec, [&](float x, int64_t i, bool valid) {
    float p;
    const uint32_t key = key_of<LOGITS>(x, p);
    if constexpr (!LOGITS) above += key > khi ? p : 0.f;
    const bool take = valid && key >= klo && key <= khi && (LOGITS || key != 0u);
    const unsigned bal = __ballot_sync(kFull, take);
    if (bal) {
      if (take) {
        const int slot = wcount + __popc(bal & below);
        if (slot < kRegion) {
          keys[slot] = key;
          ids[slot] = int32_t(i);
        }
        if (nr.has(key)) m.hn().add((key >> shift) & dmask, key);
      }
      wcount += __popc(bal);
    }
  });
  if (lane == 0) wcnt[warp] = wcount;
  return above;
}

// Shared-memory pass: the histogram of the digit at `shift` of the candidates in range r.
template <bool LOGITS>
__device__ void cand_hist(const RadixMem<LOGITS>& m, const int* wcnt, Range r, int shift, uint32_t dmask) {
#pragma unroll 4
  for (int w = 0; w < kWarps; ++w) {
    if (int(threadIdx.x) < wcnt[w]) {
      const uint32_t key = m.key()[w * kRegion + threadIdx.x];
      if (r.has(key)) m.hn().add((key >> shift) & dmask, key);
    }
  }
}

struct Threshold {
  uint32_t key;       // the kept entries are those with key >= this
  double kept_mass;   // their exact mass (probabilities)
  bool split;         // the kept set is {key > sh.khi} plus the candidates >= key (see descend)
};

// Finds the threshold of criterion cr (frac > 0: target = frac * the row's mass) by radix
// select. m.h0() holds the level-0 histogram of the row, all_mass this thread's mass of positive
// entries (pass 0). Each lower level is histogrammed from the candidates when they hold the
// chosen bucket, else by an HBM pass that also copies the bucket (and everything above it when
// that fits) into the candidates when it fits. On return with split set, `above` holds this
// thread's mass of {key > sh.khi} (pass 0's masses when everything is kept: khi = 0, no
// candidates).
template <int VEC, bool LOGITS>
__device__ Threshold descend(const float* row, int64_t nvec, const RadixMem<LOGITS>& m, Shared& sh, Criterion cr,
                             double frac, float all_mass, float& above) {
  constexpr bool kMass = !LOGITS;
  int level = 0;
  uint32_t prefix = 0;   // the digits chosen so far
  CountMass ab{0, 0.0};  // count and mass above the current range
  for (;;) {
    const Range r = range_of<LOGITS>(level, prefix);
    const int shift = digit_shift<LOGITS>(level);
    scan<kMass, LOGITS>(m.hist(level), num_buckets<LOGITS>(level), r, shift, ab, cr, level == 0 ? frac : 0.0,
                        sh.warp_sums, sh.hs);
    const ScanOut& s = sh.hs;  // block-uniform; read before the barrier below
    cr.target = s.target;
    if (level == 0) {
      // Everything is kept when the lowest entry is: it has at most pos - 1 entries above it,
      // of mass at most total - (the floor of its bucket). Also the empty row (no bucket).
      const double floor = LOGITS || s.bmin == INT_MAX ? 0.0 : double(__uint_as_float(uint32_t(s.bmin) << shift));
      if (s.bmin == INT_MAX || cr.kept(s.total.cnt - 1, s.total.mass - floor)) {
        above = all_mass;
        __syncthreads();
        if (threadIdx.x < kWarps) sh.wcnt[threadIdx.x] = 0;
        if (threadIdx.x == 0) {
          sh.cands = 1;
          sh.klo = 1u;
          sh.khi = 0u;
        }
        __syncthreads();
        return Threshold{LOGITS ? 0u : 1u, s.total.mass, true};
      }
    }
    if (s.bucket == INT_MAX) return Threshold{r.lo > 0u || LOGITS ? r.lo : 1u, ab.mass, false};  // not reached
    ab = CountMass{s.cnt_above, s.mass_above};
    prefix = (prefix << digit_bits<LOGITS>(level)) | uint32_t(s.bucket);
    if (level == kLevels - 1) {
      const bool split = sh.cands && prefix >= sh.klo && prefix <= sh.khi;
      return Threshold{prefix, ab.mass + s.mass, split};
    }
    ++level;
    const Range nr = range_of<LOGITS>(level, prefix);
    const int nshift = digit_shift<LOGITS>(level);
    const uint32_t dmask = uint32_t(num_buckets<LOGITS>(level) - 1);
    const bool from_cands = sh.cands && nr.lo >= sh.klo && nr.hi() <= sh.khi;
    __syncthreads();  // everyone has read sh.hs and sh.cands; the scan is done with hn
    m.hn().clear(num_buckets<LOGITS>(level));
    __syncthreads();
    if (from_cands) {
      cand_hist<LOGITS>(m, sh.wcnt, nr, nshift, dmask);
    } else if (s.cnt <= kCap) {
      // Copy the bucket; with everything above it when that fits too (then nothing lies above
      // the candidates, and a second descent of top_k_first finds its bucket among them).
      const uint32_t klo = nr.lo, khi = ab.cnt + s.cnt <= kCap ? 0xffffffffu : nr.hi();
      above = copy_pass<VEC, LOGITS>(row, nvec, m, sh.wcnt, klo, khi, nr, nshift, dmask);
      __syncthreads();
      if (threadIdx.x == 0) {
        bool fit = true;
        for (int w = 0; w < kWarps; ++w) fit = fit && sh.wcnt[w] <= kRegion;
        sh.cands = fit;
        sh.klo = klo;
        sh.khi = khi;
      }
    } else {
      hist_pass<VEC, LOGITS, false>(row, nvec, m.hn(), nr, nshift, dmask);
    }
    __syncthreads();
  }
}

// The level-0 histogram of the row into m.h0() (pass 0); returns this thread's positive mass.
template <int VEC, bool LOGITS>
__device__ float first_pass(const float* row, int64_t nvec, const RadixMem<LOGITS>& m, Shared& sh) {
  m.h0().clear(kBuckets0);
  if (threadIdx.x == 0) sh.cands = 0;
  __syncthreads();
  const float all_mass = hist_pass<VEC, LOGITS, true>(row, nvec, m.h0(), Range{0u, 0u}, digit_shift<LOGITS>(0),
                                                       uint32_t(kBuckets0 - 1));
  __syncthreads();
  return all_mass;
}

// Draws with uniform u from the kept set of a split threshold: the mass above the candidates
// (per-thread sums `above`, weights {key > khi}) first, then the candidates >= T.
template <int VEC>
__device__ int split_draw(Shared& sh, const RadixMem<false>& m, const float* row, int64_t nvec, float above, uint32_t T,
                          float u) {
  const uint32_t khi = sh.khi;
  float cm = 0.f;  // this thread's kept candidates: slot threadIdx.x of every region
  for (int w = 0; w < kWarps; ++w) {
    if (int(threadIdx.x) < sh.wcnt[w]) {
      const uint32_t key = m.key()[w * kRegion + threadIdx.x];
      cm += key >= T ? __uint_as_float(key) : 0.f;
    }
  }
  __syncthreads();
  const float csum = BlockReduceF(sh.cub.reducef).Sum(cm);
  if (threadIdx.x == 0) sh.value = csum;
  __syncthreads();
  const float C = sh.value;
  float prefix, A;
  block_scan(sh, above, prefix, A);
  const float target = u * (A + C);
  if (!(C > 0.f && target >= A)) {
    return pick_in<VEC>(sh, nvec, above, prefix, target, prob_weights<VEC>(row, [khi](uint32_t key) { return key > khi; }));
  }
  float total;
  block_scan(sh, cm, prefix, total);
  const int slot = pick_in<1>(sh, kCap, cm, prefix, target - A, [&](int64_t v, float (&w)[1]) {
    const int s = int(v);
    const uint32_t key = m.key()[s];
    w[0] = s % kRegion < sh.wcnt[s / kRegion] && key >= T ? __uint_as_float(key) : 0.f;
  });
  return slot >= 0 ? m.idx()[slot] : -1;
}

// ---- sampling from probabilities

// Parameters clamped into range (cuda does not check values; see flashinfer.h).
__device__ __forceinline__ int clamp_top_k(int k) { return k < 1 ? 1 : k; }
__device__ __forceinline__ float clamp_top_p(float p) { return p > 0.f ? fminf(p, 1.f) : (p <= 0.f ? FLT_MIN : 1.f); }  // NaN -> 1

// Parameters of request b.
struct Filters {
  int k;        // INT_MAX: no top-k
  float top_p;  // 1: no top-p
  float min_p;  // 0: no min-p
  bool k_first;
};
__device__ Filters filters_of(const SampleArgs& a, int64_t b) {
  const int f = a.filters;
  Filters r;
  r.k = clamp_top_k((f & FI_SAMPLING_TOP_K) ? (a.top_k.data ? at(a.top_k, b) : a.top_k_val) : INT_MAX);
  r.top_p = clamp_top_p((f & FI_SAMPLING_TOP_P) ? (a.top_p.data ? at(a.top_p, b) : a.top_p_val) : 1.f);
  float mp = (f & FI_SAMPLING_MIN_P) ? (a.min_p.data ? at(a.min_p, b) : a.min_p_val) : 0.f;
  r.min_p = mp > 0.f ? fminf(mp, 1.f) : 0.f;
  r.k_first = f & FI_SAMPLING_TOP_K_FIRST;
  return r;
}

// The row of request b, or null when its index is outside [0, rows) (cuda does not check); then
// its token is 0 (written here) and the block returns.
__device__ const float* row_of(const SampleArgs& a, int64_t b) {
  const int64_t row = a.indices.data ? int64_t(at(a.indices, b)) : b;
  if (row < 0 || row >= a.rows) {  // only on cuda, where indices are not checked on the host
    if (threadIdx.x == 0) a.out[b * a.out_stride] = 0;
    return nullptr;
  }
  return a.probs + row * a.row_stride;
}

// No filter, or min-p.
template <int VEC>
__global__ void __launch_bounds__(kThreads, 1) sample_kernel(const SampleArgs a) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const float* p = row_of(a, b);
  if (!p) return;
  const int64_t nvec = a.vocab / VEC;
  const uint64_t base = request_base(a, b), seed = request_seed(a, b);
  const float mp = filters_of(a, b).min_p;
  float prop = 0.f, mx = 0.f;
  row_loop<VEC, kPassUnroll, false>(p, nvec, [&](float x, int64_t, bool) {
    const float c = clean_prob(x);
    prop += c;
    mx = fmaxf(mx, c);
  });
  int tok = pick<VEC>(sh, nvec, prop, sampling_uniform(seed, base, 0), prob_weights<VEC>(p, [](uint32_t) { return true; }));
  if (mp > 0.f && tok >= 0) {
    __syncthreads();
    const float m = BlockReduceF(sh.cub.reducef).Reduce(mx, MaxOp());
    if (threadIdx.x == 0) sh.value = m;
    __syncthreads();
    const float thr = mp * sh.value;  // float32 product, as on cpu
    if (clean_prob(p[tok]) < thr) {
      const uint32_t T = __float_as_uint(thr);
      tok = threshold_draw<VEC>(sh, p, nvec, T > 1u ? T : 1u, sampling_uniform(seed, base, 1));
    }
  }
  if (threadIdx.x == 0) a.out[b * a.out_stride] = tok < 0 ? 0 : tok;
}

// Top-k, top-p, joint and top-k first: the threshold by radix select, then one draw.
template <int VEC>
__global__ void __launch_bounds__(kThreads, 1) sample_radix_kernel(const SampleArgs a) {
  extern __shared__ uint4 dyn[];
  __shared__ Shared sh;
  const RadixMem<false> m{reinterpret_cast<uint32_t*>(dyn)};
  const int64_t b = blockIdx.x;
  const float* p = row_of(a, b);
  if (!p) return;
  const int64_t nvec = a.vocab / VEC;
  const Filters f = filters_of(a, b);
  const bool use_p = f.top_p < 1.f;
  const float all_mass = first_pass<VEC, false>(p, nvec, m, sh);
  float above = 0.f;
  Threshold th;
  if (f.k_first && f.k < INT_MAX && use_p) {
    // Top-k first: the top-k set, then top-p with top_p times its mass, which is the joint
    // criterion with that target (the top-p threshold over the row is then above the top-k one).
    const Threshold tk = descend<VEC, false>(p, nvec, m, sh, Criterion{f.k, INFINITY}, 0.0, all_mass, above);
    th = descend<VEC, false>(p, nvec, m, sh, Criterion{f.k, double(f.top_p) * tk.kept_mass}, 0.0, all_mass, above);
  } else {
    th = descend<VEC, false>(p, nvec, m, sh, Criterion{f.k, INFINITY}, use_p ? double(f.top_p) : 0.0, all_mass, above);
  }
  int tok = -1;
  if (th.kept_mass > 0.0) {  // else no positive weight: token 0 (see flashinfer.h)
    const float u = sampling_uniform(request_seed(a, b), request_base(a, b), 0);
    tok = th.split ? split_draw<VEC>(sh, m, p, nvec, above, th.key, u) : threshold_draw<VEC>(sh, p, nvec, th.key, u);
  }
  if (threadIdx.x == 0) a.out[b * a.out_stride] = tok < 0 ? 0 : tok;
}

// ---- sampling from logits: one pass, per-thread online softmax

__device__ __forceinline__ float clean_logit(float x) { return x != x ? -INFINITY : fminf(x, FLT_MAX); }

template <int VEC>
__global__ void __launch_bounds__(kThreads) sample_logits_kernel(const SampleArgs a) {
  __shared__ Shared sh;
  __shared__ float s_max;
  const int64_t b = blockIdx.x;
  const float* x = row_of(a, b);  // logits, in the probs field
  if (!x) return;
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
__global__ void __launch_bounds__(kThreads, 1) renorm_kernel(const RenormArgs a) {
  extern __shared__ uint4 dyn[];
  __shared__ Shared sh;
  const RadixMem<LOGITS> m{reinterpret_cast<uint32_t*>(dyn)};
  const int64_t r = blockIdx.x;
  const float* x = a.in + r * a.in_stride;
  float* y = a.out + r * a.out_stride;
  const int64_t nvec = a.vocab / VEC;
  const bool by_k = a.filter == FI_SAMPLING_TOP_K;
  const int k = clamp_top_k(by_k ? (a.top_k.data ? at(a.top_k, r) : a.top_k_val) : INT_MAX);
  const float top_p = clamp_top_p(by_k ? 1.f : (a.top_p.data ? at(a.top_p, r) : a.top_p_val));
  const float all_mass = first_pass<VEC, LOGITS>(x, nvec, m, sh);
  float above;
  const Threshold th = descend<VEC, LOGITS>(x, nvec, m, sh, Criterion{k, INFINITY}, top_p < 1.f ? double(top_p) : 0.0,
                                            all_mass, above);
  // Keep the keys >= th.key (probabilities: divided by their mass, as the cpu does in float64).
  const uint32_t T = th.key;
  const double inv = th.kept_mass > 0.0 ? 1.0 / th.kept_mass : 0.0;
  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    float z[VEC];
    load_vec<VEC>(x, v, z);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if constexpr (LOGITS) {
        z[e] = (z[e] == z[e] && logit_key(z[e]) >= T) ? z[e] : -INFINITY;
      } else {
        const float q = clean_prob(z[e]);
        z[e] = __float_as_uint(q) >= T ? float(double(q) * inv) : 0.f;
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

// A radix kernel, its dynamic shared memory allowed once per process (like the attention kernels).
// Keyed by the kernel itself: the instantiations share one function type, so a static keyed by
// the type would configure only the first one launched.
template <auto Kernel>
auto radix_kernel(size_t bytes) {
  static const cudaError_t configured = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  cuda_check(configured, "cudaFuncSetAttribute(sampling)");
  return Kernel;
}

template <int VEC>
void launch_sample(const SampleArgs& a, cudaStream_t s) {
  const unsigned g = grid_of(a.batch);
  if (a.from_logits) {
    sample_logits_kernel<VEC><<<g, kThreads, 0, s>>>(a);
  } else if (a.filters & (FI_SAMPLING_TOP_K | FI_SAMPLING_TOP_P)) {
    constexpr size_t bytes = RadixMem<false>::kBytes;
    radix_kernel<sample_radix_kernel<VEC>>(bytes)<<<g, kThreads, bytes, s>>>(a);
  } else {
    sample_kernel<VEC><<<g, kThreads, 0, s>>>(a);
  }
}

template <int VEC, bool LOGITS>
void launch_renorm(const RenormArgs& a, cudaStream_t s) {
  constexpr size_t bytes = RadixMem<LOGITS>::kBytes;
  radix_kernel<renorm_kernel<VEC, LOGITS>>(bytes)<<<grid_of(a.rows), kThreads, bytes, s>>>(a);
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
  const bool v4 = vec4(a.in, a.vocab, {a.in_stride, a.out_stride}) && aligned16(a.out);
  if (a.mask) {
    if (v4) launch_renorm<4, true>(a, s);
    else launch_renorm<1, true>(a, s);
  } else {
    if (v4) launch_renorm<4, false>(a, s);
    else launch_renorm<1, false>(a, s);
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

// Building blocks of the sampling kernels (included by sampling.cu only): keys, row loops, and
// the radix select of a threshold key with histograms in shared memory.
//
// Keys. A key is an entry's 32-bit image that orders like the entry: probabilities use the float
// bits of clean_prob(x) (negative / NaN / inf weigh 0), in [0, 0x7f800000); logits use
// logit_key(x), an order-preserving map of the signed float with NaN as -inf.
//
// Digits. The radix select reads a key as three digits, most significant first:
//   probabilities  bits 30..20 (11), 19..10 (10), 9..0 (10)   (bit 31 is always 0)
//   logits         bits 31..21 (11), 20..10 (11), 9..0 (10)
// A level-0 bucket of a probability fixes its float exponent E and the top 3 mantissa bits, so
// every entry of the bucket (and of its sub-buckets) is (hi + low 20 key bits) * 2^(max(E,1) - 150)
// with one integer hi. Summing the low 20 bits as a 64-bit integer (two 32-bit words and a
// carry) gives each bucket's mass exactly, whatever the order of the atomics: the histograms are
// deterministic, and their masses are exact in double (see bucket_mass).
#pragma once
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>

namespace fi {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kLevels = 3;                // digits of a key
constexpr int kBuckets0 = 2048;           // level-0 buckets (11 bits)
// Candidates in shared memory: each warp owns kRegion slots of a buffer of kCap (key, token id).
constexpr int kCap = 8192;
constexpr int kRegion = kCap / kWarps;

// ---- keys and loads

__device__ __forceinline__ float clean_prob(float x) { return (x > 0.f && x <= FLT_MAX) ? x : 0.f; }
__device__ __forceinline__ uint32_t logit_key(float x) {
  if (x != x) x = -INFINITY;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
// The key of an entry: probabilities also return the cleaned value in p.
template <bool LOGITS>
__device__ __forceinline__ uint32_t key_of(float x, float& p) {
  if constexpr (LOGITS) {
    p = 0.f;
    return logit_key(x);
  } else {
    p = clean_prob(x);
    return __float_as_uint(p);
  }
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

// Calls f(x, i, valid) for the elements of the row that this thread reads: vectors t, t + kThreads,
// ... UNROLL vectors are loaded before any is used, so each thread keeps several 16-byte loads in
// flight (one block per SM must cover the memory latency by itself at batch ~ SM count).
// Elements past the row come with valid = false and x = 0. WARP: the loop runs while any lane
// of the warp has work, so ballots inside f see the whole warp.
template <int VEC, int UNROLL, bool WARP, typename F>
__device__ __forceinline__ void row_loop(const float* row, int64_t nvec, F&& f) {
  const int lane = threadIdx.x & 31;
  for (int64_t v0 = threadIdx.x; (WARP ? v0 - lane : v0) < nvec; v0 += int64_t(kThreads) * UNROLL) {
    float xs[UNROLL][VEC];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t v = v0 + int64_t(u) * kThreads;
      if (v < nvec) {
        load_vec<VEC>(row, v, xs[u]);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) xs[u][e] = 0.f;
      }
    }
#pragma unroll
    for (int ue = 0; ue < UNROLL * VEC; ++ue) {
      const int64_t v = v0 + int64_t(ue / VEC) * kThreads;
      f(xs[ue / VEC][ue % VEC], v * VEC + ue % VEC, v < nvec);
    }
  }
}

// ---- digits and ranges

template <bool LOGITS>
__device__ __forceinline__ int digit_shift(int level) { return level == 0 ? (LOGITS ? 21 : 20) : level == 1 ? 10 : 0; }
template <bool LOGITS>
__device__ __forceinline__ int digit_bits(int level) { return level == 1 && LOGITS ? 11 : level == 0 ? 11 : 10; }
template <bool LOGITS>
__device__ __forceinline__ int num_buckets(int level) { return 1 << digit_bits<LOGITS>(level); }

// The keys whose digits above `level` are `prefix`: lo <= key <= lo | ~mask.
struct Range {
  uint32_t lo, mask;
  __device__ bool has(uint32_t key) const { return (key & mask) == lo; }
  __device__ uint32_t hi() const { return lo | ~mask; }
};
template <bool LOGITS>
__device__ __forceinline__ Range range_of(int level, uint32_t prefix) {
  const int top = digit_shift<LOGITS>(level) + digit_bits<LOGITS>(level);  // 31 or 32 at level 0
  const uint64_t span = (uint64_t(1) << top) - 1;
  return Range{uint32_t((uint64_t(prefix) << top) & 0xffffffffu), uint32_t(~span)};
}

// ---- histograms in shared memory

// Count per bucket and, with MASS, the 64-bit sum of the low 20 key bits of the bucket's entries
// (words lo and hi, after the counts: lo[b] = cnt[stride + b], hi[b] = cnt[2 * stride + b]). Only
// a pointer and a stride, so choosing a histogram at run time stays in registers.
template <bool MASS>
struct Hist {
  uint32_t* cnt;
  int stride;  // buckets allocated
  __device__ uint32_t* lo() const { return cnt + stride; }
  __device__ uint32_t* hi() const { return cnt + 2 * stride; }
  __device__ void clear(int nb) const {
    for (int b = threadIdx.x; b < nb; b += kThreads) {
      cnt[b] = 0u;
      if constexpr (MASS) {
        lo()[b] = 0u;
        hi()[b] = 0u;
      }
    }
  }
  __device__ __forceinline__ void add(uint32_t b, uint32_t key) const {
    atomicAdd(cnt + b, 1u);
    if constexpr (MASS) {
      const uint32_t l = key & 0xfffffu;
      const uint32_t old = atomicAdd(lo() + b, l);
      if (old + l < old) atomicAdd(hi() + b, 1u);  // carry into the high word
    }
  }
};

// Exact mass of bucket b of a probability histogram at the level of range r (see the top).
__device__ __forceinline__ double bucket_mass(const Hist<true>& h, int b, uint32_t bucket_lo) {
  const uint32_t b0 = bucket_lo >> 20;  // level-0 bucket: exponent and top 3 mantissa bits
  const int E = int(b0 >> 3);
  const double hi = double((E ? 0x800000u : 0u) | ((b0 & 7u) << 20));
  const double low = double((uint64_t(h.hi()[b]) << 32) | h.lo()[b]);
  const int e = (E ? E : 1) - 150;  // in [-149, 104]: a normal double
  return (double(h.cnt[b]) * hi + low) * __longlong_as_double((long long)(e + 1023) << 52);
}

// ---- the filter criterion and the scan of a histogram

// Keep an entry x iff fewer than k entries lie above it and their mass is below target: the
// filters of flashinfer.h (ties at the threshold kept), monotone in x.
struct Criterion {
  int k;
  double target;
  __device__ bool kept(int c, double m) const { return c < k && m < target; }
};

struct CountMass {
  int cnt;
  double mass;
};
struct CountMassSum {
  __device__ __forceinline__ CountMass operator()(const CountMass& a, const CountMass& b) const {
    return CountMass{a.cnt + b.cnt, a.mass + b.mass};
  }
};

// Exclusive scan of x over the block in a fixed order (deterministic; cub's scan of this struct
// went through local memory). warp_sums: kWarps entries of shared memory. Returns the exclusive
// prefix; agg gets the block's sum.
__device__ __forceinline__ CountMass block_exclusive_scan(CountMass x, CountMass* warp_sums, CountMass& agg) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  CountMass incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int c = __shfl_up_sync(kFull, incl.cnt, o);
    const double m = __shfl_up_sync(kFull, incl.mass, o);
    if (lane >= o) incl = CountMass{incl.cnt + c, incl.mass + m};
  }
  CountMass excl{__shfl_up_sync(kFull, incl.cnt, 1), __shfl_up_sync(kFull, incl.mass, 1)};
  if (lane == 0) excl = CountMass{0, 0.0};
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  CountMass before{0, 0.0};
  agg = CountMass{0, 0.0};
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const CountMass s = warp_sums[w];
    if (w < warp) before = CountMass{before.cnt + s.cnt, before.mass + s.mass};
    agg = CountMass{agg.cnt + s.cnt, agg.mass + s.mass};
  }
  return CountMass{before.cnt + excl.cnt, before.mass + excl.mass};
}

// The result of scan (block-uniform once scan returns).
struct ScanOut {
  int bucket;         // the bucket holding the threshold (INT_MAX: none)
  int bmin;           // the lowest non-empty bucket
  int cnt, cnt_above; // entries in the bucket / above it (above included)
  double mass, mass_above;
  CountMass total;    // the whole histogram
  double target;      // the criterion's target as evaluated
};

// Scans histogram h (nb buckets of the range r at `level`) from the top: the threshold lies in
// the lowest non-empty bucket whose top entry is kept, i.e. with kept(count / mass strictly above
// the bucket). `above` is what lies above the range. frac > 0: the target is frac times the
// histogram's total mass (top-p at level 0), else cr.target. Thread t owns buckets nb-1-t*per-j.
template <bool MASS, bool LOGITS>
__device__ void scan(const Hist<MASS>& h, int nb, Range r, int shift, CountMass above, Criterion cr, double frac,
                     CountMass* warp_sums, ScanOut& out) {
  constexpr int kMaxPer = 4;
  const int per = nb / kThreads;
  CountMass v[kMaxPer], local{0, 0.0};
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    v[j] = CountMass{0, 0.0};
    if (j < per) {
      const int b = nb - 1 - (int(threadIdx.x) * per + j);
      v[j].cnt = int(h.cnt[b]);
      if constexpr (MASS) {
        if (v[j].cnt) v[j].mass = bucket_mass(h, b, r.lo | (uint32_t(b) << shift));
      }
      local = CountMassSum()(local, v[j]);
    }
  }
  CountMass agg;
  __syncthreads();  // readers of the previous out / warp_sums are done
  if (threadIdx.x == 0) {
    out.bucket = INT_MAX;  // visible after the barrier inside the scan
    out.bmin = INT_MAX;
  }
  const CountMass excl = block_exclusive_scan(local, warp_sums, agg);
  if (frac > 0.0) cr.target = frac * agg.mass;
  CountMass run = CountMassSum()(above, excl), best_above{0, 0.0};
  int best = -1, lowest = INT_MAX;
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    if (j < per && v[j].cnt > 0) {
      lowest = nb - 1 - (int(threadIdx.x) * per + j);
      if (cr.kept(run.cnt, run.mass)) {
        best = j;
        best_above = run;
      }
      run = CountMassSum()(run, v[j]);
    }
  }
  const int best_b = best >= 0 ? nb - 1 - (int(threadIdx.x) * per + best) : INT_MAX;
  if (best >= 0) atomicMin(&out.bucket, best_b);
  if (lowest != INT_MAX) atomicMin(&out.bmin, lowest);
  __syncthreads();
  if (best >= 0 && best_b == out.bucket) {
#pragma unroll
    for (int j = 0; j < kMaxPer; ++j) {
      if (j == best) {
        out.cnt = v[j].cnt;
        out.mass = v[j].mass;
      }
    }
    out.cnt_above = best_above.cnt;
    out.mass_above = best_above.mass;
  }
  if (threadIdx.x == 0) {
    out.total = agg;
    out.target = cr.target;
  }
  __syncthreads();
}

}  // namespace
}  // namespace fi

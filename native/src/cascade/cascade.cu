// CUDA kernels of the cascade family. Memory-bound: every v element is read once with 16-byte
// loads where the layout allows (8- or 4-byte, else one element), merged in float32 registers
// and written once.
//
// Layout: a "group" of G lanes (a power of two <= 32) covers the head_dim of one (row, head)
// pair, lane k taking vector chunks k, k + G, ... Groups never straddle a warp, and every warp
// walks a grid-stride loop over pairs with a warp-uniform trip count, so warp shuffles and
// __syncwarp are always reached by all 32 lanes.
//
// merge_states also splits the states of a pair over P partitions (G * P <= 32 lanes, one
// sub-warp): each partition loads its states in batches of kBatch (all loads of a batch issued
// before any arithmetic, so a pair's whole input is in flight at once when N <= P * kBatch),
// merges them online (running max m, sum d, accumulator acc), and the partitions are combined
// with xor shuffles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../common/convert.cuh"
#include "../common/runtime.h"
#include "cascade.h"

namespace fi {
namespace {

constexpr int kThreads = 128;
constexpr int kWarpsPerBlock = kThreads / 32;
// States whose v chunks one lane of merge_states loads together: 64 bytes of v per lane in
// flight (4 states of 16-byte vectors), at most 8 states. With 64 registers a lane (8 blocks of
// 128 threads per SM) that keeps ~64 KB of loads in flight per SM, well past what DRAM
// bandwidth times latency asks for (~18 KB per SM on an H100).
__host__ __device__ constexpr int batch_states(int vec_bytes) { return 64 / vec_bytes < 8 ? 64 / vec_bytes : 8; }
constexpr int kMinBlocks = 8;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------- element access

template <int BYTES> struct RawOf;
template <> struct RawOf<16> { using type = uint4; };
template <> struct RawOf<8> { using type = uint2; };
template <> struct RawOf<4> { using type = unsigned int; };
template <> struct RawOf<2> { using type = unsigned short; };

// VEC elements of T moved by one load or store instruction.
template <typename T, int VEC>
union Pack {
  using Raw = typename RawOf<int(sizeof(T)) * VEC>::type;
  Raw raw;
  T e[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void unpack(const typename Pack<T, VEC>::Raw& raw, float (&out)[VEC]) {
  Pack<T, VEC> p;
  p.raw = raw;
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_float(p.e[k]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* dst, const float (&v)[VEC]) {
  Pack<T, VEC> p;
#pragma unroll
  for (int k = 0; k < VEC; ++k) p.e[k] = from_float<T>(v[k]);
  *reinterpret_cast<typename Pack<T, VEC>::Raw*>(dst) = p.raw;
}

// max that lets a NaN through (fmaxf would drop it), so a NaN s gives a NaN result.
__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || b != b) ? b : a; }

// ---------------------------------------------------------------- merge_state

struct MergeStateParams {
  const void* va;
  const void* vb;
  void* vo;
  const float* sa;
  const float* sb;
  float* so;
  const uint8_t* mask;  // null: every row
  int64_t va_row, va_head, va_dim;
  int64_t vb_row, vb_head, vb_dim;
  int64_t vo_row, vo_head, vo_dim;
  int64_t sa_row, sa_head, sb_row, sb_head, so_row, so_head;
  int64_t mask_stride;
  int64_t pairs, num_heads, head_dim;
  int32_t log2_group;
};

// The outputs may be exactly v_a/s_a or v_b/s_b (in place): each lane reads its v chunks before
// writing them, and s_out is written only after every lane of the warp has read s_a and s_b.
// Plain loads (not ld.global.nc) because the inputs may be written by this kernel. A lane issues
// its first v loads, the s loads and the mask load together, before any of them is used, so a
// pair costs one memory round trip; rows whose mask is 0 are read but never written.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) merge_state_kernel(const MergeStateParams p) {
  using Raw = typename Pack<T, VEC>::Raw;
  const float neg_inf = -INFINITY;
  const int lane = threadIdx.x & 31;
  const int group = 1 << p.log2_group;
  const int lane_g = lane & (group - 1);
  const int pairs_per_warp = 32 >> p.log2_group;
  const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t warp_step = int64_t(gridDim.x) * kWarpsPerBlock * pairs_per_warp;
  const int64_t chunks = p.head_dim / VEC;
  const int64_t a_step = VEC > 1 ? VEC : p.va_dim, b_step = VEC > 1 ? VEC : p.vb_dim;
  const int64_t o_step = VEC > 1 ? VEC : p.vo_dim;
  for (int64_t base = warp * pairs_per_warp; base < p.pairs; base += warp_step) {
    const int64_t pair = base + (lane >> p.log2_group);
    const bool valid = pair < p.pairs;
    const int64_t row = pair / p.num_heads, head = pair - row * p.num_heads;
    const T* pa = static_cast<const T*>(p.va) + row * p.va_row + head * p.va_head;
    const T* pb = static_cast<const T*>(p.vb) + row * p.vb_row + head * p.vb_head;
    Raw ra{}, rb{};
    float sa = neg_inf, sb = neg_inf;
    bool write = false;
    if (valid) {
      if (lane_g < chunks) {
        ra = *reinterpret_cast<const Raw*>(pa + lane_g * a_step);
        rb = *reinterpret_cast<const Raw*>(pb + lane_g * b_step);
      }
      sa = p.sa[row * p.sa_row + head * p.sa_head];
      sb = p.sb[row * p.sb_row + head * p.sb_head];
      write = p.mask == nullptr || p.mask[row * p.mask_stride] != 0;
    }
    // Weights. Both empty: v = 0, s = -inf. A NaN s makes everything NaN.
    const float m = nan_max(sa, sb);
    const bool use_a = m != neg_inf && sa != neg_inf, use_b = m != neg_inf && sb != neg_inf;
    const float ea = use_a ? expf(sa - m) : 0.f;  // the larger of ea, eb is exactly 1
    const float eb = use_b ? expf(sb - m) : 0.f;
    const float other = sa >= sb ? eb : ea;
    const float inv = 1.f / (1.f + other);
    const float wa = ea * inv, wb = eb * inv;
    if (write) {
      T* po = static_cast<T*>(p.vo) + row * p.vo_row + head * p.vo_head;
      for (int64_t c = lane_g; c < chunks; c += group) {
        if (c != lane_g) {
          ra = *reinterpret_cast<const Raw*>(pa + c * a_step);
          rb = *reinterpret_cast<const Raw*>(pb + c * b_step);
        }
        float fa[VEC], fb[VEC], out[VEC];
        unpack<T, VEC>(ra, fa);
        unpack<T, VEC>(rb, fb);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          // an empty state's v is ignored (selected away, so even NaN there does not leak)
          const float ta = use_a ? fa[k] * wa : 0.f;
          out[k] = use_b ? fmaf(fb[k], wb, ta) : ta;
        }
        store_pack<T, VEC>(po + c * o_step, out);
      }
    }
    __syncwarp();
    if (write && lane_g == 0) {
      p.so[row * p.so_row + head * p.so_head] = m == neg_inf ? neg_inf : m + log1pf(other);
    }
  }
}

// ---------------------------------------------------------------- merge_states

struct MergeStatesParams {
  const void* v;
  const float* s;
  void* vo;
  float* so;
  int64_t v_row, v_state, v_head, v_dim;
  int64_t s_row, s_state, s_head;
  int64_t vo_row, vo_head, vo_dim;
  int64_t so_row, so_head;
  int64_t pairs, num_heads, head_dim, num_states;
  int32_t log2_group, log2_parts;
};

// WIDE: per-state offsets in 64 bits (strides too large for u * stride to fit in 32 bits).
template <typename T, int VEC, bool WIDE>
__global__ void __launch_bounds__(kThreads, kMinBlocks) merge_states_kernel(const MergeStatesParams p) {
  using Raw = typename Pack<T, VEC>::Raw;
  constexpr int kBatch = batch_states(int(sizeof(T)) * VEC);
  const float neg_inf = -INFINITY;
  const int lane = threadIdx.x & 31;
  const int group = 1 << p.log2_group;
  const int lane_g = lane & (group - 1);
  const int part = (lane >> p.log2_group) & ((1 << p.log2_parts) - 1);
  const int log2_sub = p.log2_group + p.log2_parts;  // lanes per pair: G * P
  const int pairs_per_warp = 32 >> log2_sub;
  const int num_states = int(p.num_states);
  const int per_part = (num_states + (1 << p.log2_parts) - 1) >> p.log2_parts;
  const int begin = min(num_states, part * per_part);
  const int end = min(num_states, begin + per_part);
  const int64_t chunks = p.head_dim / VEC;
  // Work items: (pair, chunk block it) with it < iters; iters >= 1 so s is written even when
  // head_dim = 0.
  const int64_t iters = chunks > group ? (chunks + group - 1) >> p.log2_group : 1;
  const int64_t items = p.pairs * iters;
  const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t warp_step = int64_t(gridDim.x) * kWarpsPerBlock * pairs_per_warp;
  for (int64_t base = warp * pairs_per_warp; base < items; base += warp_step) {
    const int64_t item = base + (lane >> log2_sub);
    const bool valid = item < items;
    const int64_t pair = item / iters, it = item - pair * iters;
    const int64_t row = pair / p.num_heads, head = pair - row * p.num_heads;
    const int64_t c = it * group + lane_g;
    const bool active = valid && c < chunks;
    float m = neg_inf, d = 0.f, acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    if (valid) {
      const float* sq = p.s + row * p.s_row + head * p.s_head + begin * p.s_state;
      const T* vq = static_cast<const T*>(p.v) + row * p.v_row + head * p.v_head +
                    c * (VEC > 1 ? VEC : p.v_dim) + begin * p.v_state;
      for (int i0 = begin; i0 < end; i0 += kBatch) {
        const int left = end - i0;
        float sv[kBatch];
        Raw raw[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          sv[u] = neg_inf;
          raw[u] = Raw{};
          if (u < left) {
            sv[u] = __ldg(sq + (WIDE ? u * p.s_state : int64_t(u * int(p.s_state))));
            const int64_t off = WIDE ? u * p.v_state : int64_t(u * int(p.v_state));
            if (active) raw[u] = __ldg(reinterpret_cast<const Raw*>(vq + off));
          }
        }
        sq += kBatch * p.s_state;
        vq += kBatch * p.v_state;
        float mb = m;
#pragma unroll
        for (int u = 0; u < kBatch; ++u) mb = nan_max(mb, sv[u]);
        if (mb == neg_inf) continue;  // every state so far is empty
        const float scale = expf(m - mb);  // 0 when m = -inf (then d and acc are 0 too)
        d *= scale;
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] *= scale;
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (sv[u] == neg_inf) continue;  // empty (or absent) state: its v is ignored
          const float w = expf(sv[u] - mb);
          float f[VEC];
          unpack<T, VEC>(raw[u], f);
          d += w;
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] = fmaf(w, f[k], acc[k]);
        }
        m = mb;
      }
    }
    // Combine the P partitions of each pair (lanes lane_g + j * G of one sub-warp).
    for (int off = group; off < (group << p.log2_parts); off <<= 1) {
      const float m2 = __shfl_xor_sync(kFullMask, m, off);
      const float d2 = __shfl_xor_sync(kFullMask, d, off);
      float acc2[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc2[k] = __shfl_xor_sync(kFullMask, acc[k], off);
      const float mm = nan_max(m, m2);
      if (mm != neg_inf) {
        const float f1 = expf(m - mm), f2 = expf(m2 - mm);  // 0 for an empty side
        d = d * f1 + d2 * f2;
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] = acc[k] * f1 + acc2[k] * f2;
      }
      m = mm;
    }
    if (valid && part == 0) {
      if (active) {
        const float inv = m == neg_inf ? 0.f : 1.f / d;
        float out[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) out[k] = m == neg_inf ? 0.f : acc[k] * inv;
        T* vo = static_cast<T*>(p.vo) + row * p.vo_row + head * p.vo_head;
        store_pack<T, VEC>(vo + c * (VEC > 1 ? VEC : p.vo_dim), out);
      }
      if (it == 0 && lane_g == 0) {
        p.so[row * p.so_row + head * p.so_head] = m == neg_inf ? neg_inf : m + logf(d);
      }
    }
  }
}

// ---------------------------------------------------------------- host side

// Widest vector (in elements: 16, 8 or 4 bytes, else 1) that every v tensor's rows allow:
// head_dim a multiple of it, a contiguous last dimension, and every row start aligned.
int vector_width(int32_t dtype, int64_t head_dim, std::initializer_list<const fi_tensor_desc*> vs) {
  const int size = itemsize(dtype);
  for (const int bytes : {16, 8, 4}) {
    const int vec = bytes / size;
    if (vec < 2 || head_dim % vec != 0) continue;
    bool ok = true;
    for (const fi_tensor_desc* t : vs) {
      ok = ok && reinterpret_cast<uintptr_t>(t->data) % bytes == 0;
      const int last = t->ndim - 1;
      ok = ok && (t->shape[last] <= 1 || t->strides[last] == 1);
      for (int d = 0; d < last; ++d) ok = ok && (t->shape[d] <= 1 || (t->strides[d] * size) % bytes == 0);
    }
    if (ok) return vec;
  }
  return 1;
}

int ceil_log2(int64_t n) {
  int k = 0;
  while ((int64_t(1) << k) < n) ++k;
  return k;
}

// Blocks for a grid-stride loop over `items` work items of 2^log2_lanes_per_item lanes each.
unsigned grid_for(int64_t items, int log2_lanes_per_item) {
  const int64_t items_per_block = int64_t(kThreads) >> log2_lanes_per_item;
  const int64_t blocks = (items + items_per_block - 1) / items_per_block;
  return unsigned(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

template <typename F>
void with_dtype(int32_t dtype, F&& f) {
  switch (dtype) {
    case FI_FLOAT32: return f(float{});
    case FI_FLOAT16: return f(__half{});
    case FI_BFLOAT16: return f(__nv_bfloat16{});
    default: fail(FI_ERR_UNSUPPORTED, "cascade: dtype ", dtype_name(dtype), " is not instantiated");
  }
}

template <typename T, typename F>
void with_vec(int vec, F&& f) {
  switch (vec * int(sizeof(T))) {
    case 16: return f(std::integral_constant<int, 16 / int(sizeof(T))>{});
    case 8: return f(std::integral_constant<int, 8 / int(sizeof(T))>{});
    case 4: return f(std::integral_constant<int, 4 / int(sizeof(T))>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

}  // namespace

void merge_state_cuda(const fi_tensor_desc& v_a, const fi_tensor_desc& s_a, const fi_tensor_desc& v_b,
                      const fi_tensor_desc& s_b, const fi_tensor_desc& v_out,
                      const fi_tensor_desc& s_out, const fi_tensor_desc* mask, void* stream) {
  MergeStateParams p{};
  p.va = v_a.data;
  p.vb = v_b.data;
  p.vo = v_out.data;
  p.sa = static_cast<const float*>(s_a.data);
  p.sb = static_cast<const float*>(s_b.data);
  p.so = static_cast<float*>(s_out.data);
  p.mask = mask ? static_cast<const uint8_t*>(mask->data) : nullptr;
  p.mask_stride = mask ? mask->strides[0] : 0;
  p.va_row = v_a.strides[0], p.va_head = v_a.strides[1], p.va_dim = v_a.strides[2];
  p.vb_row = v_b.strides[0], p.vb_head = v_b.strides[1], p.vb_dim = v_b.strides[2];
  p.vo_row = v_out.strides[0], p.vo_head = v_out.strides[1], p.vo_dim = v_out.strides[2];
  p.sa_row = s_a.strides[0], p.sa_head = s_a.strides[1];
  p.sb_row = s_b.strides[0], p.sb_head = s_b.strides[1];
  p.so_row = s_out.strides[0], p.so_head = s_out.strides[1];
  p.num_heads = v_a.shape[1];
  p.head_dim = v_a.shape[2];
  p.pairs = v_a.shape[0] * p.num_heads;
  const int vec = vector_width(v_a.dtype, p.head_dim, {&v_a, &v_b, &v_out});
  const int64_t chunks = p.head_dim / vec;
  p.log2_group = ceil_log2(chunks < 32 ? chunks : 32);
  const unsigned blocks = grid_for(p.pairs, p.log2_group);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(v_a.dtype, [&](auto t) {
    using T = decltype(t);
    with_vec<T>(vec, [&](auto v) { merge_state_kernel<T, decltype(v)::value><<<blocks, kThreads, 0, s>>>(p); });
  });
  check_launch("cascade merge_state kernel");
}

void merge_states_cuda(const fi_tensor_desc& v, const fi_tensor_desc& s, const fi_tensor_desc& v_out,
                       const fi_tensor_desc& s_out, void* stream) {
  MergeStatesParams p{};
  p.v = v.data;
  p.s = static_cast<const float*>(s.data);
  p.vo = v_out.data;
  p.so = static_cast<float*>(s_out.data);
  p.v_row = v.strides[0], p.v_state = v.strides[1], p.v_head = v.strides[2], p.v_dim = v.strides[3];
  p.s_row = s.strides[0], p.s_state = s.strides[1], p.s_head = s.strides[2];
  p.vo_row = v_out.strides[0], p.vo_head = v_out.strides[1], p.vo_dim = v_out.strides[2];
  p.so_row = s_out.strides[0], p.so_head = s_out.strides[1];
  p.num_states = v.shape[1];
  p.num_heads = v.shape[2];
  p.head_dim = v.shape[3];
  p.pairs = v.shape[0] * p.num_heads;
  if (p.num_states > INT32_MAX) fail(FI_ERR_UNSUPPORTED, "v: ", p.num_states, " states is beyond the CUDA kernel's 2^31 - 1");
  // With no states v holds no elements (its pointer may be null): vector width is moot.
  const int vec = p.num_states > 0 ? vector_width(v.dtype, p.head_dim, {&v, &v_out}) : 1;
  const int64_t chunks = p.head_dim / vec;
  p.log2_group = ceil_log2(chunks < 32 ? chunks : 32);
  // Enough partitions that each loads at most one batch of states, within one warp.
  const int batch = batch_states(vec * itemsize(v.dtype));
  const int log2_parts_wanted = ceil_log2((p.num_states + batch - 1) / batch);
  p.log2_parts = log2_parts_wanted < 5 - p.log2_group ? log2_parts_wanted : 5 - p.log2_group;
  const int64_t iters = chunks > (int64_t(1) << p.log2_group) ? (chunks + (int64_t(1) << p.log2_group) - 1) >> p.log2_group : 1;
  const unsigned blocks = grid_for(p.pairs * iters, p.log2_group + p.log2_parts);
  const int64_t widest = p.v_state > p.s_state ? p.v_state : p.s_state;
  const bool wide = int64_t(batch) * widest > INT32_MAX;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  with_dtype(v.dtype, [&](auto t) {
    using T = decltype(t);
    with_vec<T>(vec, [&](auto w) {
      constexpr int VEC = decltype(w)::value;
      if (wide) merge_states_kernel<T, VEC, true><<<blocks, kThreads, 0, st>>>(p);
      else merge_states_kernel<T, VEC, false><<<blocks, kThreads, 0, st>>>(p);
    });
  });
  check_launch("cascade merge_states kernel");
}

}  // namespace fi

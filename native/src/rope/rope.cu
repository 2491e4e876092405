// CUDA kernels of the rope family. The general kernel: one thread per (token, head, pair) of q
// and k together, grid-stride (any dtype, strides, rotary_dim); the fast path is described at
// rope_vec_kernel. Pairs below rotary_dim / 2 rotate, the others copy two of the dimensions past
// rotary_dim. Rotation math in float32; the angle position * freq is formed and reduced modulo
// 2 pi in double (positions reach 1e5 and more), then sincosf takes the reduced float angle.
// The frequency table (computed on the host in double) is copied from the kernel parameters to
// shared memory per block. The indptr form finds each token's request by binary search, so any
// indptr values keep every write inside rows [0, nnz).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/convert.cuh"
#include "../common/launch.cuh"
#include "../common/runtime.h"
#include "rope.h"

namespace fi {
namespace {

__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
}

__device__ int64_t position_of(const RopeArgs& a, int64_t t) {
  const bool is64 = a.index_dtype == FI_INT64;
  if (a.pos_ids) return load_index(a.pos_ids, is64, t * a.pos_stride);
  int64_t lo = 0, hi = a.batch - 1;  // the last request b with indptr[b] <= t
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (load_index(a.indptr, is64, mid * a.indptr_stride) <= t) lo = mid; else hi = mid - 1;
  }
  return load_index(a.offsets, is64, lo * a.offsets_stride) + t - load_index(a.indptr, is64, lo * a.indptr_stride);
}

// cos and sin of pair p (p < rotary_dim / 2) at position pos; NaN for a cos/sin-cache position
// outside [0, max_pos). freq: the frequency table in shared memory (unused with a cache).
__device__ __forceinline__ void rope_cos_sin(const RopeArgs& a, const double* freq, int64_t pos, int64_t p, float& c,
                                             float& s) {
  if (a.cos_sin) {
    if (pos < 0 || pos >= a.max_pos) {
      c = s = __int_as_float(0x7fc00000);
    } else {
      const float* row = a.cos_sin + pos * a.cos_sin_stride;
      c = row[p];
      s = row[a.rotary_dim / 2 + p];
    }
    return;
  }
  const double ang = double(pos) * freq[p];
  const double two_pi = 6.283185307179586476925286766559;
  const double turns = rint(ang * (1.0 / two_pi));
  sincosf(float(fma(-turns, two_pi, ang)), &s, &c);
}

// Input and output rows of token t, head hh of q and k together (q's heads first).
template <typename T>
__device__ __forceinline__ void head_rows(const RopeArgs& a, int64_t t, int64_t hh, const T*& x, T*& y) {
  const bool is_q = hh < a.q.heads;
  const RopeTensor& in = is_q ? a.q : a.k;
  const RopeTensor& out = is_q ? a.q_out : a.k_out;
  const int64_t h = is_q ? hh : hh - a.q.heads;
  x = static_cast<const T*>(in.data) + t * in.s_tok + h * in.s_head;
  y = static_cast<T*>(out.data) + t * out.s_tok + h * out.s_head;
}

// I: the integer type of the (token, head, pair) decomposition: uint32_t when the total fits
// (cheap division), else int64_t.
template <typename T, typename I>
__global__ void __launch_bounds__(kElementwiseThreads) rope_kernel(const RopeArgs a) {
  __shared__ double freq[kRopeMaxHalf];
  const int64_t half = a.rotary_dim / 2;
  if (!a.cos_sin) {
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) freq[i] = a.freq[i];
  }
  __syncthreads();
  const int64_t pairs = a.head_dim / 2, heads = a.q.heads + a.k.heads;
  const int64_t total = a.nnz * heads * pairs;
  FI_GRID_STRIDE_LOOP(n, total) {
    const I ni = I(n), pi = I(pairs), hi = I(heads);
    const int64_t p = int64_t(ni % pi);
    const int64_t hh = int64_t((ni / pi) % hi);
    const int64_t t = int64_t(ni / (pi * hi));
    const T* x;
    T* y;
    head_rows(a, t, hh, x, y);
    if (p >= half) {  // past rotary_dim: copy two dimensions
      const int64_t d = a.rotary_dim + 2 * (p - half);
      const T v0 = x[d], v1 = x[d + 1];
      y[d] = v0;
      y[d + 1] = v1;
      continue;
    }
    const int64_t da = a.interleave ? 2 * p : p, db = a.interleave ? 2 * p + 1 : p + half;
    const int64_t pos = position_of(a, t);
    float c, s;
    rope_cos_sin(a, freq, pos, p, c, s);
    const float xa = to_float(x[da]), xb = to_float(x[db]);
    y[da] = from_float<T>(xa * c - xb * s);
    y[db] = from_float<T>(xb * c + xa * s);
  }
}

// 16-byte vectors of 16-bit T.
template <typename T>
union Vec8 {
  uint4 raw;
  T e[8];
};

// The fast path (16-bit dtypes, head dims contiguous, rows 16-byte aligned, rotary_dim a
// multiple of 16): one block per token (grid-stride). The block computes the token's cos/sin
// once into shared memory, then its threads rotate every head of q and k with 16-byte loads:
// an item is 8 pairs (dims [8i, 8i+8) with [half+8i, half+8i+8) non-interleaved, or 4 adjacent
// pairs interleaved) or, past rotary_dim, 8 dims copied when the output is not the input.
// This shares the trigonometry among all heads of a token (40 for Llama-3-8B) instead of
// recomputing it per head and pair.
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) rope_vec_kernel(const RopeArgs a) {
  __shared__ double freq[kRopeMaxHalf];
  __shared__ float cs[2][kRopeMaxHalf];
  const int half = int(a.rotary_dim / 2);
  if (!a.cos_sin) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) freq[i] = a.freq[i];
  }
  const int rot_items = a.interleave ? half / 4 : half / 8;
  const bool copy_tail = a.q.data != a.q_out.data || a.k.data != a.k_out.data;
  const int tail_items = copy_tail ? int(a.head_dim - a.rotary_dim) / 8 : 0;
  const int per_head = rot_items + tail_items;
  const int heads = int(a.q.heads + a.k.heads);
  for (int64_t t = blockIdx.x; t < a.nnz; t += gridDim.x) {
    __syncthreads();  // freq is loaded; the previous token's cs readers are done
    const int64_t pos = position_of(a, t);
    for (int p = threadIdx.x; p < half; p += blockDim.x) rope_cos_sin(a, freq, pos, p, cs[0][p], cs[1][p]);
    __syncthreads();
    for (int it = threadIdx.x; it < heads * per_head; it += blockDim.x) {
      const int hh = it / per_head, i = it - hh * per_head;
      const T* x;
      T* y;
      head_rows(a, t, hh, x, y);
      if (i >= rot_items) {  // past rotary_dim
        const int64_t d = a.rotary_dim + 8 * int64_t(i - rot_items);
        *reinterpret_cast<uint4*>(y + d) = *reinterpret_cast<const uint4*>(x + d);
      } else if (a.interleave) {
        Vec8<T> v;
        v.raw = *reinterpret_cast<const uint4*>(x + 8 * i);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float c = cs[0][4 * i + k], sn = cs[1][4 * i + k];
          const float xa = to_float(v.e[2 * k]), xb = to_float(v.e[2 * k + 1]);
          v.e[2 * k] = from_float<T>(xa * c - xb * sn);
          v.e[2 * k + 1] = from_float<T>(xb * c + xa * sn);
        }
        *reinterpret_cast<uint4*>(y + 8 * i) = v.raw;
      } else {
        Vec8<T> va, vb;
        va.raw = *reinterpret_cast<const uint4*>(x + 8 * i);
        vb.raw = *reinterpret_cast<const uint4*>(x + half + 8 * i);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float c = cs[0][8 * i + k], sn = cs[1][8 * i + k];
          const float xa = to_float(va.e[k]), xb = to_float(vb.e[k]);
          va.e[k] = from_float<T>(xa * c - xb * sn);
          vb.e[k] = from_float<T>(xb * c + xa * sn);
        }
        *reinterpret_cast<uint4*>(y + 8 * i) = va.raw;
        *reinterpret_cast<uint4*>(y + half + 8 * i) = vb.raw;
      }
    }
  }
}

bool rope_rows_aligned(const RopeTensor& t, int64_t item) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && (t.s_tok * item) % 16 == 0 && (t.s_head * item) % 16 == 0;
}

template <typename T>
void launch(const RopeArgs& a, cudaStream_t stream) {
  const int64_t total = a.nnz * (a.q.heads + a.k.heads) * (a.head_dim / 2);
  if (total == 0) return;
  constexpr int64_t item = sizeof(T);
  if (item == 2 && a.rotary_dim % 16 == 0 && a.head_dim % 8 == 0 && rope_rows_aligned(a.q, item) &&
      rope_rows_aligned(a.k, item) && rope_rows_aligned(a.q_out, item) && rope_rows_aligned(a.k_out, item)) {
    const int64_t cap = int64_t(1) << 16;
    rope_vec_kernel<T><<<unsigned(a.nnz < cap ? a.nnz : cap), kElementwiseThreads, 0, stream>>>(a);
    check_launch("rope");
    return;
  }
  if (total < (int64_t(1) << 31)) {
    rope_kernel<T, uint32_t><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(a);
  } else {
    rope_kernel<T, int64_t><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(a);
  }
  check_launch("rope");
}

}  // namespace

void rope_cuda(const RopeArgs& a, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case FI_FLOAT32: return launch<float>(a, s);
    case FI_FLOAT16: return launch<__half>(a, s);
    case FI_BFLOAT16: return launch<__nv_bfloat16>(a, s);
    default: fail(FI_ERR_UNSUPPORTED, "q: dtype ", dtype_name(a.dtype), " not instantiated");
  }
}

}  // namespace fi

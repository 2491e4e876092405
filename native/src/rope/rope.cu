// CUDA kernel of the rope family: one thread per (token, head, pair) of q and k together,
// grid-stride. Pairs below rotary_dim / 2 rotate, the others copy two of the dimensions past
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
    const bool is_q = hh < a.q.heads;
    const RopeTensor& in = is_q ? a.q : a.k;
    const RopeTensor& out = is_q ? a.q_out : a.k_out;
    const int64_t h = is_q ? hh : hh - a.q.heads;
    const T* x = static_cast<const T*>(in.data) + t * in.s_tok + h * in.s_head;
    T* y = static_cast<T*>(out.data) + t * out.s_tok + h * out.s_head;
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
    if (a.cos_sin) {
      if (pos < 0 || pos >= a.max_pos) {
        c = __int_as_float(0x7fc00000);
        s = c;
      } else {
        const float* row = a.cos_sin + pos * a.cos_sin_stride;
        c = row[p];
        s = row[half + p];
      }
    } else {
      const double ang = double(pos) * freq[p];
      const double two_pi = 6.283185307179586476925286766559;
      const double turns = rint(ang * (1.0 / two_pi));
      const double r = fma(-turns, two_pi, ang);
      sincosf(float(r), &s, &c);
    }
    const float xa = to_float(x[da]), xb = to_float(x[db]);
    y[da] = from_float<T>(xa * c - xb * s);
    y[db] = from_float<T>(xb * c + xa * s);
  }
}

template <typename T>
void launch(const RopeArgs& a, cudaStream_t stream) {
  const int64_t total = a.nnz * (a.q.heads + a.k.heads) * (a.head_dim / 2);
  if (total == 0) return;
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

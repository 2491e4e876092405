// CUDA kernels of the norm family. Memory-bound: each row is read once and written once.
//
// One block per row (a block-uniform grid-stride loop over rows). A row of hidden elements is
// split into vectors of VEC elements (16 bytes when every pointer is 16-byte aligned and
// hidden and every row stride are multiples of VEC, else VEC = 1); thread t takes vectors
// t, t + blockDim, ... When the row fits (at most kCached vectors a thread), it stays in float32
// registers between the passes (CACHED); otherwise each pass reads it again from global memory
// (L2). Sums are float32: warp xor shuffles, then one value per warp through shared memory.
// Every thread of the block reaches every __syncthreads (the row loop and the vector loops are
// block-uniform or guard only loads and stores).
//
// In place (out == input, and the fused add's input and residual): each element is read and
// written by the same thread, and every read of a row happens before its block's reduction
// barrier, so no thread overwrites an element another thread has yet to read.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/convert.cuh"
#include "../common/runtime.h"
#include "norm.h"

namespace fi {
namespace {

constexpr int kCached = 4;        // vectors a thread keeps in registers
constexpr int kMaxThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

enum class Op { kRms, kFusedAdd, kLayer };

// 16 bytes of T.
template <typename T>
union Chunk {
  static constexpr int kN = 16 / int(sizeof(T));
  uint4 raw;
  T e[kN];
};

// Loads N elements at p as float: 16-byte loads when N elements span a multiple of 16 bytes
// (p is then 16-byte aligned, checked by the launcher), else one element at a time.
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[N]) {
  constexpr int bytes = N * int(sizeof(T));
  if constexpr (bytes % 16 == 0) {
    constexpr int per = Chunk<T>::kN;
#pragma unroll
    for (int c = 0; c < bytes / 16; ++c) {
      Chunk<T> u;
      u.raw = reinterpret_cast<const uint4*>(p)[c];
#pragma unroll
      for (int k = 0; k < per; ++k) out[c * per + k] = to_float(u.e[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = to_float(p[k]);
  }
}

// Rounds N floats to T and stores them at p (same load rules); `v` gets the rounded values.
template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, float (&v)[N]) {
  constexpr int bytes = N * int(sizeof(T));
  if constexpr (bytes % 16 == 0) {
    constexpr int per = Chunk<T>::kN;
#pragma unroll
    for (int c = 0; c < bytes / 16; ++c) {
      Chunk<T> u;
#pragma unroll
      for (int k = 0; k < per; ++k) {
        u.e[k] = from_float<T>(v[c * per + k]);
        v[c * per + k] = to_float(u.e[k]);
      }
      reinterpret_cast<uint4*>(p)[c] = u.raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const T t = from_float<T>(v[k]);
      p[k] = t;
      v[k] = to_float(t);
    }
  }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// smem: 32 floats. The first barrier keeps a previous call's readers ahead of this call's writers.
__device__ __forceinline__ float block_sum(float v, float* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float t = lane < warps ? smem[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(kFullMask, t, o);
  return t;
}

struct Params {
  const void* in;
  void* out;
  void* res;
  const void* w;  // weight or gamma
  const void* b;  // beta
  int64_t in_stride, out_stride, res_stride;
  int64_t rows;
  int64_t nvec;  // hidden / VEC
  float inv_hidden;
  float eps;
  bool gemma;
};

// The final value of one element: x already normalized by the row's statistics.
template <Op OP>
__device__ __forceinline__ float finish(const Params& p, float x, float w, float b) {
  if constexpr (OP == Op::kLayer) return fmaf(x, w, b);
  else return x * (p.gemma ? 1.f + w : w);
}

template <Op OP, typename T, typename W, int VEC, bool CACHED>
__global__ void __launch_bounds__(kMaxThreads) norm_kernel(const Params p) {
  __shared__ float smem[32];
  const int64_t nvec = p.nvec;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const W* wv = static_cast<const W*>(p.w);
  const W* bv = static_cast<const W*>(p.b);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* in = static_cast<const T*>(p.in) + row * p.in_stride;
    T* out = static_cast<T*>(p.out) + row * p.out_stride;
    T* res = OP == Op::kFusedAdd ? static_cast<T*>(p.res) + row * p.res_stride : nullptr;
    if constexpr (CACHED) {
      float x[kCached][VEC];
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < kCached; ++j) {
        const int64_t v = tid + int64_t(j) * nthreads;
#pragma unroll
        for (int k = 0; k < VEC; ++k) x[j][k] = 0.f;
        if (v < nvec) {
          load_vec<T, VEC>(in + v * VEC, x[j]);
          if constexpr (OP == Op::kFusedAdd) {
            float r[VEC];
            load_vec<T, VEC>(res + v * VEC, r);
#pragma unroll
            for (int k = 0; k < VEC; ++k) x[j][k] += r[k];
            store_vec<T, VEC>(res + v * VEC, x[j]);  // x[j] becomes the rounded sum
          }
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += OP == Op::kLayer ? x[j][k] : x[j][k] * x[j][k];
      }
      float shift = 0.f, inv;
      if constexpr (OP == Op::kLayer) {
        shift = block_sum(s, smem) * p.inv_hidden;  // the mean
        float q = 0.f;
#pragma unroll
        for (int j = 0; j < kCached; ++j) {
          if (tid + int64_t(j) * nthreads < nvec) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              const float d = x[j][k] - shift;
              q = fmaf(d, d, q);
            }
          }
        }
        inv = rsqrtf(block_sum(q, smem) * p.inv_hidden + p.eps);
      } else {
        inv = rsqrtf(block_sum(s, smem) * p.inv_hidden + p.eps);
      }
#pragma unroll
      for (int j = 0; j < kCached; ++j) {
        const int64_t v = tid + int64_t(j) * nthreads;
        if (v < nvec) {
          float w[VEC], b[VEC], y[VEC];
          load_vec<W, VEC>(wv + v * VEC, w);
          if constexpr (OP == Op::kLayer) load_vec<W, VEC>(bv + v * VEC, b);
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            y[k] = finish<OP>(p, (x[j][k] - shift) * inv, w[k], OP == Op::kLayer ? b[k] : 0.f);
          }
          store_vec<T, VEC>(out + v * VEC, y);
        }
      }
    } else {
      // Pass 1: sum (layernorm) or sum of squares; the fused add writes the rounded residual.
      float s = 0.f;
      for (int64_t v = tid; v < nvec; v += nthreads) {
        float x[VEC];
        load_vec<T, VEC>(in + v * VEC, x);
        if constexpr (OP == Op::kFusedAdd) {
          float r[VEC];
          load_vec<T, VEC>(res + v * VEC, r);
#pragma unroll
          for (int k = 0; k < VEC; ++k) x[k] += r[k];
          store_vec<T, VEC>(res + v * VEC, x);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += OP == Op::kLayer ? x[k] : x[k] * x[k];
      }
      float shift = 0.f, inv;
      if constexpr (OP == Op::kLayer) {
        shift = block_sum(s, smem) * p.inv_hidden;
        float q = 0.f;
        for (int64_t v = tid; v < nvec; v += nthreads) {
          float x[VEC];
          load_vec<T, VEC>(in + v * VEC, x);
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const float d = x[k] - shift;
            q = fmaf(d, d, q);
          }
        }
        inv = rsqrtf(block_sum(q, smem) * p.inv_hidden + p.eps);
      } else {
        inv = rsqrtf(block_sum(s, smem) * p.inv_hidden + p.eps);
      }
      // Pass 2 (3): normalize; the fused add reads back its own rounded residual.
      const T* src = OP == Op::kFusedAdd ? res : in;
      for (int64_t v = tid; v < nvec; v += nthreads) {
        float x[VEC], w[VEC], b[VEC], y[VEC];
        load_vec<T, VEC>(src + v * VEC, x);
        load_vec<W, VEC>(wv + v * VEC, w);
        if constexpr (OP == Op::kLayer) load_vec<W, VEC>(bv + v * VEC, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          y[k] = finish<OP>(p, (x[k] - shift) * inv, w[k], OP == Op::kLayer ? b[k] : 0.f);
        }
        store_vec<T, VEC>(out + v * VEC, y);
      }
    }
    // The next row's first block_sum starts with a barrier, so smem reuse is safe.
  }
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename F>
void dispatch_dtype(int32_t dtype, F&& f) {
  switch (dtype) {
    case FI_FLOAT32: return f(float{});
    case FI_FLOAT16: return f(__half{});
    case FI_BFLOAT16: return f(__nv_bfloat16{});
    default: fail(FI_ERR_UNSUPPORTED, "norm: dtype ", dtype_name(dtype), " is not instantiated");
  }
}

template <Op OP, typename T, typename W>
void launch(const NormArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / int(sizeof(T));
  bool vec = a.hidden % kVec == 0 && aligned16(a.input.data) && aligned16(a.out.data) && aligned16(a.weight) &&
             a.input.stride % kVec == 0 && a.out.stride % kVec == 0;
  if (OP == Op::kFusedAdd) vec = vec && aligned16(a.residual.data) && a.residual.stride % kVec == 0;
  if (OP == Op::kLayer) vec = vec && aligned16(a.beta);
  const int vsize = vec ? kVec : 1;
  const int64_t nvec = a.hidden / vsize;
  const bool cached = nvec <= int64_t(kMaxThreads) * kCached;
  int64_t threads = cached ? (nvec + kCached - 1) / kCached : kMaxThreads;
  threads = (threads + 31) / 32 * 32;
  if (threads > kMaxThreads) threads = kMaxThreads;
  const int64_t max_grid = int64_t(1) << 20;
  const unsigned grid = unsigned(a.rows < max_grid ? a.rows : max_grid);
  Params p{};
  p.in = a.input.data;
  p.out = a.out.data;
  p.res = a.residual.data;
  p.w = a.weight;
  p.b = a.beta;
  p.in_stride = a.input.stride;
  p.out_stride = a.out.stride;
  p.res_stride = a.residual.stride;
  p.rows = a.rows;
  p.nvec = nvec;
  p.inv_hidden = float(1.0 / double(a.hidden));
  p.eps = float(a.eps);
  p.gemma = a.gemma;
  const unsigned block = unsigned(threads);
  if (vec && cached) norm_kernel<OP, T, W, kVec, true><<<grid, block, 0, stream>>>(p);
  else if (vec) norm_kernel<OP, T, W, kVec, false><<<grid, block, 0, stream>>>(p);
  else if (cached) norm_kernel<OP, T, W, 1, true><<<grid, block, 0, stream>>>(p);
  else norm_kernel<OP, T, W, 1, false><<<grid, block, 0, stream>>>(p);
  check_launch("norm kernel launch");
}

}  // namespace

void rmsnorm_cuda(const NormArgs& a, void* stream) {
  dispatch_dtype(a.dtype, [&](auto t) {
    using T = decltype(t);
    launch<Op::kRms, T, T>(a, static_cast<cudaStream_t>(stream));
  });
}

void fused_add_rmsnorm_cuda(const NormArgs& a, void* stream) {
  dispatch_dtype(a.dtype, [&](auto t) {
    using T = decltype(t);
    launch<Op::kFusedAdd, T, T>(a, static_cast<cudaStream_t>(stream));
  });
}

void layernorm_cuda(const NormArgs& a, void* stream) {
  dispatch_dtype(a.dtype, [&](auto t) {
    using T = decltype(t);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (a.weight_dtype == FI_FLOAT32) return launch<Op::kLayer, T, float>(a, s);
    if constexpr (!std::is_same_v<T, float>) launch<Op::kLayer, T, T>(a, s);
  });
}

}  // namespace fi

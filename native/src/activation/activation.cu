// CUDA kernels of the activation family: out[r, j] = act(in[r, j]) * in[r, d + j], float32 math.
// Memory-bound. Grid: blockIdx.x walks rows (grid-stride), blockIdx.y tiles the row. When every
// row start of both halves and of out is 16-byte aligned (checked on the host), each thread moves
// kUnroll 16-byte vectors per half per iteration, all loads issued before any arithmetic;
// otherwise one element at a time.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/convert.cuh"
#include "../common/runtime.h"
#include "activation.h"

namespace fi {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;  // 2 x 2 x 16 bytes of loads in flight per thread (128 KB per SM at full occupancy)

template <int KIND>
__device__ __forceinline__ float act(float x) {
  if constexpr (KIND == kActSilu) {
    return x / (1.0f + expf(-x));
  } else if constexpr (KIND == kActGelu) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  } else {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
  }
}

struct Params {
  const void* in;
  void* out;
  Strided in_rows;   // leading dimensions of input (element strides)
  Strided out_rows;  // leading dimensions of out
  int64_t rows;
  int64_t d;
};

template <typename T>
union Vec16 {
  uint4 raw;
  T e[16 / sizeof(T)];
};

// VEC: true when 16-byte vectors are allowed (d % (16 / sizeof(T)) == 0 and aligned rows).
template <typename T, int KIND, bool VEC>
__global__ void __launch_bounds__(kThreads) act_and_mul_kernel(const Params p) {
  const T* __restrict__ in = static_cast<const T*>(p.in);
  T* __restrict__ out = static_cast<T*>(p.out);
  constexpr int N = VEC ? int(16 / sizeof(T)) : 1;
  const int64_t chunks = p.d / N;
  const int64_t tile_step = int64_t(gridDim.y) * kThreads * kUnroll;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T* x = in + strided_offset(p.in_rows, r);
    const T* y = x + p.d;
    T* o = out + strided_offset(p.out_rows, r);
    for (int64_t base = int64_t(blockIdx.y) * kThreads * kUnroll + threadIdx.x; base < chunks; base += tile_step) {
      if constexpr (VEC) {
        Vec16<T> xv[kUnroll], yv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t c = base + int64_t(u) * kThreads;
          if (c < chunks) {
            xv[u].raw = __ldg(reinterpret_cast<const uint4*>(x) + c);
            yv[u].raw = __ldg(reinterpret_cast<const uint4*>(y) + c);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t c = base + int64_t(u) * kThreads;
          if (c < chunks) {
            Vec16<T> ov;
#pragma unroll
            for (int k = 0; k < N; ++k) ov.e[k] = from_float<T>(act<KIND>(to_float(xv[u].e[k])) * to_float(yv[u].e[k]));
            reinterpret_cast<uint4*>(o)[c] = ov.raw;
          }
        }
      } else {
        float xs[kUnroll], ys[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t c = base + int64_t(u) * kThreads;
          xs[u] = c < chunks ? to_float(x[c]) : 0.0f;
          ys[u] = c < chunks ? to_float(y[c]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t c = base + int64_t(u) * kThreads;
          if (c < chunks) o[c] = from_float<T>(act<KIND>(xs[u]) * ys[u]);
        }
      }
    }
  }
}

Strided leading(const fi_tensor_desc& t) {
  Strided s{};
  s.ndim = t.ndim - 1;
  for (int k = 0; k < s.ndim; ++k) {
    s.shape[k] = t.shape[k];
    s.strides[k] = t.strides[k];
  }
  return s;
}

template <typename T, int KIND>
void launch(const Params& p, bool vec, cudaStream_t stream) {
  const int64_t n = vec ? int64_t(16 / sizeof(T)) : 1;
  const int64_t chunks = p.d / n;
  const int64_t per_block = int64_t(kThreads) * kUnroll;
  int64_t tiles = (chunks + per_block - 1) / per_block;
  if (tiles > 64) tiles = 64;
  int64_t row_blocks = p.rows < 65535 * 16 ? p.rows : 65535 * 16;  // grid.x may be up to 2^31 - 1
  const dim3 grid{unsigned(row_blocks), unsigned(tiles), 1u};
  if (vec) {
    act_and_mul_kernel<T, KIND, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    act_and_mul_kernel<T, KIND, false><<<grid, kThreads, 0, stream>>>(p);
  }
  check_launch("act_and_mul");
}

template <typename T>
void launch_kind(ActKind kind, const Params& p, bool vec, cudaStream_t stream) {
  switch (kind) {
    case kActSilu: return launch<T, kActSilu>(p, vec, stream);
    case kActGelu: return launch<T, kActGelu>(p, vec, stream);
    case kActGeluTanh: return launch<T, kActGeluTanh>(p, vec, stream);
  }
}

}  // namespace

void act_and_mul_cuda(ActKind kind, const fi_tensor_desc& input, const fi_tensor_desc& out, void* stream) {
  const int nd = input.ndim;
  Params p;
  p.in = input.data;
  p.out = out.data;
  p.in_rows = leading(input);
  p.out_rows = leading(out);
  p.d = out.shape[nd - 1];
  p.rows = 1;
  for (int k = 0; k < nd - 1; ++k) p.rows *= input.shape[k];
  const int64_t item = itemsize(input.dtype);
  // 16-byte vectors: d a multiple of the vector, every row start (x, y and out) aligned.
  bool vec = (p.d * item) % 16 == 0 && reinterpret_cast<uintptr_t>(input.data) % 16 == 0 &&
             reinterpret_cast<uintptr_t>(out.data) % 16 == 0;
  for (int k = 0; k < nd - 1; ++k) {
    if (input.shape[k] > 1 && (input.strides[k] * item) % 16 != 0) vec = false;
    if (out.shape[k] > 1 && (out.strides[k] * item) % 16 != 0) vec = false;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (input.dtype) {
    case FI_FLOAT32: return launch_kind<float>(kind, p, vec, s);
    case FI_FLOAT16: return launch_kind<__half>(kind, p, vec, s);
    case FI_BFLOAT16: return launch_kind<__nv_bfloat16>(kind, p, vec, s);
    default: fail(FI_ERR_UNSUPPORTED, "input: dtype ", dtype_name(input.dtype), " not instantiated");
  }
}

}  // namespace fi

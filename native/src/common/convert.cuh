// Element conversions for CUDA kernels: float <-> float / float16 / bfloat16 (to 16 bits rounds
// to nearest even, as the library's casts do), pairs and fp8 pairs to float2, and 16-byte vector
// loads/stores converting to and from float. Also the log-domain constants the softmax kernels use.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fi {

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Two 16-bit values packed in a word, to float2.
template <typename T> struct Pair;
template <> struct Pair<__half> {
  static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
    __half2 h;
    memcpy(&h, &bits, 4);
    return __half22float2(h);
  }
};
template <> struct Pair<__nv_bfloat16> {
  static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
    __nv_bfloat162 h;
    memcpy(&h, &bits, 4);
    return __bfloat1622float2(h);
  }
};
template <__nv_fp8_interpretation_t KIND>
__device__ __forceinline__ float2 fp8x2_to_float2(uint16_t bits) {
  const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(bits, KIND);
  __half2 h;
  memcpy(&h, &raw, 4);
  return __half22float2(h);
}

// Converts N elements (N * sizeof(T) a multiple of 16 bytes, 16-byte aligned) to float.
template <typename T, int N>
__device__ __forceinline__ void load_float(const T* src, float (&dst)[N]) {
  constexpr int kWords = N * sizeof(T) / 16;
  uint4 raw[kWords];
#pragma unroll
  for (int i = 0; i < kWords; ++i) raw[i] = reinterpret_cast<const uint4*>(src)[i];
  const uint32_t* w = reinterpret_cast<const uint32_t*>(raw);
  if constexpr (sizeof(T) == 2) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const float2 f = Pair<T>::to_float2(w[i]);
      dst[2 * i] = f.x;
      dst[2 * i + 1] = f.y;
    }
  } else {
    constexpr __nv_fp8_interpretation_t kind = std::is_same_v<T, __nv_fp8_e4m3> ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const float2 f = fp8x2_to_float2<kind>(uint16_t(w[i / 2] >> (16 * (i % 2))));
      dst[2 * i] = f.x;
      dst[2 * i + 1] = f.y;
    }
  }
}

// Stores N floats converted to T (N * sizeof(T) a multiple of 16 bytes, 16-byte aligned).
template <typename T, int N>
__device__ __forceinline__ void store_float(T* dst, const float (&src)[N]) {
  static_assert(N * sizeof(T) % 16 == 0, "vector store");
  constexpr int kWords = N * sizeof(T) / 16;
  uint4 raw[kWords];
  T* e = reinterpret_cast<T*>(raw);
#pragma unroll
  for (int i = 0; i < N; ++i) e[i] = from_float<T>(src[i]);
#pragma unroll
  for (int i = 0; i < kWords; ++i) reinterpret_cast<uint4*>(dst)[i] = raw[i];
}

}  // namespace fi

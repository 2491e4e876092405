// CUDA kernels of the quantization family. packbits: when x is contiguous and 16-byte aligned,
// each thread turns 32 input bytes (two vector loads) into 4 output bytes; otherwise one thread
// per output byte reads its up to 8 elements one by one. segment_packbits first scans the
// segment lengths into indptr_new (one thread: segment counts are batch sizes), then each output
// byte finds its segment by binary search over indptr_new (a thread writes 4 bytes) and, when x is contiguous and 8-byte
// aligned, reads its 8 elements with two aligned 8-byte loads (segments start at any bit).
// Both kernels run in order on one stream.
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/launch.cuh"
#include "../common/runtime.h"
#include "quantization.h"

namespace fi {
namespace {

__device__ __forceinline__ uint8_t pack_byte(const uint8_t* x, int64_t xs, int64_t start, int64_t end, bool little) {
  unsigned b = 0;
  for (int64_t i = start; i < end; ++i) {
    if (x[i * xs] != 0) b |= 1u << (little ? unsigned(i - start) : 7u - unsigned(i - start));
  }
  return uint8_t(b);
}

// Bit k of the result (little) or bit 7 - k (big) is set when byte k of v is nonzero: the high
// bit of each byte of `nonzero` marks a nonzero byte, and the multiply gathers those eight bits
// into the top byte in the wanted order.
__device__ __forceinline__ uint8_t pack_word(uint64_t v, bool little) {
  constexpr uint64_t kLow7 = 0x7F7F7F7F7F7F7F7Full;
  const uint64_t nonzero = ((((v & kLow7) + kLow7) | v) & 0x8080808080808080ull) >> 7;
  return uint8_t((nonzero * (little ? 0x0102040810204080ull : 0x8040201008040201ull)) >> 56);
}

// x contiguous and 16-byte aligned: thread i packs x[32 i, 32 i + 32) into y[4 i, 4 i + 4) with
// two vector loads, and one 4-byte store when y is contiguous and 4-byte aligned.
__global__ void packbits_vec_kernel(const uint8_t* x, int64_t n, uint8_t* y, int64_t ys, int64_t bytes, bool little) {
  const bool wide = ys == 1 && reinterpret_cast<uintptr_t>(y) % 4 == 0;
  FI_GRID_STRIDE_LOOP(i, (bytes + 3) / 4) {
    if (32 * i + 32 <= n) {
      const uint4 u = reinterpret_cast<const uint4*>(x)[2 * i], v = reinterpret_cast<const uint4*>(x)[2 * i + 1];
      const uint32_t packed = uint32_t(pack_word(uint64_t(u.y) << 32 | u.x, little)) |
                              uint32_t(pack_word(uint64_t(u.w) << 32 | u.z, little)) << 8 |
                              uint32_t(pack_word(uint64_t(v.y) << 32 | v.x, little)) << 16 |
                              uint32_t(pack_word(uint64_t(v.w) << 32 | v.z, little)) << 24;
      if (wide) {
        reinterpret_cast<uint32_t*>(y)[i] = packed;
      } else {
        for (int k = 0; k < 4; ++k) y[(4 * i + k) * ys] = uint8_t(packed >> (8 * k));
      }
    } else {  // the tail
      for (int64_t b = 4 * i; b < bytes && b < 4 * i + 4; ++b)
        y[b * ys] = pack_byte(x, 1, 8 * b, 8 * b + 8 < n ? 8 * b + 8 : n, little);
    }
  }
}

// x contiguous and 8-byte aligned: the 8 bytes x[start, start + 8) as a little-endian word, read
// with aligned loads that stay inside x[0, n); bytes at or past `end` read as zero.
__device__ __forceinline__ uint64_t load_bytes8(const uint8_t* x, int64_t n, int64_t start, int64_t end) {
  const int64_t base = start & ~int64_t(7);
  const int shift = int(start - base) * 8;
  uint64_t v;
  if (base + 16 <= n) {
    const uint64_t lo = reinterpret_cast<const uint64_t*>(x + base)[0];
    const uint64_t hi = reinterpret_cast<const uint64_t*>(x + base)[1];
    v = shift == 0 ? lo : (lo >> shift) | (hi << (64 - shift));
  } else {
    v = 0;
    for (int64_t i = start; i < start + 8 && i < n; ++i) v |= uint64_t(x[i]) << (8 * (i - start));
  }
  const int64_t valid = end - start;
  return valid >= 8 ? v : v & ((uint64_t(1) << (8 * valid)) - 1);
}

__global__ void packbits_kernel(const uint8_t* x, int64_t xs, int64_t n, uint8_t* y, int64_t ys, int64_t bytes,
                                bool little) {
  FI_GRID_STRIDE_LOOP(i, bytes) {
    const int64_t end = 8 * i + 8 < n ? 8 * i + 8 : n;
    y[i * ys] = pack_byte(x, xs, 8 * i, end, little);
  }
}

__global__ void segment_scan_kernel(const int32_t* indptr, int64_t is, int32_t* indptr_new, int64_t ns,
                                    int64_t segments) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t o = 0;
  indptr_new[0] = 0;
  for (int64_t s = 0; s < segments; ++s) {
    o += (int64_t(indptr[(s + 1) * is]) - indptr[s * is] + 7) / 8;
    indptr_new[(s + 1) * ns] = int32_t(o);
  }
}

// Each thread writes kSegmentBytes consecutive output bytes: one binary search for the first,
// then a forward walk (segment boundaries are rare among neighbouring bytes).
constexpr int kSegmentBytes = 4;

__global__ void segment_packbits_kernel(const uint8_t* x, int64_t xs, const int32_t* indptr, int64_t is,
                                        const int32_t* indptr_new, int64_t ns, int64_t segments, uint8_t* y,
                                        int64_t ys, int64_t bytes, bool little, int64_t n, bool aligned8) {
  FI_GRID_STRIDE_LOOP(g, (bytes + kSegmentBytes - 1) / kSegmentBytes) {
    const int64_t i0 = g * kSegmentBytes;
    // The last segment s with indptr_new[s] <= i0 (empty segments share their start with the next).
    int64_t lo = 0, hi = segments - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (indptr_new[mid * ns] <= i0) lo = mid; else hi = mid - 1;
    }
    for (int64_t i = i0; i < i0 + kSegmentBytes && i < bytes; ++i) {
      while (lo + 1 < segments && indptr_new[(lo + 1) * ns] <= i) ++lo;
      const int64_t k = i - indptr_new[lo * ns];
      const int64_t start = int64_t(indptr[lo * is]) + 8 * k, end_seg = indptr[(lo + 1) * is];
      const int64_t end = start + 8 < end_seg ? start + 8 : end_seg;
      y[i * ys] = aligned8 ? pack_word(load_bytes8(x, n, start, end), little) : pack_byte(x, xs, start, end, little);
    }
  }
}

}  // namespace

void packbits_cuda(const fi_tensor_desc& x, const fi_tensor_desc& y, bool little, void* stream) {
  const int64_t bytes = y.shape[0];
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint8_t* xp = static_cast<const uint8_t*>(x.data);
  uint8_t* yp = static_cast<uint8_t*>(y.data);
  if ((x.strides[0] == 1 || x.shape[0] <= 1) && reinterpret_cast<uintptr_t>(xp) % 16 == 0) {
    packbits_vec_kernel<<<elementwise_blocks((bytes + 3) / 4), kElementwiseThreads, 0, s>>>(xp, x.shape[0], yp, y.strides[0],
                                                                                          bytes, little);
  } else {
    packbits_kernel<<<elementwise_blocks(bytes), kElementwiseThreads, 0, s>>>(xp, x.strides[0], x.shape[0], yp,
                                                                               y.strides[0], bytes, little);
  }
  check_launch("packbits");
}

void segment_packbits_cuda(const fi_tensor_desc& x, const fi_tensor_desc& indptr, const fi_tensor_desc& indptr_new,
                           const fi_tensor_desc& y, bool little, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t segments = indptr.shape[0] - 1;
  const int32_t* ip = static_cast<const int32_t*>(indptr.data);
  int32_t* ipn = static_cast<int32_t*>(indptr_new.data);
  segment_scan_kernel<<<1, 1, 0, s>>>(ip, indptr.strides[0], ipn, indptr_new.strides[0], segments);
  check_launch("segment_packbits (scan)");
  const int64_t bytes = y.shape[0];
  if (bytes == 0 || segments == 0) return;
  segment_packbits_kernel<<<elementwise_blocks((bytes + kSegmentBytes - 1) / kSegmentBytes), kElementwiseThreads, 0, s>>>(
      static_cast<const uint8_t*>(x.data), x.strides[0], ip, indptr.strides[0], ipn, indptr_new.strides[0], segments,
      static_cast<uint8_t*>(y.data), y.strides[0], bytes, little, x.shape[0],
      (x.strides[0] == 1 || x.shape[0] <= 1) && reinterpret_cast<uintptr_t>(x.data) % 8 == 0);
  check_launch("segment_packbits");
}

}  // namespace fi

// CUDA kernels of the quantization family: one thread per output byte (grid-stride), reading its
// up to 8 input elements. segment_packbits first scans the segment lengths into indptr_new (one
// thread: segment counts are batch sizes), then each output byte finds its segment by binary
// search over indptr_new. Both kernels run in order on one stream.
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

__global__ void segment_packbits_kernel(const uint8_t* x, int64_t xs, const int32_t* indptr, int64_t is,
                                        const int32_t* indptr_new, int64_t ns, int64_t segments, uint8_t* y,
                                        int64_t ys, int64_t bytes, bool little) {
  FI_GRID_STRIDE_LOOP(i, bytes) {
    // The last segment s with indptr_new[s] <= i (empty segments share their start with the next).
    int64_t lo = 0, hi = segments - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (indptr_new[mid * ns] <= i) lo = mid; else hi = mid - 1;
    }
    const int64_t k = i - indptr_new[lo * ns];
    const int64_t start = int64_t(indptr[lo * is]) + 8 * k, end_seg = indptr[(lo + 1) * is];
    const int64_t end = start + 8 < end_seg ? start + 8 : end_seg;
    y[i * ys] = pack_byte(x, xs, start, end, little);
  }
}

}  // namespace

void packbits_cuda(const fi_tensor_desc& x, const fi_tensor_desc& y, bool little, void* stream) {
  const int64_t bytes = y.shape[0];
  packbits_kernel<<<elementwise_blocks(bytes), kElementwiseThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(x.data), x.strides[0], x.shape[0], static_cast<uint8_t*>(y.data), y.strides[0],
      bytes, little);
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
  segment_packbits_kernel<<<elementwise_blocks(bytes), kElementwiseThreads, 0, s>>>(
      static_cast<const uint8_t*>(x.data), x.strides[0], ip, indptr.strides[0], ipn, indptr_new.strides[0], segments,
      static_cast<uint8_t*>(y.data), y.strides[0], bytes, little);
  check_launch("segment_packbits");
}

}  // namespace fi

// CUDA gather_rows: the host indices travel in the kernel's parameters (chunks of kChunk), so the
// launch needs no device buffer and no copy; one block per row, 16-byte vectors where aligned.
#include <algorithm>

#include "../common/runtime.h"
#include "tensor_ops.h"

namespace fi {
namespace {

constexpr int kChunk = 2048;  // 8 KiB of indices per launch, well inside the 32 KiB parameter space

struct Indices {
  int32_t v[kChunk];
};

__global__ void gather_rows_kernel(char* dst, int64_t dst_stride, const char* src, int64_t src_stride, int64_t row_bytes, bool vec16,
                                   const __grid_constant__ Indices idx) {
  char* d = dst + int64_t(blockIdx.x) * dst_stride;
  const char* s = src + int64_t(idx.v[blockIdx.x]) * src_stride;
  if (vec16) {
    for (int64_t b = int64_t(threadIdx.x) * 16; b < row_bytes; b += int64_t(blockDim.x) * 16)
      *reinterpret_cast<uint4*>(d + b) = *reinterpret_cast<const uint4*>(s + b);
  } else {
    for (int64_t b = threadIdx.x; b < row_bytes; b += blockDim.x) d[b] = s[b];
  }
}

}  // namespace

void gather_rows_cuda(const fi_tensor_desc& dst, const fi_tensor_desc& src, const int32_t* indices, int64_t n, void* stream) {
  const int64_t size = itemsize(src.dtype), row_bytes = src.shape[1] * size;
  const int64_t dst_stride = dst.strides[0] * size, src_stride = src.strides[0] * size;
  const bool vec16 = row_bytes % 16 == 0 && dst_stride % 16 == 0 && src_stride % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(dst.data) % 16 == 0 && reinterpret_cast<uintptr_t>(src.data) % 16 == 0;
  for (int64_t first = 0; first < n; first += kChunk) {
    const int count = int(std::min<int64_t>(kChunk, n - first));
    Indices idx;
    for (int i = 0; i < count; ++i) idx.v[i] = indices[first + i];
    gather_rows_kernel<<<count, 128, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<char*>(dst.data) + first * dst_stride, dst_stride,
                                                                            static_cast<const char*>(src.data), src_stride, row_bytes, vec16,
                                                                            idx);
    check_launch("gather_rows kernel");
  }
}

}  // namespace fi

#include "../common/launch.cuh"
#include "../common/runtime.h"
#include "tensor_ops.h"

namespace fi {
namespace {

__global__ void fill_bits_kernel(void* dst, int32_t dtype, Strided dl, uint64_t bits, int64_t n) {
  FI_GRID_STRIDE_LOOP(i, n) { store_bits(dst, dtype, strided_offset(dl, i), bits); }
}

// True when every byte of the element's bit pattern is the same, so cudaMemset can write it.
bool byte_uniform(uint64_t bits, int size, unsigned char* byte) {
  *byte = static_cast<unsigned char>(bits & 0xff);
  for (int k = 1; k < size; ++k)
    if (((bits >> (8 * k)) & 0xff) != *byte) return false;
  return true;
}

}  // namespace

void fill_bits_cuda(const fi_tensor_desc& dst, uint64_t bits, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t n = numel(dst);
  unsigned char byte;
  if (is_contiguous(dst) && byte_uniform(bits, itemsize(dst.dtype), &byte)) {
    cuda_check(cudaMemsetAsync(dst.data, byte, size_t(n) * itemsize(dst.dtype), s), "cudaMemsetAsync");
    return;
  }
  fill_bits_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, s>>>(dst.data, dst.dtype,
                                                                       layout_of(dst), bits, n);
  check_launch("tensor fill kernel");
}

}  // namespace fi

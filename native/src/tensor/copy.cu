#include "../common/launch.cuh"
#include "../common/runtime.h"
#include "tensor_ops.h"

namespace fi {
namespace {

__global__ void cast_contiguous_kernel(void* dst, int32_t dst_dtype, const void* src,
                                       int32_t src_dtype, int64_t n) {
  FI_GRID_STRIDE_LOOP(i, n) { cast_element(dst, dst_dtype, i, src, src_dtype, i); }
}

__global__ void cast_strided_kernel(void* dst, int32_t dst_dtype, Strided dl, const void* src,
                                    int32_t src_dtype, Strided sl, int64_t n) {
  FI_GRID_STRIDE_LOOP(i, n) {
    cast_element(dst, dst_dtype, strided_offset(dl, i), src, src_dtype, strided_offset(sl, i));
  }
}

}  // namespace

void copy_cuda(const fi_tensor_desc& dst, const fi_tensor_desc& src, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t n = numel(dst);
  const bool contiguous = is_contiguous(dst) && is_contiguous(src);
  if (contiguous && dst.dtype == src.dtype) {
    cuda_check(cudaMemcpyAsync(dst.data, src.data, size_t(n) * itemsize(dst.dtype),
                               cudaMemcpyDeviceToDevice, s),
               "cudaMemcpyAsync");
    return;
  }
  const unsigned blocks = elementwise_blocks(n);
  if (contiguous) {
    cast_contiguous_kernel<<<blocks, kElementwiseThreads, 0, s>>>(dst.data, dst.dtype, src.data, src.dtype, n);
  } else {
    cast_strided_kernel<<<blocks, kElementwiseThreads, 0, s>>>(dst.data, dst.dtype, layout_of(dst),
                                                               src.data, src.dtype, layout_of(src), n);
  }
  check_launch("tensor copy kernel");
}

}  // namespace fi

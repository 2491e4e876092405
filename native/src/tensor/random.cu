// Compiled with --fmad=false (see CMakeLists.txt) so the arithmetic matches random_cpu.cpp.
#include "../common/launch.cuh"
#include "../common/philox.h"
#include "../common/runtime.h"
#include "tensor_ops.h"

namespace fi {
namespace {

__global__ void random_kernel(void* dst, int32_t dtype, Strided dl, int32_t distribution,
                              uint64_t seed, uint64_t offset, double a, double b, int64_t n) {
  FI_GRID_STRIDE_LOOP(i, n) {
    const double v = random_value(distribution, seed, offset, uint64_t(i), a, b);
    store_bits(dst, dtype, strided_offset(dl, i), double_to_bits(v, dtype));
  }
}

}  // namespace

void random_cuda(const fi_tensor_desc& dst, int32_t distribution, uint64_t seed, uint64_t offset,
                 double a, double b, void* stream) {
  const int64_t n = numel(dst);
  random_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      dst.data, dst.dtype, layout_of(dst), distribution, seed, offset, a, b, n);
  check_launch("tensor random kernel");
}

}  // namespace fi

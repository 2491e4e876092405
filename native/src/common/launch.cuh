// Launch-shape helpers for simple elementwise kernels.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fi {

constexpr int kElementwiseThreads = 256;

// Grid for a grid-stride loop over n elements: enough blocks to fill the GPU several times,
// never more than the work needs.
inline unsigned elementwise_blocks(int64_t n) {
  const int64_t needed = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  const int64_t cap = int64_t(1) << 16;
  return unsigned(needed < cap ? needed : cap);
}

#define FI_GRID_STRIDE_LOOP(i, n)                                                  \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);        \
       i += int64_t(gridDim.x) * blockDim.x)

}  // namespace fi

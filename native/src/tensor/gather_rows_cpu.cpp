#include <cstring>

#include "../common/runtime.h"  // kCpuParallelWork
#include "tensor_ops.h"

namespace fi {

void gather_rows_cpu(const fi_tensor_desc& dst, const fi_tensor_desc& src, const int32_t* indices, int64_t n) {
  const int64_t size = itemsize(src.dtype), row_bytes = src.shape[1] * size;
#pragma omp parallel for if (n * src.shape[1] > kCpuParallelWork)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(static_cast<char*>(dst.data) + i * dst.strides[0] * size,
                static_cast<const char*>(src.data) + int64_t(indices[i]) * src.strides[0] * size, size_t(row_bytes));
}

}  // namespace fi

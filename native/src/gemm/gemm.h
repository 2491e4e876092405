// Backend launchers of GEMM (FlashInfer's gemm module: fi.gemm, fi.bmm). The extern "C" entry in
// gemm.cpp validates everything and reduces each operand to element strides of its logical
// matrix (a transposed operand is the same memory with its row and column strides swapped);
// launchers assume valid, non-empty input.
#pragma once
#include <cstdint>

#include "../common/tensor_desc.h"

namespace fi {

// A batch of matrices: element (b, r, c) at data + b * batch + r * row + c * col (in elements).
struct GemmMatrix {
  void* data;
  int64_t batch, row, col;
};

struct GemmArgs {
  int64_t batch, m, n, k;
  int32_t dtype;      // a (and b, but for float8 where b may be the other float8 kind)
  int32_t b_dtype;
  int32_t out_dtype;  // a's dtype or float32; for float8 inputs bfloat16, float16 or float32
  GemmMatrix a;       // op(a): [batch, m, k]
  GemmMatrix b;       // op(b): [batch, k, n]
  GemmMatrix out;     // [batch, m, n]
  double alpha, beta;  // out = alpha * op(a) op(b) + beta * out (beta 0: out is not read)
};

void gemm_cpu(const GemmArgs& a);
#ifdef FI_WITH_CUDA
// cuBLASLt, loaded at run time (gemm_cuda.cpp); `device` is current.
void gemm_cuda(const GemmArgs& a, int32_t device, void* stream);
#endif

}  // namespace fi

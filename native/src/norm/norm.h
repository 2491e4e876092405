// Backend launchers of the norm family (RMSNorm, fused add + RMSNorm, Gemma variants,
// LayerNorm). The extern "C" entries in norm.cpp validate everything and collapse each tensor
// to rows (a pointer, a row stride in elements, contiguous last dimension); launchers assume
// valid, non-empty input.
#pragma once
#include <cstdint>

#include "../common/tensor_desc.h"

namespace fi {

// One tensor seen as `rows` rows of `hidden` contiguous elements, row r at data + r * stride.
struct NormRows {
  void* data;
  int64_t stride;  // in elements
};

struct NormArgs {
  int64_t rows, hidden;
  int32_t dtype;         // input / out / residual dtype
  int32_t weight_dtype;  // weight (rmsnorm) or gamma and beta (layernorm)
  double eps;
  bool gemma;            // rmsnorm: scale by 1 + weight
  NormRows input, out, residual;  // residual: fused add only
  const void* weight;             // rmsnorm weight or layernorm gamma
  const void* beta;               // layernorm only
};

void rmsnorm_cpu(const NormArgs& a);
void fused_add_rmsnorm_cpu(const NormArgs& a);
void layernorm_cpu(const NormArgs& a);

#ifdef FI_WITH_CUDA
void rmsnorm_cuda(const NormArgs& a, void* stream);
void fused_add_rmsnorm_cuda(const NormArgs& a, void* stream);
void layernorm_cuda(const NormArgs& a, void* stream);
#endif

}  // namespace fi

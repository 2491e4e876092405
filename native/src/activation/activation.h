// Backend launchers of the activation family (fused gated activations: silu/gelu/gelu-tanh and
// multiply). The extern "C" entries in activation.cpp validate everything; launchers assume
// valid, non-empty input.
#pragma once
#include "../common/tensor_desc.h"

namespace fi {

// Which activation is applied to the first half of the last dimension.
enum ActKind : int32_t { kActSilu = 0, kActGelu = 1, kActGeluTanh = 2 };

// input [..., 2*d], out [..., d] (one dtype: float16/bfloat16/float32), last dims contiguous.
void act_and_mul_cpu(ActKind kind, const fi_tensor_desc& input, const fi_tensor_desc& out);

#ifdef FI_WITH_CUDA
void act_and_mul_cuda(ActKind kind, const fi_tensor_desc& input, const fi_tensor_desc& out, void* stream);
#endif

}  // namespace fi

// Backend launchers of the cascade family (merging partial attention states). The extern "C"
// entries in cascade.cpp validate everything, then call the CPU or CUDA launcher; launchers
// assume valid, non-empty input.
#pragma once
#include "../common/tensor_desc.h"

namespace fi {

// v_*: [seq_len, num_heads, head_dim] (float16/bfloat16/float32, one dtype), s_*: [seq_len,
// num_heads] float32, mask: null or bool/uint8 [seq_len]. The outputs may be one input pair.
void merge_state_cpu(const fi_tensor_desc& v_a, const fi_tensor_desc& s_a, const fi_tensor_desc& v_b,
                     const fi_tensor_desc& s_b, const fi_tensor_desc& v_out,
                     const fi_tensor_desc& s_out, const fi_tensor_desc* mask);
// v: [seq_len, num_states, num_heads, head_dim], s: [seq_len, num_states, num_heads].
void merge_states_cpu(const fi_tensor_desc& v, const fi_tensor_desc& s, const fi_tensor_desc& v_out,
                      const fi_tensor_desc& s_out);

#ifdef FI_WITH_CUDA
void merge_state_cuda(const fi_tensor_desc& v_a, const fi_tensor_desc& s_a, const fi_tensor_desc& v_b,
                      const fi_tensor_desc& s_b, const fi_tensor_desc& v_out,
                      const fi_tensor_desc& s_out, const fi_tensor_desc* mask, void* stream);
void merge_states_cuda(const fi_tensor_desc& v, const fi_tensor_desc& s, const fi_tensor_desc& v_out,
                       const fi_tensor_desc& s_out, void* stream);
#endif

}  // namespace fi

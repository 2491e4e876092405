// The CUDA decode kernels (decode.cu, decode_kernels.cuh, decode_tc.cuh): the engine's kernels
// for plans of one query row per request over a paged cache (FI_KERNEL_DECODE and
// FI_KERNEL_DECODE_TC). They read the same plan and PrefillParams as the prefill kernels; the
// scheduler (prefill_plan.cpp) asks them for their occupancy.
#pragma once
#include <cstdint>

#include "prefill.h"

namespace fi {

// Heads of one GQA group that one CTA of the CUDA-core decode kernel handles together.
inline int decode_heads_per_cta(int group_size) {
  return group_size >= 5 ? 8 : group_size >= 3 ? 4 : group_size;
}

// Whether the decode kernels serve a plan with these arguments (one query row per request is
// checked by the caller), and which of the two: tensor cores for 16-bit caches at head dims up to
// 128 and fp8 caches at head dim 128, without RoPE on the fly, when the group has 4 or more heads
// or use_tensor_cores asks.
inline bool decode_kernels_serve(const fi_prefill_plan_args& a) {
  return a.page_size >= 1 && a.head_dim_qk == a.head_dim_vo &&
         (a.head_dim_qk == 64 || a.head_dim_qk == 128 || a.head_dim_qk == 256) && a.mask_mode != FI_MASK_CUSTOM;
}
inline bool decode_uses_tensor_cores(int32_t head_dim, int32_t q_dtype, int32_t kv_dtype, int32_t group_size, bool requested,
                                     int32_t pos_encoding) {
  const bool fp8 = kv_dtype == FI_FLOAT8_E4M3FN || kv_dtype == FI_FLOAT8_E5M2;
  return (fp8 ? head_dim == 128 : head_dim <= 128 && kv_dtype == q_dtype) && (group_size >= 4 || requested) &&
         pos_encoding != FI_POS_ENCODING_ROPE_LLAMA;
}

#ifdef FI_WITH_CUDA
int decode_ctas_per_sm_cuda(int head_dim, int32_t q_dtype, int32_t kv_dtype, int group_size, bool tensor_cores);
void decode_run_cuda(const PrefillParams& p, void* stream);
#endif

}  // namespace fi

// Backend launchers of the rope family (FlashInfer's flashinfer.rope). The extern "C" entries in
// rope.cpp validate everything; launchers assume valid, non-empty input.
#pragma once
#include <cstdint>

#include "../common/tensor_desc.h"

namespace fi {

constexpr int kRopeMaxHalf = 256;  // rotary_dim / 2 at most (rotary_dim <= 512)

// One [nnz, heads, head_dim] tensor: element (t, h, d) at data + t * s_tok + h * s_head + d.
struct RopeTensor {
  void* data;
  int64_t s_tok, s_head;
  int64_t heads;
};

struct RopeArgs {
  int64_t nnz, head_dim, rotary_dim;
  int32_t dtype;
  bool interleave;
  RopeTensor q, k, q_out, k_out;
  // Positions: pos_ids[t] (stride pos_stride) when pos_ids is set; else token t of request b
  // (indptr[b] <= t < indptr[b+1]) has position offsets[b] + t - indptr[b].
  const void* pos_ids;
  int64_t pos_stride;
  const void* indptr;
  int64_t indptr_stride;
  const void* offsets;
  int64_t offsets_stride;
  int64_t batch;
  int32_t index_dtype;  // FI_INT32 or FI_INT64 (all index arrays)
  // Frequencies (freq[i] for pair i < rotary_dim / 2); unused with a cos/sin cache.
  double freq[kRopeMaxHalf];
  // cos/sin cache [max_pos, rotary_dim] float32 (cos: first half, sin: second half), or null.
  const float* cos_sin;
  int64_t cos_sin_stride, max_pos;
};

void rope_cpu(const RopeArgs& a);

#ifdef FI_WITH_CUDA
void rope_cuda(const RopeArgs& a, void* stream);
#endif

}  // namespace fi

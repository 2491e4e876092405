// Backend interface of the sampling family. The extern "C" entries in sampling.cpp validate
// every argument and reduce tensors to pointers and strides (in elements); backends assume
// valid shapes. On cpu the entries have also checked the values; on cuda they have not, so the
// kernels treat bad values as the header documents (weight 0, clamped parameters, token 0).
#pragma once
#include <cstdint>

#include "../common/philox.h"
#include "../common/tensor_desc.h"

namespace fi {

// A 1-d array on the op's device: element i at data[i * stride]; data NULL when absent.
template <typename T>
struct Vec1 {
  const T* data;
  int64_t stride;
};

struct SampleArgs {
  const float* probs;      // row r at probs + r * row_stride; probabilities or logits
  int64_t rows, vocab, row_stride;
  int64_t batch;
  Vec1<int32_t> indices;   // data NULL: request b reads row b
  int32_t* out;
  int64_t out_stride;
  Vec1<int32_t> top_k;     // data NULL: top_k_val
  Vec1<float> top_p, min_p;
  int32_t top_k_val;
  float top_p_val, min_p_val;
  int32_t filters;         // FI_SAMPLING_* bits
  bool from_logits;
  uint64_t seed, offset;
  Vec1<int64_t> seeds, offsets;  // data NULL: seed, and offset + b * FI_SAMPLING_COUNTERS
};

// Request b's Philox key and first counter (see fi_sampling_params).
FI_HD uint64_t request_seed(const SampleArgs& a, int64_t b) {
  return a.seeds.data ? uint64_t(a.seeds.data[b * a.seeds.stride]) : a.seed;
}
FI_HD uint64_t request_base(const SampleArgs& a, int64_t b) {
  return a.offsets.data ? uint64_t(a.offsets.data[b * a.offsets.stride]) : a.offset + uint64_t(b) * FI_SAMPLING_COUNTERS;
}

struct SoftmaxArgs {
  const float* logits;
  float* out;
  int64_t rows, vocab, in_stride, out_stride;
  Vec1<float> temperature;
  float temperature_val;
};

// Renormalization by top-k / top-p (filter) and top-k masking of logits (mask = true).
struct RenormArgs {
  const float* in;
  float* out;
  int64_t rows, vocab, in_stride, out_stride;
  Vec1<int32_t> top_k;
  Vec1<float> top_p;
  int32_t top_k_val;
  float top_p_val;
  int32_t filter;  // FI_SAMPLING_TOP_K or FI_SAMPLING_TOP_P
  bool mask;       // logits -> -inf outside the top k
};

struct ChainArgs {
  const float* draft;   // [batch, n, vocab]: element (b, i, v) at b * draft_s0 + i * draft_s1 + v
  const float* target;  // [batch, n + 1, vocab]
  const int32_t* draft_ids;
  int32_t* out_ids;
  int32_t* accepted;
  int32_t* emitted;
  int64_t batch, n, vocab;
  int64_t draft_s0, draft_s1, target_s0, target_s1, ids_s0, ids_s1, out_s0, out_s1, acc_s, emit_s;
  uint64_t seed, offset;
};

// Uniform j of request b in [0, 1) with 24 random bits (exact in float32).
FI_HD float sampling_uniform(uint64_t seed, uint64_t base, uint32_t j) {
  const Philox4 r = philox4x32_10(base + j / 4, seed);
  return float(philox_word(r, int(j % 4)) >> 8) * (1.0f / 16777216.0f);
}

// Counters one chain request uses: ceil((n + 1) / 4).
FI_HD uint64_t chain_counters(int64_t n) { return uint64_t(n + 1 + 3) / 4; }

void sample_cpu(const SampleArgs& a);
void softmax_cpu(const SoftmaxArgs& a);
void renorm_cpu(const RenormArgs& a);
void chain_speculative_cpu(const ChainArgs& a);

#ifdef FI_WITH_CUDA
void sample_cuda(const SampleArgs& a, void* stream);
void softmax_cuda(const SoftmaxArgs& a, void* stream);
void renorm_cuda(const RenormArgs& a, void* stream);
void chain_speculative_cuda(const ChainArgs& a, void* stream);
#endif

}  // namespace fi

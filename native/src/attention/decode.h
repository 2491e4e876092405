// Decode attention: plan layout shared by the scheduler, the CPU backend and the CUDA kernels.
//
// Workspace layout (byte offsets in fi_decode_plan_info):
//   [0, plan_bytes)            int32 plan: header, work items, merge ranges, request lengths,
//                              page-table indptr and last-page lengths (fixed size per batch
//                              size in CUDA-graph mode)
//   [off_partial_o, ...)       float32 partial outputs [num_partials, num_qo_heads, head_dim]
//   [off_partial_lse, ...)     float32 partial log2-sum-exp [num_partials, num_qo_heads]
//   [off_indices, ...)         int32 page indices [nnz_pages]  (last: its size varies per plan)
#pragma once
#include <math.h>

#include <cstdint>

#include "../common/dtype.h"
#include "flashinfer.h"

namespace fi {

// Views of the integer plan (all int32, consecutive arrays).
struct DecodePlanView {
  const int32_t* header;        // [kHeaderInts]: num_work (valid work items), batch_size
  const int32_t* work_request;  // [num_work]
  const int32_t* work_begin;    // [num_work] first KV token of the item
  const int32_t* work_end;      // [num_work] one past its last KV token
  const int32_t* work_slot;     // [num_work] partial slot, or -1: write the output directly
  const int32_t* merge_indptr;  // [batch + 1] partial slots of each request
  const int32_t* kv_len;        // [batch]
  const int32_t* page_indptr;   // [batch + 1]
  const int32_t* indices;       // [nnz_pages]
};

constexpr int kDecodeHeaderInts = 8;
// Header slot of the plan's serial number (decode and prefill): each plan gets a new one, kept in
// its plan info too, so a CPU run can tell that another plan has since been written into the
// workspace (two wrappers sharing one workspace) instead of reading it.
constexpr int kPlanSerialSlot = 7;
int32_t next_plan_serial();
// CPU runs: the plan in host memory `workspace` is the one `serial` names (else a FlashInferError
// that says why), so a plan overwritten by another wrapper's is never followed.
void require_plan_in_workspace(const void* workspace, int32_t serial);
constexpr uint64_t kWorkspaceAlign = 256;

inline uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Number of int32 in the fixed part of the plan for these sizes.
inline uint64_t decode_plan_ints(int32_t num_work, int32_t batch) {
  return kDecodeHeaderInts + 4 * uint64_t(num_work) + (batch + 1) + batch + (batch + 1);
}

FI_HD DecodePlanView decode_plan_view(const void* workspace, int32_t num_work, int32_t batch,
                                      uint64_t off_indices) {
  const int32_t* p = static_cast<const int32_t*>(workspace);
  DecodePlanView v;
  v.header = p;
  p += kDecodeHeaderInts;
  v.work_request = p;
  v.work_begin = p + num_work;
  v.work_end = p + 2 * num_work;
  v.work_slot = p + 3 * num_work;
  p += 4 * num_work;
  v.merge_indptr = p;
  p += batch + 1;
  v.kv_len = p;
  p += batch;
  v.page_indptr = p;
  v.indices = reinterpret_cast<const int32_t*>(static_cast<const char*>(workspace) + off_indices);
  return v;
}

// ALiBi slope of qo head `head` among `num_heads` (Press et al.; the geometric sequence for the
// nearest power of two, interleaved for the rest).
FI_HD float alibi_slope(int head, int num_heads) {
  int n = 1;
  while (n * 2 <= num_heads) n *= 2;
  const float m0 = exp2f(-8.0f / n);
  if (head < n) return powf(m0, float(head + 1));
  const float m1 = exp2f(-4.0f / n);
  return powf(m1, float(2 * (head - n) + 1));
}

// CPU backends (decode, prefill): rotate-half RoPE of x[0, D) at position pos, in double.
inline void apply_rope_cpu(double* x, int D, double pos, double rope_scale, double rope_theta) {
  const int half = D / 2;
  for (int d = 0; d < half; ++d) {
    const double freq = pow(rope_theta, -2.0 * d / D) / rope_scale;
    const double c = cos(pos * freq), s = sin(pos * freq);
    const double lo = x[d], hi = x[d + half];
    x[d] = lo * c - hi * s;
    x[d + half] = hi * c + lo * s;
  }
}

// CPU backends: multiply-adds below which a run stays on one thread (waking an OpenMP team costs
// tens of microseconds on a busy host, more than such a run takes).
constexpr int64_t kCpuParallelWork = int64_t(1) << 11;

// Heads of one GQA group that one CTA (or CPU task) handles together.
inline int decode_heads_per_cta(int group_size) {
  return group_size >= 5 ? 8 : group_size >= 3 ? 4 : group_size;
}

// Scheduler targets for a device: how many CTAs run at once (CPU: a small fixed number, so the
// CPU backend also exercises split requests and merging).
struct DecodeMachine {
  int32_t concurrent_ctas;
  int32_t min_chunk_tokens;
};
DecodeMachine decode_machine(const fi_decode_plan_args& a);

void decode_run_cpu(const fi_decode_run_args& a);
#ifdef FI_WITH_CUDA
int decode_ctas_per_sm_cuda(int head_dim, int32_t q_dtype, int32_t kv_dtype, int heads_per_cta, bool use_tensor_cores);
void decode_run_cuda(const fi_decode_run_args& a, void* stream);
#endif

}  // namespace fi

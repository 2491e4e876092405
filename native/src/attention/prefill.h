// The attention engine (prefill and decode, single and batch, ragged and paged): the interface
// between the host side (C entries, validation, scheduler, CPU backend: prefill.cpp,
// prefill_plan.cpp, prefill_cpu.h) and the CUDA kernels (prefill.cu with prefill_kernels.cuh and
// prefill_sm90.cuh; decode.cu with decode_kernels.cuh and decode_tc.cuh). Every kernel takes the
// same PrefillParams and reads the same plan; decode is the case of one query row per request.
//
// Query rows are "packed" per KV head as FlashInfer does: for request r with qo_len rows and a
// GQA group of G = num_qo_heads / num_kv_heads, packed row p in [0, qo_len * G) of KV head h is
// query row p / G, query head h * G + p % G. One work item covers packed rows
// [qo_begin, qo_begin + cta_tile_q) of one request (clipped to qo_len * G), keys
// [kv_begin, kv_end) of that request, for every KV head (launch grid: num_work x num_kv_heads).
//
// Masking, with i the query row and j the key of one request, d = kv_len - qo_len (causal is
// bottom-right aligned as FlashInfer): key j is visible to row i when
//   causal:          j <= i + d
//   custom:          bit (i * kv_len + j) of the request's mask is 1 (bits little-endian, the
//                    request's mask starting at byte mask_offset[r] of custom_mask)
//   window_left >= 0 also requires j >= i + d - window_left
// A row that sees no key gets out = 0 and lse = -inf.
// Positions: query row i is at position i + d, key j at position j (RoPE on the fly and ALiBi).
//
// Work items split along KV (chunk >= 0) write float32 partial states; a second pass merges, for
// each global query row n (qo_indptr[r] + i) and qo head, the merge_indptr[n + 1] -
// merge_indptr[n] partials at slots merge_indptr[n] + chunk. Rows with no partials are written
// directly by the attention kernel.
#pragma once
#include <math.h>

#include <cstdint>
#include <string>

#include "../common/dtype.h"  // FI_HD
#include "flashinfer.h"

namespace fi {

// Header slot of the plan's serial number: each plan gets a new one, kept in its plan info too,
// so a CPU run can tell that another plan has since been written into the workspace (two
// wrappers sharing one workspace) instead of reading it.
constexpr int kPlanSerialSlot = 7;
int32_t next_plan_serial();
// CPU runs: the plan in host memory `workspace` is the one `serial` names (else a FlashInferError
// that says why), so a plan overwritten by another wrapper's is never followed.
void require_plan_in_workspace(const void* workspace, int32_t serial);
constexpr uint64_t kWorkspaceAlign = 256;

inline uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

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

// CPU backend: rotate-half RoPE of x[0, D) at position pos, in double.
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

enum PrefillMaskMode : int32_t { kMaskNone = 0, kMaskCausal = 1, kMaskCustom = 2 };

constexpr int kPrefillHeaderInts = 8;

// Views of the integer plan in the workspace (all int32, consecutive arrays after the header).
struct PrefillPlanView {
  // [kPrefillHeaderInts]: work items to run (fewer than the grid in CUDA-graph mode, whose
  // padding items return at once), batch_size, cta_tile_q, total_qo, any_split, ..., serial
  const int32_t* header;
  const int32_t* work_request;  // [num_work]
  const int32_t* work_qo_begin; // [num_work] first packed row of the tile
  const int32_t* work_kv_begin; // [num_work] first key of the item
  const int32_t* work_kv_end;   // [num_work] one past its last key
  const int32_t* work_chunk;    // [num_work] chunk index for split requests, or -1: write out directly
  const int32_t* qo_indptr;     // [batch + 1] global query row of each request
  const int32_t* kv_indptr;     // [batch + 1] ragged: global key row; paged: offset into indices
  const int32_t* kv_len;        // [batch] keys per request
  const int32_t* mask_offset;   // [batch] byte offset of the request's custom mask
  const int32_t* merge_indptr;  // [total_qo + 1] partial slots of each global query row
  const int32_t* indices;       // paged: page indices [nnz_pages]; ragged: unused
};

// Int32 count of the plan for these sizes (header and every array above but indices).
inline uint64_t prefill_plan_ints(int32_t num_work, int32_t batch, int32_t total_qo) {
  return kPrefillHeaderInts + 5 * uint64_t(num_work) + (batch + 1) * 2 + 2 * uint64_t(batch) + (total_qo + 1);
}

FI_HD PrefillPlanView prefill_plan_view(const void* workspace, int32_t num_work, int32_t batch, int32_t total_qo,
                                        uint64_t off_indices) {
  const int32_t* p = static_cast<const int32_t*>(workspace);
  PrefillPlanView v;
  v.header = p;
  p += kPrefillHeaderInts;
  v.work_request = p;
  v.work_qo_begin = p + num_work;
  v.work_kv_begin = p + 2 * num_work;
  v.work_kv_end = p + 3 * num_work;
  v.work_chunk = p + 4 * num_work;
  p += 5 * num_work;
  v.qo_indptr = p;
  p += batch + 1;
  v.kv_indptr = p;
  p += batch + 1;
  v.kv_len = p;
  p += batch;
  v.mask_offset = p;
  p += batch;
  v.merge_indptr = p;
  v.indices = reinterpret_cast<const int32_t*>(static_cast<const char*>(workspace) + off_indices);
  return v;
}

// Everything one run needs, filled by prefill.cpp from validated arguments. Strides are in
// elements. K/V are 4-d views [pages, page_size, num_kv_heads, head_dim] when paged
// (page_size >= 1); ragged K/V are [total_kv, num_kv_heads, head_dim] (page_size = 0,
// k_stride_page unused).
struct PrefillParams {
  const void* q;  // [total_qo, num_qo_heads, head_dim_qk]
  const void* k;
  const void* v;
  void* out;      // [total_qo, num_qo_heads, head_dim_vo], q's dtype
  float* lse;     // [total_qo, num_qo_heads] natural log, or nullptr
  const uint8_t* custom_mask;  // kMaskCustom only
  // MLA: the last rope_dim dims of q and k rows from q_rope / k_rope (views as q's and k's, last
  // dim rope_dim); q and k hold the first head_dim_qk - rope_dim. rope_dim 0: absent.
  const void* q_rope;
  const void* k_rope;
  int64_t q_rope_stride_n, q_rope_stride_h;
  int64_t k_rope_stride_page, k_rope_stride_n, k_rope_stride_h;
  int32_t rope_dim;
  int64_t q_stride_n, q_stride_h;
  int64_t k_stride_page, k_stride_n, k_stride_h;
  int64_t v_stride_page, v_stride_n, v_stride_h;
  int64_t out_stride_n, out_stride_h;
  int64_t lse_stride_n, lse_stride_h;
  PrefillPlanView plan;
  float* partial_o;    // [slots, num_qo_heads, head_dim_vo] float32
  float* partial_lse;  // [slots, num_qo_heads] float32, log2 domain or natural: backend-private
  int32_t num_work, batch_size, total_qo, cta_tile_q, any_split;
  int32_t kv_chunks_max;  // most pieces one request's rows were split into
  int32_t num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo, page_size;
  int32_t q_dtype, kv_dtype;
  int32_t mask_mode, pos_encoding, window_left;
  int32_t backend;  // FI_BACKEND_FA2 / _FA3 (CUDA) or _CPU, as the plan chose
  int32_t kernel;   // FI_KERNEL_*, as the plan chose
  float sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale;
};

void prefill_run_cpu(const PrefillParams& p);
#ifdef FI_WITH_CUDA
// cta_tile_q is 16, 64 or 128 packed rows (the scheduler picks it from the average packed query
// length, as FlashInfer); every backend supports all three. prefill_cuda_supports says whether
// the CUDA kernel is instantiated for these head dims and dtypes (the C entry turns false into
// FI_ERR_UNSUPPORTED naming the values).
bool prefill_cuda_supports(int32_t head_dim_qk, int32_t head_dim_vo, int32_t q_dtype, int32_t kv_dtype);
// Why the Hopper kernel (FI_BACKEND_FA3) cannot serve a plan with these arguments on its device
// (the current one), or an empty string when it can.
std::string prefill_fa3_unsupported(const fi_prefill_plan_args& a);
int prefill_ctas_per_sm_cuda(int32_t head_dim_qk, int32_t head_dim_vo, int32_t q_dtype, int32_t kv_dtype, int32_t cta_tile_q);
// Throws unless the CUDA kernels can run these arguments (head dims and dtypes built, tile size,
// 16-byte alignment of every tensor and stride); prefill_run_cuda and the generated variants'
// runs call it first.
void prefill_check_cuda(const PrefillParams& p);
void prefill_run_cuda(const PrefillParams& p, void* stream);
// The MLA kernels (mla.cu): head dims (576, 512) as 512 + 64 rope dims, 16-bit q, a latent of q's
// dtype or fp8, tiles of 64 rows; prefill_run_cuda sends such runs to mla_run_cuda, which runs
// the plan's kernel: FI_KERNEL_FA3 the wgmma one (Hopper, a latent of q's dtype), else mma.sync.
bool mla_cuda_supports(int32_t head_dim_qk, int32_t head_dim_vo, int32_t q_dtype, int32_t kv_dtype);
// Why the wgmma MLA kernel cannot serve these dtypes on the current device ("" when it can).
std::string mla_sm90_unsupported(int32_t q_dtype, int32_t kv_dtype);
constexpr int32_t kMlaTileRows = 64;
void mla_run_cuda(const PrefillParams& p, void* stream);
#endif

}  // namespace fi

/* flashinfer-bun: the whole public C ABI of libflashinfer.so.
 *
 * Conventions (see DESIGN.md):
 * - every entry returns an int32_t status (FI_OK or an FI_ERR_* code) and never throws;
 *   fi_last_error() gives the thread-local message of the last failure;
 * - a device is an int32_t: FI_DEVICE_CPU (-1) or a CUDA ordinal (0, 1, ...);
 * - streams, events and graphs are opaque pointers; a NULL stream is CUDA's legacy default stream;
 * - structs passed by pointer have fixed-width fields; bindings take their layout from
 *   fi_struct_size() and fi_struct_offset() at load instead of typing byte offsets.
 */
#ifndef FLASHINFER_H_
#define FLASHINFER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FI_API __attribute__((visibility("default")))

/* ---- status ---- */
enum {
  FI_OK = 0,
  FI_ERR_INVALID_ARGUMENT = 1,
  FI_ERR_UNSUPPORTED = 2,
  FI_ERR_OUT_OF_MEMORY = 3,
  FI_ERR_CUDA = 4,
  FI_ERR_NO_DEVICE = 5,
  FI_ERR_INTERNAL = 6,
};

/* ---- dtypes (values are part of the ABI) ---- */
enum {
  FI_FLOAT32 = 0,
  FI_FLOAT16 = 1,
  FI_BFLOAT16 = 2,
  FI_FLOAT8_E4M3FN = 3,
  FI_FLOAT8_E5M2 = 4,
  FI_INT32 = 5,
  FI_INT64 = 6,
  FI_UINT8 = 7,
  FI_BOOL = 8,
  FI_FLOAT64 = 9,
  FI_DTYPE_COUNT = 10,
};

#define FI_DEVICE_CPU (-1)
#define FI_MAX_DIMS 8

/* ---- library ---- */
FI_API const char* fi_version(void);
FI_API const char* fi_last_error(void);
/* 1 when the CUDA backend was compiled in (a GPU may still be absent at run time). */
FI_API int32_t fi_has_cuda_backend(void);
/* Size of the ABI struct named by `which` ("fi_tensor_desc", "fi_device_properties"), 0 if unknown. */
FI_API uint64_t fi_struct_size(const char* which);
/* offsetof(which, field) for every field of every struct of this header ("fi_prefill_run_args",
 * "plan"), or -1 for an unknown struct or field. A member that is itself a struct or an array
 * (fi_tensor_desc q, int64_t shape[8]) has its own offset; its elements and fields are not listed.
 * Bindings ask for the offsets at load, so a reordered or renamed field fails there. */
FI_API int64_t fi_struct_offset(const char* which, const char* field);

/* ---- devices ---- */
typedef struct fi_device_properties {
  char name[256];
  uint64_t total_memory;        /* bytes */
  int32_t sm_count;
  int32_t major;
  int32_t minor;
  int32_t l2_cache_size;        /* bytes */
  int32_t max_shared_memory_per_block_optin;
  int32_t memory_bus_width;     /* bits */
  int32_t memory_clock_khz;
  int32_t reserved;
} fi_device_properties;

/* Number of CUDA devices; 0 (and FI_OK) when there is no driver, no GPU or no CUDA backend. */
FI_API int32_t fi_device_count(int32_t* count);
FI_API int32_t fi_device_get_properties(int32_t device, fi_device_properties* out);
FI_API int32_t fi_device_synchronize(int32_t device);
FI_API int32_t fi_device_mem_info(int32_t device, uint64_t* free_bytes, uint64_t* total_bytes);

/* ---- memory ---- */
/* Stream-ordered device allocation from the device's memory pool (cudaMallocAsync). */
FI_API int32_t fi_device_malloc(int32_t device, uint64_t bytes, void* stream, void** out);
FI_API int32_t fi_device_free(int32_t device, void* ptr, void* stream);
/* Host allocation, 64-byte aligned: page-locked when a CUDA device is present, else plain.
 * *pinned says which one it got; pass it back to fi_host_free. */
FI_API int32_t fi_host_malloc(uint64_t bytes, void** out, int32_t* pinned);
FI_API int32_t fi_host_free(void* ptr, int32_t pinned);
/* Copy bytes between any two devices (CPU or CUDA), ordered on `stream`; asynchronous where
 * CUDA allows it (call fi_stream_synchronize before reading host memory). */
FI_API int32_t fi_memcpy(void* dst, int32_t dst_device, const void* src, int32_t src_device,
                         uint64_t bytes, void* stream);

/* ---- tensors ---- */
/* A strided view: element (i0..in) lives at data + sum(ik * strides[k]) * itemsize. */
typedef struct fi_tensor_desc {
  void* data;
  int32_t device;
  int32_t dtype;
  int32_t ndim;
  int32_t reserved;
  int64_t shape[FI_MAX_DIMS];
  int64_t strides[FI_MAX_DIMS];   /* in elements; 0 broadcasts */
} fi_tensor_desc;

/* dst[...] = cast(src[...]) on one device; shapes must match; any strides; any dtype pair.
 * Float -> integer truncates toward zero and saturates (NaN -> 0); integer -> integer wraps;
 * float -> float rounds to nearest even; float8_e4m3fn overflow gives NaN, float8_e5m2 Inf. */
FI_API int32_t fi_tensor_copy(const fi_tensor_desc* dst, const fi_tensor_desc* src, void* stream);
/* dst[...] = value, rounded to dst's dtype as fi_tensor_copy does. */
FI_API int32_t fi_tensor_fill(const fi_tensor_desc* dst, double value, void* stream);
/* dst[i, :] = src[indices[i], :] for i < n (an embedding lookup): src [rows, cols] and dst [n, cols]
 * of one dtype on one device, each with a unit column stride (any row stride), not overlapping;
 * indices on the host, each in [0, rows) (all checked before anything is written). */
FI_API int32_t fi_tensor_gather_rows(const fi_tensor_desc* dst, const fi_tensor_desc* src, const int32_t* indices, int64_t n,
                                     void* stream);

enum { FI_RANDOM_UNIFORM = 0, FI_RANDOM_NORMAL = 1 };
/* Counter-based (Philox4x32-10) random fill: element with row-major index i gets a value that
 * depends only on (seed, offset, i), so CPU and CUDA give bit-identical results.
 * UNIFORM: a + (b - a) * u, u in [0, 1). NORMAL: a + b * z, z standard normal (Box-Muller). */
FI_API int32_t fi_tensor_random(const fi_tensor_desc* dst, int32_t distribution, uint64_t seed,
                                uint64_t offset, double a, double b, void* stream);

/* ---- streams, events, graphs (CUDA only; FI_ERR_NO_DEVICE without a GPU) ---- */
/* non_blocking = 0: the stream orders against the legacy default stream (on which the bindings
 * allocate and free), so freeing memory never races with its work. non_blocking = 1: no such
 * ordering (what graph capture wants); the caller keeps memory alive while work is pending. */
FI_API int32_t fi_stream_create(int32_t device, int32_t non_blocking, void** out);
FI_API int32_t fi_stream_destroy(void* stream);
FI_API int32_t fi_stream_synchronize(void* stream);
/* *done = 1 when all work on the stream has finished. */
FI_API int32_t fi_stream_query(void* stream, int32_t* done);

FI_API int32_t fi_event_create(int32_t device, int32_t enable_timing, void** out);
FI_API int32_t fi_event_destroy(void* event);
FI_API int32_t fi_event_record(void* event, void* stream);
FI_API int32_t fi_event_query(void* event, int32_t* done);
FI_API int32_t fi_event_synchronize(void* event);
FI_API int32_t fi_event_elapsed_ms(void* start, void* end, float* ms);
/* Makes `stream` wait for `event` (no host blocking). */
FI_API int32_t fi_stream_wait_event(void* stream, void* event);

/* Capture the work launched on `stream` between begin and end into an executable graph. */
FI_API int32_t fi_graph_begin_capture(void* stream);
FI_API int32_t fi_graph_end_capture(void* stream, void** graph_exec);
FI_API int32_t fi_graph_launch(void* graph_exec, void* stream);
FI_API int32_t fi_graph_destroy(void* graph_exec);


/* Position encodings the attention kernels apply on the fly (plan and run of fi_prefill_*). */
enum { FI_POS_ENCODING_NONE = 0, FI_POS_ENCODING_ROPE_LLAMA = 1, FI_POS_ENCODING_ALIBI = 2 };

/* ---- cascade: merging partial attention states (FlashInfer's flashinfer.cascade) ----
 * A state is (v, s) for one query row and head: v [head_dim] is the normalized attention output
 * over some set of keys, s its natural-log log-sum-exp of the logits. Merging states gives
 *   s = log(sum_i exp(s_i)),  v = sum_i v_i * exp(s_i - s),
 * computed in float32 (float64 on the CPU backend); v is rounded to its dtype (nearest even),
 * s stays float32. s = -inf is an empty state: it contributes nothing and its v is ignored
 * (it may hold anything, NaN included); merging only empty states gives v = 0, s = -inf.
 * v tensors are float16, bfloat16 or float32; s tensors are float32. Any strides (in elements);
 * outputs must not be broadcast views (stride 0 on a dimension of size > 1). All tensors on one
 * device; the work is ordered on `stream` (ignored on cpu). */

/* (v_out, s_out) = merge of (v_a, s_a) and (v_b, s_b).
 * v_a, v_b, v_out: [seq_len, num_heads, head_dim], one dtype; s_a, s_b, s_out: [seq_len, num_heads].
 * The outputs may be exactly the tensors of one input pair (same data and strides: in place);
 * otherwise they must not overlap the inputs.
 * mask: NULL, or a bool/uint8 [seq_len] tensor; rows whose mask is 0 are not written at all. */
FI_API int32_t fi_cascade_merge_state(const fi_tensor_desc* v_a, const fi_tensor_desc* s_a,
                                      const fi_tensor_desc* v_b, const fi_tensor_desc* s_b,
                                      const fi_tensor_desc* v_out, const fi_tensor_desc* s_out,
                                      const fi_tensor_desc* mask, void* stream);
/* (v_out, s_out) = merge of all num_states states of each row and head.
 * v: [seq_len, num_states, num_heads, head_dim], s: [seq_len, num_states, num_heads];
 * v_out: [seq_len, num_heads, head_dim] in v's dtype, s_out: [seq_len, num_heads] float32.
 * num_states = 0 gives v = 0, s = -inf. The outputs must not overlap the inputs. */
FI_API int32_t fi_cascade_merge_states(const fi_tensor_desc* v, const fi_tensor_desc* s,
                                       const fi_tensor_desc* v_out, const fi_tensor_desc* s_out,
                                       void* stream);

/* ---- norm (FlashInfer's flashinfer.norm) ----
 * input, out, residual: [..., hidden] float16, bfloat16 or float32 (one dtype), the last
 * dimension contiguous (stride 1) and the leading dimensions collapsible into one row stride
 * (each tensor its own); rows are normalized independently. Computed in float32 (float64 on
 * the CPU backend), results rounded to the dtype (nearest even). eps must be finite and > 0.
 * out may be exactly input (in place), else must not overlap it. The work is ordered on
 * `stream` (ignored on cpu). Nothing is written unless every check passes. */

/* out = input / sqrt(mean(input^2) + eps) * w, w = weight (gemma = 0) or 1 + weight (gemma = 1).
 * weight: [hidden], input's dtype. */
FI_API int32_t fi_norm_rmsnorm(const fi_tensor_desc* input, const fi_tensor_desc* weight,
                               const fi_tensor_desc* out, double eps, int32_t gemma, void* stream);
/* In place: residual = round(residual + input); input = rmsnorm(residual) (weight as above). */
FI_API int32_t fi_norm_fused_add_rmsnorm(const fi_tensor_desc* input, const fi_tensor_desc* residual,
                                         const fi_tensor_desc* weight, double eps, int32_t gemma,
                                         void* stream);
/* out = (input - mean) / sqrt(var + eps) * gamma + beta, var biased. gamma, beta: [hidden],
 * float32 or input's dtype (one dtype). */
FI_API int32_t fi_norm_layernorm(const fi_tensor_desc* input, const fi_tensor_desc* gamma,
                                 const fi_tensor_desc* beta, const fi_tensor_desc* out, double eps,
                                 void* stream);

/* ---- page: paged KV cache bookkeeping and appends (FlashInfer's flashinfer.page) ----
 * FlashInfer's CSR page table: request b owns pages kv_indices[kv_indptr[b] .. kv_indptr[b+1]),
 * its last page holding kv_last_page_len[b] tokens. Index arrays are 1-d int32 tensors (any
 * stride) on the device of the other tensors. Entries that must check index values (the append
 * and batch_indices_positions) copy the index arrays to the host for validation; for CUDA tensors
 * that is a device-to-host copy on `stream` and a stream synchronization (so those two entries
 * are not capturable in a CUDA graph). Nothing is written unless every check passes. */

/* seq_lens[b] = (kv_indptr[b+1] - kv_indptr[b] - 1) * page_size + kv_last_page_len[b], 0 for a
 * request without pages. kv_indptr [batch + 1], kv_last_page_len and seq_lens [batch]. */
FI_API int32_t fi_page_get_seq_lens(const fi_tensor_desc* kv_indptr, const fi_tensor_desc* kv_last_page_len,
                                    int32_t page_size, const fi_tensor_desc* seq_lens, void* stream);
/* For each appended token j of request b (append_indptr[b] <= j < append_indptr[b+1]):
 * batch_indices[j] = b, positions[j] = seq_lens[b] - (append_indptr[b+1] - append_indptr[b]) +
 * (j - append_indptr[b]) (the appended tokens are the last of the request; seq_lens are the
 * lengths after appending). append_indptr [batch + 1] (0 first, non-decreasing, last = nnz),
 * seq_lens [batch] (each at least the tokens appended), batch_indices and positions [nnz]. */
FI_API int32_t fi_page_get_batch_indices_positions(const fi_tensor_desc* append_indptr, const fi_tensor_desc* seq_lens,
                                                   const fi_tensor_desc* batch_indices, const fi_tensor_desc* positions,
                                                   void* stream);
/* Writes token j of append_key/append_value [nnz, num_kv_heads, head_dim] into request
 * b = batch_indices[j] at position p = positions[j]: page kv_indices[kv_indptr[b] + p / page_size],
 * slot p % page_size. k_cache, v_cache: [pages, page_size, num_kv_heads, head_dim] views (any
 * strides: NHD, HND, halves of one tensor), float16, bfloat16, float8_e4m3fn or float8_e5m2.
 * append dtype: float16, bfloat16 or the cache's; values are converted to the cache dtype,
 * rounding to nearest even. Checks: 0 <= b < batch, 0 <= p < the request's length (so p lies in
 * its pages), every page index used in [0, pages), kv_last_page_len in [1, page_size] for
 * requests with pages. Two tokens naming one slot: which one is written is unspecified.
 * check_indices = 0 skips the index-value checks (no host copy, no synchronization: one kernel
 * launch, capturable); the caller then guarantees them, or the kernel writes out of bounds. */
FI_API int32_t fi_page_append_paged_kv_cache(const fi_tensor_desc* append_key, const fi_tensor_desc* append_value,
                                             const fi_tensor_desc* batch_indices, const fi_tensor_desc* positions,
                                             const fi_tensor_desc* k_cache, const fi_tensor_desc* v_cache,
                                             const fi_tensor_desc* kv_indices, const fi_tensor_desc* kv_indptr,
                                             const fi_tensor_desc* kv_last_page_len, int32_t check_indices,
                                             void* stream);

/* ---- activation: fused gated activations (FlashInfer's flashinfer.activation) ----
 * input [..., 2 * d] (float16, bfloat16 or float32); out [..., d] in input's dtype:
 *   out[..., j] = act(input[..., j]) * input[..., d + j]
 * silu(x) = x / (1 + exp(-x)); gelu(x) = 0.5 x (1 + erf(x / sqrt 2));
 * gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
 * Computed in float32 (float64 on cpu), rounded to the dtype (nearest even). The last dimension
 * of input and out must be contiguous (stride 1); the leading dimensions may have any strides
 * (out not a broadcast view). out must not overlap input. Ordered on `stream` (ignored on cpu). */
FI_API int32_t fi_activation_silu_and_mul(const fi_tensor_desc* input, const fi_tensor_desc* out, void* stream);
FI_API int32_t fi_activation_gelu_and_mul(const fi_tensor_desc* input, const fi_tensor_desc* out, void* stream);
FI_API int32_t fi_activation_gelu_tanh_and_mul(const fi_tensor_desc* input, const fi_tensor_desc* out,
                                               void* stream);

/* ---- quantization: bit packing (FlashInfer's flashinfer.quantization, as numpy.packbits) ----
 * x: [n] bool or uint8 (nonzero = 1), any stride. Each byte packs 8 consecutive elements:
 * bitorder 0 (big) puts the first in the most significant bit, 1 (little) in the least. The last
 * byte of a run is zero-padded. Outputs must not overlap the inputs. Ordered on `stream`. */

/* y: [ceil(n / 8)] uint8. */
FI_API int32_t fi_quantization_packbits(const fi_tensor_desc* x, const fi_tensor_desc* y, int32_t bitorder,
                                        void* stream);
/* Packs each segment x[indptr[s], indptr[s + 1]) separately. indptr: [segments + 1] int32,
 * non-decreasing, indptr[0] >= 0, indptr[segments] <= n. Writes indptr_new ([segments + 1]
 * int32): indptr_new[0] = 0, indptr_new[s + 1] = indptr_new[s] + ceil(len_s / 8), and
 * y: [indptr_new[segments]] uint8. On cpu the indptr values and y's length are checked here; on
 * CUDA they are not read on the host, so the caller must check them (lib/quantization.ts does). */
FI_API int32_t fi_quantization_segment_packbits(const fi_tensor_desc* x, const fi_tensor_desc* indptr,
                                                const fi_tensor_desc* indptr_new, const fi_tensor_desc* y,
                                                int32_t bitorder, void* stream);

/* ---- rope: rotary position embeddings (FlashInfer's flashinfer.rope) ----
 * q [nnz, num_qo_heads, head_dim], k [nnz, num_kv_heads, head_dim]: one dtype (float16, bfloat16
 * or float32), one device, last dimension contiguous, other strides free. q_out / k_out: q's / k's
 * shape and dtype (may be q / k themselves for in-place rotation, else must not overlap them).
 * Only the first rotary_dim dimensions (even, <= head_dim, <= 512) rotate; the rest are copied.
 * Pair i (0 <= i < rotary_dim / 2) is dims (i, i + rotary_dim / 2) (interleave = 0, NeoX
 * "rotate half") or (2i, 2i + 1) (interleave = 1); at angle = position * freq_i:
 *   x'_a = x_a cos - x_b sin, x'_b = x_b cos + x_a sin.
 * freq_i = theta^(-2i / rotary_dim) / rope_scale; with llama31 = 1, from base = theta^(-2i/rotary_dim):
 *   smooth = clamp((old_context_len * base / (2 pi) - low_freq_factor) / (high_freq_factor - low_freq_factor), 0, 1),
 *   freq_i = (1 - smooth) * base / rope_scale + smooth * base (Llama 3.1's frequency smoothing).
 * Frequencies in float64 on the host; cuda rotates in float32 with the angle reduced mod 2 pi in
 * float64, cpu computes in float64. Index arrays: 1-d int32 or int64 (any stride) on q's device.
 * Ordered on `stream` (ignored on cpu). Nothing is written unless every check passes. */

/* Ragged batch: the tokens of request b are rows indptr[b] .. indptr[b+1] ([batch + 1]) and row t
 * of request b has position offsets[b] + t - indptr[b] (offsets [batch], indptr's dtype). indptr
 * must start at 0, not decrease and end at nnz: checked on cpu; on cuda the values are not read
 * on the host (a bad indptr gives wrong positions but every write stays inside rows [0, nnz)). */
FI_API int32_t fi_rope_apply_rope(const fi_tensor_desc* q, const fi_tensor_desc* k, const fi_tensor_desc* q_out,
                                  const fi_tensor_desc* k_out, const fi_tensor_desc* indptr, const fi_tensor_desc* offsets,
                                  int32_t rotary_dim, int32_t interleave, double rope_scale, double rope_theta,
                                  int32_t llama31, double low_freq_factor, double high_freq_factor,
                                  double old_context_len, void* stream);
/* Row t has position pos_ids[t] (pos_ids [nnz]). */
FI_API int32_t fi_rope_apply_rope_pos_ids(const fi_tensor_desc* q, const fi_tensor_desc* k, const fi_tensor_desc* q_out,
                                          const fi_tensor_desc* k_out, const fi_tensor_desc* pos_ids, int32_t rotary_dim,
                                          int32_t interleave, double rope_scale, double rope_theta, int32_t llama31,
                                          double low_freq_factor, double high_freq_factor, double old_context_len,
                                          void* stream);
/* vLLM's form: cos_sin_cache [max_position, rotary_dim] float32 holds cos in its first half and
 * sin in its second: row t rotates pair i with cos_sin_cache[positions[t], i] and
 * cos_sin_cache[positions[t], rotary_dim / 2 + i]. is_neox = 1: non-interleaved pairs, 0: interleaved.
 * positions [nnz]; each must lie in [0, max_position): checked on cpu; on cuda an outside
 * position gives NaN rows (the values are not read on the host). */
FI_API int32_t fi_rope_apply_cos_sin_cache(const fi_tensor_desc* positions, const fi_tensor_desc* q, const fi_tensor_desc* k,
                                           const fi_tensor_desc* q_out, const fi_tensor_desc* k_out,
                                           const fi_tensor_desc* cos_sin_cache, int32_t is_neox, void* stream);

/* ---- attention: one engine for prefill and decode over a ragged or paged KV cache ----
 * Request r has qo_len = qo_indptr[r+1] - qo_indptr[r] query rows (global rows qo_indptr[r]..)
 * and kv_len keys: ragged, key rows kv_indptr[r] .. kv_indptr[r+1] of k/v [total_kv, kv_heads,
 * head_dim]; paged, FlashInfer's CSR page table (kv_indptr into kv_indices, kv_last_page_len)
 * over k/v views [pages, page_size, kv_heads, head_dim] (any strides, head_dim contiguous), so
 * NHD, HND, one tensor holding K and V, or a pair are all views of the same form. Decode is the
 * case qo_len = 1 for every request: same plan, scheduler, run arguments, validation and merge;
 * the plan picks the decode kernels for it (see FI_KERNEL_*).
 * With d = kv_len - qo_len, key j is visible to row i when: causal, j <= i + d (bottom-right
 * aligned); custom, bit (i * kv_len + j) of the request's mask is 1 (bits little-endian, each
 * request's mask starting at byte sum over earlier requests of ceil(qo_len * kv_len / 8));
 * window_left >= 0 also requires j >= i + d - window_left. A row that sees no key gets out = 0
 * and lse = -inf. RoPE/ALiBi positions: row i at i + d, key j at j. The plan picks the kernel and
 * its query tile (16, 64 or 128 packed rows from the average qo_len * group size), splits KV
 * across work items when the batch cannot fill the device (merged after), and writes the flat
 * plan (and page indices) into the workspace; run allocates nothing and never synchronizes. */
enum { FI_MASK_NONE = 0, FI_MASK_CAUSAL = 1, FI_MASK_CUSTOM = 2 };

/* Which kernel family runs a plan (fi_prefill_plan_args.backend asks, fi_prefill_plan_info.backend
 * records what the plan chose; run follows the plan), FlashInfer's backend option:
 *   AUTO  cpu on a cpu workspace; on CUDA, FA3 for plans it serves best (>= 1024 query rows per
 *         request on average, 128-row tiles), else FA2
 *   FA2   the sm_80 family: the decode kernels for decode plans they serve, else the mma.sync
 *         prefill kernel (every head dim, dtype, mask and position mode)
 *   FA3   the Hopper kernel (wgmma, TMA, warp-specialized; a 9.x device running the sm_90a image):
 *         q and kv of one 16-bit dtype, head dims (64, 64), (128, 128) and (256, 256), every mask and
 *         variant but ROPE_LLAMA; plan fails with FI_ERR_UNSUPPORTED naming what does not fit
 *   CPU   the CPU backend (cpu workspaces only) */
enum { FI_BACKEND_AUTO = 0, FI_BACKEND_FA2 = 1, FI_BACKEND_FA3 = 2, FI_BACKEND_CPU = 3 };

/* The kernel a plan runs (fi_prefill_plan_info.kernel):
 *   CPU        the CPU backend
 *   DECODE     CUDA-core decode: one CTA per (work item, KV head, group of query heads), for
 *              decode plans (qo_len 1 everywhere) over a paged cache with equal head dims 64, 128
 *              or 256 and no custom mask
 *   DECODE_TC  tensor-core decode (mma.sync over the GQA group as rows): the same plans with a 16-bit
 *              cache, head dim <= 128 and no RoPE, when the group has 4 or more heads or
 *              use_tensor_cores asks for it
 *   FA2        mma.sync prefill;  FA3  the Hopper prefill kernel */
enum { FI_KERNEL_CPU = 0, FI_KERNEL_DECODE = 1, FI_KERNEL_DECODE_TC = 2, FI_KERNEL_FA2 = 3, FI_KERNEL_FA3 = 4 };

typedef struct fi_prefill_plan_args {
  const int32_t* qo_indptr;         /* host, [batch_size + 1], qo_indptr[0] = 0, non-decreasing */
  const int32_t* kv_indptr;         /* host, [batch_size + 1]: ragged key rows, or offsets into kv_indices */
  const int32_t* kv_indices;        /* host, paged: [kv_indptr[batch_size]] page indices; NULL for ragged */
  const int32_t* kv_last_page_len;  /* host, paged: [batch_size], 1..page_size for requests with pages; NULL for ragged */
  int32_t batch_size;
  int32_t num_qo_heads;
  int32_t num_kv_heads;
  int32_t head_dim_qk;
  int32_t head_dim_vo;
  int32_t page_size;                /* 0: ragged KV; >= 1: paged */
  int32_t q_dtype;                  /* float16 or bfloat16; out has q's dtype */
  int32_t kv_dtype;                 /* q's dtype, float8_e4m3fn or float8_e5m2 */
  int32_t device;                   /* where run executes */
  int32_t mask_mode;                /* FI_MASK_* */
  int32_t window_left;              /* -1: no window */
  int32_t backend;                  /* FI_BACKEND_* */
  int32_t pos_encoding_mode;        /* FI_POS_ENCODING_* the runs will use (the backend must serve it) */
  int32_t fixed_grid;               /* 1: CUDA-graph mode, launch shapes and workspace offsets depend only on
                                       batch_size and max_total_qo (paged caches, no custom mask, no KV split) */
  int32_t use_tensor_cores;         /* 1: tensor-core decode for any group size; 0 (default): for groups >= 4;
                                       -1: never (a variant whose hooks the tensor-core kernel lacks) */
  int32_t fixed_split_size;         /* 0 (default): the scheduler splits long requests' keys to fill the device;
                                       > 0 (a multiple of 16): every request's keys in pieces of this many, merged
                                       after (batch-invariant results); not with fixed_grid */
  int32_t disable_split_kv;         /* 1: one work item per query tile, never split (no merge) */
  int32_t max_total_qo;             /* fixed_grid: the most query rows (qo_indptr[batch_size]) a plan of this
                                       shape may have; runs take q, out and lse of this many rows. 0: batch_size
                                       (one row per request, the decode kernels). Ignored without fixed_grid */
} fi_prefill_plan_args;

typedef struct fi_prefill_plan_info {
  uint64_t host_bytes;       /* page-locked host staging the plan needs (0 on cpu) */
  uint64_t workspace_bytes;  /* workspace the run needs */
  uint64_t plan_bytes;       /* bytes of the integer plan (before the page indices) */
  uint64_t off_partial_o;    /* byte offsets in the workspace */
  uint64_t off_partial_lse;
  uint64_t off_indices;
  int64_t total_kv_len;      /* ragged: kv_indptr[batch] (rows of k/v); paged: sum of kv_len */
  int64_t mask_bytes;        /* bytes of the packed custom mask run expects (custom mode) */
  int32_t batch_size;
  int32_t num_qo_heads;
  int32_t num_kv_heads;
  int32_t head_dim_qk;
  int32_t head_dim_vo;
  int32_t page_size;
  int32_t q_dtype;
  int32_t kv_dtype;
  int32_t device;
  int32_t mask_mode;
  int32_t window_left;
  int32_t num_work;          /* work items (launch grid x num_kv_heads; padded in CUDA-graph mode) */
  int32_t cta_tile_q;        /* packed query rows per work item: 16, 64 or 128 */
  int32_t total_qo;          /* qo_indptr[batch]: rows of q and out */
  int32_t num_partials;      /* partial-state slots (query rows x chunks of split requests) */
  int32_t kv_chunks_max;     /* most KV chunks of one request (1: nothing split) */
  int32_t max_page_index;    /* paged: largest page index named by the table, -1 if none */
  int32_t nnz_pages;         /* paged: kv_indptr[batch] */
  int32_t any_split;
  int32_t backend;           /* FI_BACKEND_FA2, _FA3 or _CPU: the kernel family this plan runs on */
  int32_t kernel;            /* FI_KERNEL_*: the kernel this plan runs on */
  int32_t fixed_grid;
  int32_t chunk_tokens;      /* most keys of one work item of a split request (0: nothing split) */
  int32_t plan_serial;       /* also in the plan's header: a run on cpu checks that the workspace still holds this plan */
} fi_prefill_plan_info;

/* Validates the index arrays, schedules, and copies the plan into `workspace` (ordered on
 * `stream`). host_plan is page-locked staging of at least info->host_bytes (unused on cpu);
 * info is filled even when the call fails for a too small host_plan or workspace. */
FI_API int32_t fi_prefill_plan(const fi_prefill_plan_args* args, void* host_plan, uint64_t host_plan_bytes,
                               void* workspace, uint64_t workspace_bytes, void* stream,
                               fi_prefill_plan_info* info);

typedef struct fi_prefill_run_args {
  fi_tensor_desc q;            /* [total_qo, num_qo_heads, head_dim_qk] */
  fi_tensor_desc k;            /* ragged [total_kv, num_kv_heads, head_dim_qk]; paged [pages, page_size, num_kv_heads, head_dim_qk] */
  fi_tensor_desc v;            /* as k with head_dim_vo */
  fi_tensor_desc out;          /* [total_qo, num_qo_heads, head_dim_vo], q's dtype */
  fi_tensor_desc lse;          /* [total_qo, num_qo_heads] float32; data NULL when not wanted */
  fi_tensor_desc custom_mask;  /* custom mode: uint8 [mask_bytes], contiguous; else data NULL */
  /* MLA (DeepSeek's multi-head latent attention): the last rope_dim dims of every query and key
   * row come from q_rope [total_qo, num_qo_heads, rope_dim] and k_rope (k's shape with rope_dim
   * last), q and k holding the first head_dim_qk - rope_dim (the latent); v may be k itself. Data
   * NULL otherwise. The CPU backend serves it; CUDA plans refuse it (FI_ERR_UNSUPPORTED). */
  fi_tensor_desc q_rope;
  fi_tensor_desc k_rope;
  fi_prefill_plan_info plan;
  void* workspace;
  uint64_t workspace_bytes;
  int32_t pos_encoding_mode;   /* FI_POS_ENCODING_*: the plan's (its backend must serve it) */
  float sm_scale;
  float logits_soft_cap;       /* 0: off */
  float rope_scale;
  float rope_theta;
  float k_scale;               /* logits use sm_scale * k_scale; out is multiplied by v_scale */
  float v_scale;
  int32_t reserved;
} fi_prefill_run_args;

FI_API int32_t fi_prefill_run(const fi_prefill_run_args* args, void* stream);

/* fi_prefill_run with a generated attention variant (the kernel generator, lib/jit.ts):
 * variant_run is the entry the variant's library returns from fi_variant_entry(): for a CPU plan
 * one compiled from native/src/attention/prefill_cpu.h, for a CUDA plan one compiled from
 * prefill_variant.cuh for the plan's head dims and dtypes (it runs the plan's kernel: decode,
 * mma.sync or Hopper, instantiated with the variant's hooks). variant_params is its parameter
 * struct (laid out as that library says; pointers in it must be on the plan's device). Validates
 * like fi_prefill_run, then runs the variant's hooks (logits transform, mask) in place of the
 * built-in ALiBi / soft cap; use_softmax = 0 (the weights are the transformed logits, no
 * normalization) forbids an lse output. */
FI_API int32_t fi_prefill_run_variant(const fi_prefill_run_args* args, void* variant_run, const void* variant_params,
                                      int32_t use_softmax, void* stream);
/* ---- GEMM (FlashInfer's flashinfer.gemm) ----
 * out = alpha * op(a) op(b) + beta * out, op(x) = x or its transpose (trans_a, trans_b: the last
 * two dimensions swapped; any strides). a, b: [M, K] and [K, N] after op, or batched [batch, M, K]
 * and [batch, K, N]; float16, bfloat16 or float32, one dtype, out in a's dtype or float32; or
 * float8 (e4m3 / e5m2, each operand either) with out bfloat16, float16 or float32 (per-tensor
 * scales go in alpha); out: [batch,] M, N, not overlapping a or b. beta = 0 does not read out. The CPU backend accumulates in
 * float64 and rounds once (nearest even); CUDA tensors are refused (FI_ERR_UNSUPPORTED) until the
 * cuBLASLt backend exists. Nothing is written unless every check passes. */
FI_API int32_t fi_gemm(const fi_tensor_desc* a, const fi_tensor_desc* b, const fi_tensor_desc* out, int32_t trans_a, int32_t trans_b,
                       double alpha, double beta, void* stream);
/* ---- sampling (FlashInfer's flashinfer.sampling) ----
 * probs / logits: [rows, vocab] float32, one device, last dimension contiguous (any row stride).
 * A request b (0 <= b < batch) samples from row indices[b] (indices: [batch] int32, any stride),
 * or from row b when indices.data is NULL (batch = rows). Per-request parameter tensors are
 * [batch] (any stride, on the device of probs); when their data is NULL the scalar applies.
 * Randomness is Philox4x32-10 keyed by seed: request b draws uniform j from counter
 * offset + b * FI_SAMPLING_COUNTERS + j / 4 (word j % 4), so a (seed, offset) pair gives the same
 * tokens on every run of one backend, and cpu and cuda sample from the same distribution. Per
 * request keys: seeds [batch] int64 replaces seed, and offsets [batch] int64 replaces request b's
 * first counter (offsets[b], without the b * FI_SAMPLING_COUNTERS): with both, a request's draws
 * do not depend on its row or on the other requests of the call (a serving engine batching
 * requests that each carry their own seed).
 * Filters keep a token by its probability p (ties at a threshold are all kept):
 *   top-k:  fewer than k tokens of the row have a larger probability (k >= vocab keeps all);
 *   top-p:  the tokens of larger probability hold less than top_p of the row's total mass;
 *   min-p:  p >= min_p * (the row's largest probability), computed in float32;
 *   top-k and top-p together: both hold ("joint"); with FI_SAMPLING_TOP_K_FIRST the top-p mass
 *   is measured within the top-k tokens (top-p of the top-k renormalized distribution).
 * A token of probability 0 is never drawn. Checks of values (probabilities finite, >= 0, rows
 * summing to 1 within FI_SAMPLING_SUM_TOLERANCE, parameters in range, indices in [0, rows)) run
 * on cpu and fail with FI_ERR_INVALID_ARGUMENT; on cuda the values are not read on the host (no
 * synchronization): negative, NaN or infinite probabilities weigh 0, parameters are clamped
 * (top_k < 1 as 1, top_p outside (0, 1] into it, NaN as 1, min_p into [0, 1]), and a request
 * whose row has no positive weight, or whose index is outside [0, rows), gets token 0, so every
 * token written lies in [0, vocab). Both backends are deterministic (fixed reduction orders).
 * Nothing allocates or synchronizes on the device path (capturable). Ordered on `stream`. */
#define FI_SAMPLING_COUNTERS 16
#define FI_SAMPLING_SUM_TOLERANCE 1e-3
enum { FI_SAMPLING_TOP_K = 1, FI_SAMPLING_TOP_P = 2, FI_SAMPLING_MIN_P = 4, FI_SAMPLING_TOP_K_FIRST = 8 };

typedef struct fi_sampling_params {
  fi_tensor_desc probs;    /* [rows, vocab] float32: probabilities, or logits when from_logits */
  fi_tensor_desc indices;  /* [batch] int32, or data NULL */
  fi_tensor_desc out;      /* [batch] int32 sampled token ids */
  fi_tensor_desc top_k;    /* [batch] int32, or data NULL: top_k_val */
  fi_tensor_desc top_p;    /* [batch] float32, or data NULL: top_p_val */
  fi_tensor_desc min_p;    /* [batch] float32, or data NULL: min_p_val */
  uint64_t seed;
  uint64_t offset;
  double top_p_val;
  double min_p_val;
  int32_t top_k_val;
  int32_t filters;         /* FI_SAMPLING_* bits: 0, TOP_K, TOP_P, TOP_K|TOP_P (+TOP_K_FIRST), MIN_P */
  int32_t from_logits;     /* 1: sample from softmax(logits); no filters */
  int32_t deterministic;   /* both backends are always deterministic; kept for FlashInfer parity */
  int32_t reserved;
  fi_tensor_desc seeds;    /* [batch] int64, or data NULL: seed */
  fi_tensor_desc offsets;  /* [batch] int64, or data NULL: offset + b * FI_SAMPLING_COUNTERS */
} fi_sampling_params;

/* out[b] = a token drawn from row indices[b] of probs (or softmax of logits), filtered. */
FI_API int32_t fi_sampling_sample(const fi_sampling_params* params, void* stream);
/* out = softmax(logits / temperature) per row, in float32 (float64 on cpu). temperature: [rows]
 * float32 or data NULL (temperature_val); finite and > 0 (checked on cpu; cuda uses |t| and 1
 * for 0 or NaN). A row of only -inf gives zeros; logits may not be NaN or +inf on cpu. */
FI_API int32_t fi_sampling_softmax(const fi_tensor_desc* logits, const fi_tensor_desc* out,
                                   const fi_tensor_desc* temperature, double temperature_val, void* stream);
/* out = probs filtered by top-k (filter FI_SAMPLING_TOP_K) or top-p (FI_SAMPLING_TOP_P), divided by the
 * kept mass; other entries 0. top_k / top_p: [rows] or data NULL (the scalar). */
FI_API int32_t fi_sampling_renorm(const fi_tensor_desc* probs, const fi_tensor_desc* out, const fi_tensor_desc* top_k,
                                  const fi_tensor_desc* top_p, int32_t top_k_val, double top_p_val, int32_t filter,
                                  void* stream);
/* out = logits where fewer than k logits of the row are larger, else -inf. NaN counts as -inf. */
FI_API int32_t fi_sampling_top_k_mask_logits(const fi_tensor_desc* logits, const fi_tensor_desc* out,
                                             const fi_tensor_desc* top_k, int32_t top_k_val, void* stream);
/* Chain speculative sampling. draft_probs [batch, n, vocab], draft_token_ids [batch, n] int32,
 * target_probs [batch, n + 1, vocab]; writes output_token_ids [batch, n + 1], accepted_num and
 * emitted_num [batch] (int32). Draft token i of request b is accepted when u_i * q < p (q, p its
 * draft and target probabilities, u_i uniform j = i); emitted_num counts the accepted ones before
 * the first rejection, accepted_num all accepted ones. The output holds the emitted draft tokens,
 * then one token drawn (uniform j = n) from max(target - draft, 0) at the first rejected position
 * (from the target row there when that is all zero), or from target_probs[b, n] when every draft
 * token was accepted, then -1. Request b uses counters offset + b * ceil((n + 1) / 4) onward. On
 * cuda a draft token outside [0, vocab) counts as rejected. */
FI_API int32_t fi_sampling_chain_speculative(const fi_tensor_desc* draft_probs, const fi_tensor_desc* draft_token_ids,
                                             const fi_tensor_desc* target_probs, const fi_tensor_desc* output_token_ids,
                                             const fi_tensor_desc* accepted_num, const fi_tensor_desc* emitted_num,
                                             uint64_t seed, uint64_t offset, void* stream);

#ifdef __cplusplus
}
#endif
#endif /* FLASHINFER_H_ */

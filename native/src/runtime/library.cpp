// Library identity and ABI layouts: the sizes and field offsets of the header's structs, which
// the bindings ask for at load instead of typing byte offsets by hand.
#include <cstddef>
#include <cstring>

#include "../common/status.h"

namespace {

struct StructEntry {
  const char* name;
  uint64_t size;
};

#define FI_STRUCT(s) StructEntry{#s, sizeof(s)}

constexpr StructEntry kStructs[] = {
    FI_STRUCT(fi_tensor_desc),       FI_STRUCT(fi_device_properties), FI_STRUCT(fi_prefill_plan_args),
    FI_STRUCT(fi_prefill_plan_info), FI_STRUCT(fi_prefill_run_args),  FI_STRUCT(fi_sampling_params),
};

struct FieldEntry {
  const char* type;
  const char* field;
  uint64_t offset;
};

// Every field of every struct in flashinfer.h, in declaration order: offsetof makes the compiler
// check each name (test/runtime.test.ts checks that the list covers the header).
#define FI_FIELD(s, f) FieldEntry{#s, #f, offsetof(s, f)}

constexpr FieldEntry kFields[] = {
    FI_FIELD(fi_tensor_desc, data),
    FI_FIELD(fi_tensor_desc, device),
    FI_FIELD(fi_tensor_desc, dtype),
    FI_FIELD(fi_tensor_desc, ndim),
    FI_FIELD(fi_tensor_desc, reserved),
    FI_FIELD(fi_tensor_desc, shape),
    FI_FIELD(fi_tensor_desc, strides),

    FI_FIELD(fi_device_properties, name),
    FI_FIELD(fi_device_properties, total_memory),
    FI_FIELD(fi_device_properties, sm_count),
    FI_FIELD(fi_device_properties, major),
    FI_FIELD(fi_device_properties, minor),
    FI_FIELD(fi_device_properties, l2_cache_size),
    FI_FIELD(fi_device_properties, max_shared_memory_per_block_optin),
    FI_FIELD(fi_device_properties, memory_bus_width),
    FI_FIELD(fi_device_properties, memory_clock_khz),
    FI_FIELD(fi_device_properties, reserved),

    FI_FIELD(fi_prefill_plan_args, qo_indptr),
    FI_FIELD(fi_prefill_plan_args, kv_indptr),
    FI_FIELD(fi_prefill_plan_args, kv_indices),
    FI_FIELD(fi_prefill_plan_args, kv_last_page_len),
    FI_FIELD(fi_prefill_plan_args, batch_size),
    FI_FIELD(fi_prefill_plan_args, num_qo_heads),
    FI_FIELD(fi_prefill_plan_args, num_kv_heads),
    FI_FIELD(fi_prefill_plan_args, head_dim_qk),
    FI_FIELD(fi_prefill_plan_args, head_dim_vo),
    FI_FIELD(fi_prefill_plan_args, page_size),
    FI_FIELD(fi_prefill_plan_args, q_dtype),
    FI_FIELD(fi_prefill_plan_args, kv_dtype),
    FI_FIELD(fi_prefill_plan_args, device),
    FI_FIELD(fi_prefill_plan_args, mask_mode),
    FI_FIELD(fi_prefill_plan_args, window_left),
    FI_FIELD(fi_prefill_plan_args, backend),
    FI_FIELD(fi_prefill_plan_args, pos_encoding_mode),
    FI_FIELD(fi_prefill_plan_args, fixed_grid),
    FI_FIELD(fi_prefill_plan_args, use_tensor_cores),
    FI_FIELD(fi_prefill_plan_args, fixed_split_size),
    FI_FIELD(fi_prefill_plan_args, disable_split_kv),
    FI_FIELD(fi_prefill_plan_args, max_total_qo),

    FI_FIELD(fi_prefill_plan_info, host_bytes),
    FI_FIELD(fi_prefill_plan_info, workspace_bytes),
    FI_FIELD(fi_prefill_plan_info, plan_bytes),
    FI_FIELD(fi_prefill_plan_info, off_partial_o),
    FI_FIELD(fi_prefill_plan_info, off_partial_lse),
    FI_FIELD(fi_prefill_plan_info, off_indices),
    FI_FIELD(fi_prefill_plan_info, total_kv_len),
    FI_FIELD(fi_prefill_plan_info, mask_bytes),
    FI_FIELD(fi_prefill_plan_info, batch_size),
    FI_FIELD(fi_prefill_plan_info, num_qo_heads),
    FI_FIELD(fi_prefill_plan_info, num_kv_heads),
    FI_FIELD(fi_prefill_plan_info, head_dim_qk),
    FI_FIELD(fi_prefill_plan_info, head_dim_vo),
    FI_FIELD(fi_prefill_plan_info, page_size),
    FI_FIELD(fi_prefill_plan_info, q_dtype),
    FI_FIELD(fi_prefill_plan_info, kv_dtype),
    FI_FIELD(fi_prefill_plan_info, device),
    FI_FIELD(fi_prefill_plan_info, mask_mode),
    FI_FIELD(fi_prefill_plan_info, window_left),
    FI_FIELD(fi_prefill_plan_info, num_work),
    FI_FIELD(fi_prefill_plan_info, cta_tile_q),
    FI_FIELD(fi_prefill_plan_info, total_qo),
    FI_FIELD(fi_prefill_plan_info, num_partials),
    FI_FIELD(fi_prefill_plan_info, kv_chunks_max),
    FI_FIELD(fi_prefill_plan_info, max_page_index),
    FI_FIELD(fi_prefill_plan_info, nnz_pages),
    FI_FIELD(fi_prefill_plan_info, any_split),
    FI_FIELD(fi_prefill_plan_info, backend),
    FI_FIELD(fi_prefill_plan_info, kernel),
    FI_FIELD(fi_prefill_plan_info, fixed_grid),
    FI_FIELD(fi_prefill_plan_info, chunk_tokens),
    FI_FIELD(fi_prefill_plan_info, plan_serial),

    FI_FIELD(fi_prefill_run_args, q),
    FI_FIELD(fi_prefill_run_args, k),
    FI_FIELD(fi_prefill_run_args, v),
    FI_FIELD(fi_prefill_run_args, out),
    FI_FIELD(fi_prefill_run_args, lse),
    FI_FIELD(fi_prefill_run_args, custom_mask),
    FI_FIELD(fi_prefill_run_args, q_rope),
    FI_FIELD(fi_prefill_run_args, k_rope),
    FI_FIELD(fi_prefill_run_args, plan),
    FI_FIELD(fi_prefill_run_args, workspace),
    FI_FIELD(fi_prefill_run_args, workspace_bytes),
    FI_FIELD(fi_prefill_run_args, pos_encoding_mode),
    FI_FIELD(fi_prefill_run_args, sm_scale),
    FI_FIELD(fi_prefill_run_args, logits_soft_cap),
    FI_FIELD(fi_prefill_run_args, rope_scale),
    FI_FIELD(fi_prefill_run_args, rope_theta),
    FI_FIELD(fi_prefill_run_args, k_scale),
    FI_FIELD(fi_prefill_run_args, v_scale),
    FI_FIELD(fi_prefill_run_args, reserved),

    FI_FIELD(fi_sampling_params, probs),
    FI_FIELD(fi_sampling_params, indices),
    FI_FIELD(fi_sampling_params, out),
    FI_FIELD(fi_sampling_params, top_k),
    FI_FIELD(fi_sampling_params, top_p),
    FI_FIELD(fi_sampling_params, min_p),
    FI_FIELD(fi_sampling_params, seed),
    FI_FIELD(fi_sampling_params, offset),
    FI_FIELD(fi_sampling_params, top_p_val),
    FI_FIELD(fi_sampling_params, min_p_val),
    FI_FIELD(fi_sampling_params, top_k_val),
    FI_FIELD(fi_sampling_params, filters),
    FI_FIELD(fi_sampling_params, from_logits),
    FI_FIELD(fi_sampling_params, deterministic),
    FI_FIELD(fi_sampling_params, reserved),
    FI_FIELD(fi_sampling_params, seeds),
    FI_FIELD(fi_sampling_params, offsets),
};

#undef FI_FIELD
#undef FI_STRUCT

}  // namespace

extern "C" {

FI_API const char* fi_version(void) { return "0.1.0"; }

FI_API int32_t fi_has_cuda_backend(void) {
#ifdef FI_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

FI_API uint64_t fi_struct_size(const char* which) {
  if (which == nullptr) return 0;
  for (const StructEntry& s : kStructs)
    if (std::strcmp(which, s.name) == 0) return s.size;
  return 0;
}

FI_API int64_t fi_struct_offset(const char* which, const char* field) {
  if (which == nullptr || field == nullptr) return -1;
  for (const FieldEntry& f : kFields)
    if (std::strcmp(which, f.type) == 0 && std::strcmp(field, f.field) == 0) return int64_t(f.offset);
  return -1;
}

}  // extern "C"

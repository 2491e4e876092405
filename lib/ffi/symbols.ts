// The symbol table of libflashinfer.so (native/include/flashinfer.h), for bun:ffi's dlopen.
import { FFIType } from "bun:ffi";

const { i32, u64, f64, ptr, cstring } = FFIType;

export const symbols = {
  fi_version: { args: [], returns: cstring },
  fi_last_error: { args: [], returns: cstring },
  fi_has_cuda_backend: { args: [], returns: i32 },
  fi_struct_size: { args: [ptr], returns: u64 },

  fi_device_count: { args: [ptr], returns: i32 },
  fi_device_get_properties: { args: [i32, ptr], returns: i32 },
  fi_device_synchronize: { args: [i32], returns: i32 },
  fi_device_mem_info: { args: [i32, ptr, ptr], returns: i32 },

  fi_device_malloc: { args: [i32, u64, ptr, ptr], returns: i32 },
  fi_device_free: { args: [i32, ptr, ptr], returns: i32 },
  fi_host_malloc: { args: [u64, ptr, ptr], returns: i32 },
  fi_host_free: { args: [ptr, i32], returns: i32 },
  fi_memcpy: { args: [ptr, i32, ptr, i32, u64, ptr], returns: i32 },

  fi_tensor_copy: { args: [ptr, ptr, ptr], returns: i32 },
  fi_tensor_fill: { args: [ptr, f64, ptr], returns: i32 },
  fi_tensor_random: { args: [ptr, i32, u64, u64, f64, f64, ptr], returns: i32 },

  fi_stream_create: { args: [i32, i32, ptr], returns: i32 },
  fi_stream_destroy: { args: [ptr], returns: i32 },
  fi_stream_synchronize: { args: [ptr], returns: i32 },
  fi_stream_query: { args: [ptr, ptr], returns: i32 },
  fi_stream_wait_event: { args: [ptr, ptr], returns: i32 },
  fi_event_create: { args: [i32, i32, ptr], returns: i32 },
  fi_event_destroy: { args: [ptr], returns: i32 },
  fi_event_record: { args: [ptr, ptr], returns: i32 },
  fi_event_query: { args: [ptr, ptr], returns: i32 },
  fi_event_synchronize: { args: [ptr], returns: i32 },
  fi_event_elapsed_ms: { args: [ptr, ptr, ptr], returns: i32 },
  fi_graph_begin_capture: { args: [ptr], returns: i32 },
  fi_graph_end_capture: { args: [ptr, ptr], returns: i32 },
  fi_graph_launch: { args: [ptr, ptr], returns: i32 },
  fi_graph_destroy: { args: [ptr], returns: i32 },

  fi_decode_plan: { args: [ptr, ptr, u64, ptr, u64, ptr, ptr], returns: i32 },
  fi_decode_run: { args: [ptr, ptr], returns: i32 },
  fi_cascade_merge_state: { args: [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr], returns: i32 },
  fi_cascade_merge_states: { args: [ptr, ptr, ptr, ptr, ptr], returns: i32 },
  fi_norm_rmsnorm: { args: [ptr, ptr, ptr, f64, i32, ptr], returns: i32 },
  fi_norm_fused_add_rmsnorm: { args: [ptr, ptr, ptr, f64, i32, ptr], returns: i32 },
  fi_norm_layernorm: { args: [ptr, ptr, ptr, ptr, f64, ptr], returns: i32 },
  fi_page_get_seq_lens: { args: [ptr, ptr, i32, ptr, ptr], returns: i32 },
  fi_page_get_batch_indices_positions: { args: [ptr, ptr, ptr, ptr, ptr], returns: i32 },
  fi_page_append_paged_kv_cache: { args: [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, ptr], returns: i32 },
  fi_activation_silu_and_mul: { args: [ptr, ptr, ptr], returns: i32 },
  fi_activation_gelu_and_mul: { args: [ptr, ptr, ptr], returns: i32 },
  fi_activation_gelu_tanh_and_mul: { args: [ptr, ptr, ptr], returns: i32 },
  fi_quantization_packbits: { args: [ptr, ptr, i32, ptr], returns: i32 },
  fi_quantization_segment_packbits: { args: [ptr, ptr, ptr, ptr, i32, ptr], returns: i32 },
  fi_rope_apply_rope: { args: [ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, f64, f64, i32, f64, f64, f64, ptr], returns: i32 },
  fi_rope_apply_rope_pos_ids: { args: [ptr, ptr, ptr, ptr, ptr, i32, i32, f64, f64, i32, f64, f64, f64, ptr], returns: i32 },
  fi_rope_apply_cos_sin_cache: { args: [ptr, ptr, ptr, ptr, ptr, ptr, i32, ptr], returns: i32 },
  fi_prefill_plan: { args: [ptr, ptr, u64, ptr, u64, ptr, ptr], returns: i32 },
  fi_prefill_run: { args: [ptr, ptr], returns: i32 },
} as const;

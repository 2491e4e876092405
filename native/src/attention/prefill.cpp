// fi_prefill_run: validates a run (prefill or decode) against its plan, fills PrefillParams, and
// dispatches to the CPU backend or to the CUDA kernel the plan chose.
#include <cmath>
#include <initializer_list>

#include "../common/runtime.h"
#include "../common/tensor_desc.h"
#include "prefill.h"

namespace fi {
namespace {

void require_shape(const fi_tensor_desc& t, const char* name, std::initializer_list<int64_t> shape, const char* dims) {
  bool same = t.ndim == int32_t(shape.size());
  int d = 0;
  for (int64_t n : shape) same = same && t.shape[d++] == n;
  std::string want = "[";
  d = 0;
  for (int64_t n : shape) want += (d++ ? ", " : "") + std::to_string(n);
  require(same, name, ": expected shape ", want, "] (", dims, "), got ", shape_string(t));
}

// MLA's rope parts: both or neither; dims from q_rope's last; on CUDA only for the MLA kernel's dims.
int32_t validate_rope_parts(const fi_prefill_run_args& a) {
  const fi_prefill_plan_info& p = a.plan;
  if (a.q_rope.data == nullptr && a.k_rope.data == nullptr) return 0;
  require(a.q_rope.data != nullptr && a.k_rope.data != nullptr, "q_rope, k_rope: give both (MLA) or neither");
  validate_desc(&a.q_rope, "q_rope");
  validate_desc(&a.k_rope, "k_rope");
#ifdef FI_WITH_CUDA
  if (p.device != FI_DEVICE_CPU && !mla_cuda_supports(p.head_dim_qk, p.head_dim_vo, p.q_dtype, p.kv_dtype))
    fail(FI_ERR_UNSUPPORTED, "q_rope, k_rope: on CUDA, rope parts are MLA's: head dims (576, 512) with 16-bit q and latent of one dtype; got (",
         p.head_dim_qk, ", ", p.head_dim_vo, ")");
#endif
  require(a.q_rope.ndim == 3, "q_rope: expected [total_qo, num_qo_heads, rope_dim], got ", shape_string(a.q_rope));
  const int32_t rope_dim = int32_t(a.q_rope.shape[2]);
  require(rope_dim >= 1 && rope_dim < p.head_dim_qk, "q_rope: its last dim (rope_dim) must be in 1..", p.head_dim_qk - 1,
          " (head_dim_qk - 1), got ", rope_dim);
  require(a.q_rope.shape[0] == p.total_qo && a.q_rope.shape[1] == p.num_qo_heads, "q_rope: expected [", p.total_qo, ", ",
          p.num_qo_heads, ", ", rope_dim, "], got ", shape_string(a.q_rope));
  for (const auto* t : {&a.q_rope, &a.k_rope}) {
    const char* name = t == &a.q_rope ? "q_rope" : "k_rope";
    require(t->device == p.device, name, ": is on ", device_string(t->device), ", the plan was made for ", device_string(p.device));
    require(t->strides[t->ndim - 1] == 1, name, ": the last axis must be contiguous (stride 1)");
    require(t->dtype == (t == &a.q_rope ? p.q_dtype : p.kv_dtype), name, ": dtype ", dtype_name(t->dtype), " differs from ",
            t == &a.q_rope ? "q's" : "k's");
  }
  require(a.k_rope.ndim == a.k.ndim, "k_rope: expected ", a.k.ndim, " dimensions as k, got ", shape_string(a.k_rope));
  for (int d = 0; d + 1 < a.k.ndim; ++d)
    require(a.k_rope.shape[d] == a.k.shape[d], "k_rope: shape ", shape_string(a.k_rope), " must equal k's ", shape_string(a.k),
            " except in the last dim (rope_dim ", rope_dim, ")");
  require(a.k_rope.shape[a.k.ndim - 1] == rope_dim, "k_rope: its last dim must be rope_dim = ", rope_dim, " (q_rope's), got ",
          shape_string(a.k_rope));
  return rope_dim;
}

void validate_run(const fi_prefill_run_args& a) {
  const fi_prefill_plan_info& p = a.plan;
  require(p.batch_size >= 1 && p.num_kv_heads >= 1 && p.num_qo_heads % p.num_kv_heads == 0 &&
              (p.cta_tile_q == 16 || p.cta_tile_q == 64 || p.cta_tile_q == 128),
          "plan: not a plan made by fi_prefill_plan (run before plan?)");
  validate_desc(&a.q, "q");
  validate_desc(&a.k, "k");
  validate_desc(&a.v, "v");
  validate_desc(&a.out, "out");
  const bool kernel_ok = p.device == FI_DEVICE_CPU ? p.kernel == FI_KERNEL_CPU && p.backend == FI_BACKEND_CPU
                        : p.kernel == FI_KERNEL_FA3                  ? p.backend == FI_BACKEND_FA3
                                                                     : p.kernel >= FI_KERNEL_DECODE && p.kernel <= FI_KERNEL_FA2 &&
                                                                           p.backend == FI_BACKEND_FA2;
  require(kernel_ok, "plan: not a plan made by fi_prefill_plan (kernel ", p.kernel, ", backend ", p.backend, " on ",
          device_string(p.device), ")");
  if (p.backend == FI_BACKEND_FA3 && a.pos_encoding_mode == FI_POS_ENCODING_ROPE_LLAMA)
    fail(FI_ERR_UNSUPPORTED, "pos_encoding_mode: the plan runs on the fa3 backend, which has no ROPE_LLAMA; plan with it (auto picks fa2)");
  require(a.q.device == p.device, "q: is on ", device_string(a.q.device), ", the plan was made for ", device_string(p.device));
  const int32_t rope_dim = validate_rope_parts(a);
  require_shape(a.q, "q", {p.total_qo, p.num_qo_heads, p.head_dim_qk - rope_dim},
                rope_dim ? "total_qo, num_qo_heads, head_dim_qk - rope_dim" : "total_qo, num_qo_heads, head_dim_qk");
  require(a.q.dtype == p.q_dtype, "q: dtype ", dtype_name(a.q.dtype), " differs from the plan's q data type ", dtype_name(p.q_dtype));
  require(a.q.strides[2] == 1, "q: the head_dim axis must be contiguous (stride 1)");
  for (const auto* kv : {&a.k, &a.v}) {
    const char* name = kv == &a.k ? "k" : "v";
    const int64_t dim = kv == &a.k ? p.head_dim_qk - rope_dim : p.head_dim_vo;
    require(kv->device == p.device, name, ": is on ", device_string(kv->device), ", the plan was made for ", device_string(p.device));
    if (p.page_size == 0) {
      require_shape(*kv, name, {p.total_kv_len, p.num_kv_heads, dim}, kv == &a.k ? "kv_indptr[batch], num_kv_heads, head_dim_qk"
                                                                                   : "kv_indptr[batch], num_kv_heads, head_dim_vo");
    } else {
      require(kv->ndim == 4 && kv->shape[1] == p.page_size && kv->shape[2] == p.num_kv_heads && kv->shape[3] == dim, name,
              ": expected a cache of shape [pages, ", p.page_size, ", ", p.num_kv_heads, ", ", dim,
              "] (page_size, num_kv_heads, head_dim), got ", shape_string(*kv));
      require(p.max_page_index < kv->shape[0], "kv_indices: page index ", p.max_page_index, " is out of range for a cache of ",
              kv->shape[0], " pages");
    }
    require(kv->dtype == p.kv_dtype, name, ": dtype ", dtype_name(kv->dtype), " differs from the plan's kv data type ",
            dtype_name(p.kv_dtype));
    require(kv->strides[kv->ndim - 1] == 1, name, ": the head_dim axis must be contiguous (stride 1)");
  }
  require_shape(a.out, "out", {p.total_qo, p.num_qo_heads, p.head_dim_vo}, "total_qo, num_qo_heads, head_dim_vo");
  require(a.out.dtype == a.q.dtype, "out: dtype ", dtype_name(a.out.dtype), " must equal q's ", dtype_name(a.q.dtype));
  require(a.out.device == p.device, "out: must be on ", device_string(p.device));
  require(a.out.strides[2] == 1, "out: the head_dim axis must be contiguous (stride 1)");
  require(p.total_qo == 0 || ((a.out.strides[0] != 0 || p.total_qo == 1) && (a.out.strides[1] != 0 || p.num_qo_heads == 1)),
          "out: must not be a broadcast view");
  if (a.lse.data != nullptr) {
    validate_desc(&a.lse, "lse");
    require_shape(a.lse, "lse", {p.total_qo, p.num_qo_heads}, "total_qo, num_qo_heads");
    require(a.lse.dtype == FI_FLOAT32, "lse: expected float32, got ", dtype_name(a.lse.dtype));
    require(a.lse.device == p.device, "lse: must be on ", device_string(p.device));
  }
  if (p.mask_mode == FI_MASK_CUSTOM) {
    require(a.custom_mask.data != nullptr || p.mask_bytes == 0, "custom_mask: the plan has a custom mask, but none was given");
    if (a.custom_mask.data != nullptr) {
      validate_desc(&a.custom_mask, "custom_mask");
      require(a.custom_mask.ndim == 1 && a.custom_mask.shape[0] == p.mask_bytes, "custom_mask: expected [", p.mask_bytes,
              "] packed bytes (sum over requests of ceil(qo_len * kv_len / 8)), got ", shape_string(a.custom_mask));
      require(a.custom_mask.dtype == FI_UINT8, "custom_mask: expected uint8, got ", dtype_name(a.custom_mask.dtype));
      require(a.custom_mask.strides[0] == 1 || p.mask_bytes <= 1, "custom_mask: must be contiguous");
      require(a.custom_mask.device == p.device, "custom_mask: must be on ", device_string(p.device));
    }
  } else {
    require(a.custom_mask.data == nullptr, "custom_mask: the plan was made without a custom mask");
  }
  require(a.workspace != nullptr && a.workspace_bytes >= p.workspace_bytes, "workspace: the plan needs ", p.workspace_bytes,
          " bytes, got ", a.workspace_bytes);
  require(a.pos_encoding_mode >= FI_POS_ENCODING_NONE && a.pos_encoding_mode <= FI_POS_ENCODING_ALIBI,
          "pos_encoding_mode: expected NONE (0), ROPE_LLAMA (1) or ALIBI (2), got ", a.pos_encoding_mode);
  require(a.pos_encoding_mode != FI_POS_ENCODING_ROPE_LLAMA || p.head_dim_qk % 2 == 0,
          "pos_encoding_mode: ROPE_LLAMA needs an even head_dim_qk, got ", p.head_dim_qk);
  require(std::isfinite(a.sm_scale), "sm_scale: must be finite");
  require(a.logits_soft_cap >= 0 && std::isfinite(a.logits_soft_cap), "logits_soft_cap: expected >= 0 (0 = off), got ",
          a.logits_soft_cap);
  require(a.rope_scale > 0 && a.rope_theta > 0, "rope_scale, rope_theta: must be > 0");
  require(std::isfinite(a.k_scale) && std::isfinite(a.v_scale), "k_scale, v_scale: must be finite");
}

PrefillParams make_params(const fi_prefill_run_args& a) {
  const fi_prefill_plan_info& p = a.plan;
  PrefillParams x{};
  x.q = a.q.data;
  x.k = a.k.data;
  x.v = a.v.data;
  x.out = a.out.data;
  x.lse = static_cast<float*>(a.lse.data);
  x.custom_mask = static_cast<const uint8_t*>(a.custom_mask.data);
  if (a.q_rope.data != nullptr) {  // validated: MLA's rope parts
    x.q_rope = a.q_rope.data;
    x.k_rope = a.k_rope.data;
    x.rope_dim = int32_t(a.q_rope.shape[2]);
    x.q_rope_stride_n = a.q_rope.strides[0];
    x.q_rope_stride_h = a.q_rope.strides[1];
    const int r = p.page_size > 0 ? 1 : 0;
    x.k_rope_stride_page = r ? a.k_rope.strides[0] : 0;
    x.k_rope_stride_n = a.k_rope.strides[r];
    x.k_rope_stride_h = a.k_rope.strides[r + 1];
  }
  x.q_stride_n = a.q.strides[0];
  x.q_stride_h = a.q.strides[1];
  const int o = p.page_size > 0 ? 1 : 0;  // paged views have a leading page axis
  x.k_stride_page = o ? a.k.strides[0] : 0;
  x.k_stride_n = a.k.strides[o];
  x.k_stride_h = a.k.strides[o + 1];
  x.v_stride_page = o ? a.v.strides[0] : 0;
  x.v_stride_n = a.v.strides[o];
  x.v_stride_h = a.v.strides[o + 1];
  x.out_stride_n = a.out.strides[0];
  x.out_stride_h = a.out.strides[1];
  x.lse_stride_n = a.lse.data ? a.lse.strides[0] : 0;
  x.lse_stride_h = a.lse.data ? a.lse.strides[1] : 0;
  x.plan = prefill_plan_view(a.workspace, p.num_work, p.batch_size, p.total_qo, p.off_indices);
  x.partial_o = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + p.off_partial_o);
  x.partial_lse = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + p.off_partial_lse);
  x.num_work = p.num_work;
  x.batch_size = p.batch_size;
  x.total_qo = p.total_qo;
  x.cta_tile_q = p.cta_tile_q;
  x.any_split = p.any_split;
  x.kv_chunks_max = p.kv_chunks_max;
  x.num_qo_heads = p.num_qo_heads;
  x.num_kv_heads = p.num_kv_heads;
  x.head_dim_qk = p.head_dim_qk;
  x.head_dim_vo = p.head_dim_vo;
  x.page_size = p.page_size;
  x.q_dtype = p.q_dtype;
  x.kv_dtype = p.kv_dtype;
  x.mask_mode = p.mask_mode;
  x.pos_encoding = a.pos_encoding_mode;
  x.window_left = p.window_left;
  x.backend = p.backend;
  x.kernel = p.kernel;
  x.sm_scale = a.sm_scale;
  x.logits_soft_cap = a.logits_soft_cap;
  x.rope_scale = a.rope_scale;
  x.rope_theta = a.rope_theta;
  x.k_scale = a.k_scale;
  x.v_scale = a.v_scale;
  return x;
}

}  // namespace
}  // namespace fi

using namespace fi;

// The entries of a generated variant library (lib/jit.ts). CPU: the template of prefill_cpu.h
// instantiated with the user's variant. CUDA: the engine's kernels instantiated with it for one
// configuration (prefill_variant.cuh); it reports errors as a status and a message.
using VariantRunCpu = void (*)(const PrefillParams*, const void*);
using VariantRunCuda = int32_t (*)(const PrefillParams*, const void*, void*, char*, int64_t);

extern "C" FI_API int32_t fi_prefill_run_variant(const fi_prefill_run_args* args, void* variant_run, const void* variant_params,
                                                 int32_t use_softmax, void* stream) {
  return guard([&] {
    require(args != nullptr && variant_run != nullptr, "args, variant_run: null pointer");
    validate_run(*args);
    const fi_prefill_plan_info& p = args->plan;
    require(use_softmax || args->lse.data == nullptr, "lse: a variant without softmax (useSoftmax: false) has no log-sum-exp");
    if (p.num_work == 0) return;
    const PrefillParams params = make_params(*args);
    if (p.device == FI_DEVICE_CPU) {
      require_plan_in_workspace(args->workspace, p.plan_serial);
      return reinterpret_cast<VariantRunCpu>(variant_run)(&params, variant_params);
    }
#ifdef FI_WITH_CUDA
    set_device(p.device);
    prefill_check_cuda(params);
    char message[1024] = "";
    const int32_t status = reinterpret_cast<VariantRunCuda>(variant_run)(&params, variant_params, stream, message, sizeof message);
    if (status != FI_OK) fail(status, "variant: ", message);
#else
    fail(FI_ERR_UNSUPPORTED, "variant: this library has no CUDA backend; the plan is for ", device_string(p.device));
#endif
  });
}

extern "C" FI_API int32_t fi_prefill_run(const fi_prefill_run_args* args, void* stream) {
  return guard([&] {
    require(args != nullptr, "args: null pointer");
    validate_run(*args);
    const fi_prefill_plan_info& p = args->plan;
#ifdef FI_WITH_CUDA
    if (p.device >= 0 && !prefill_cuda_supports(p.head_dim_qk, p.head_dim_vo, p.q_dtype, p.kv_dtype))
      fail(FI_ERR_UNSUPPORTED, "head_dim_qk, head_dim_vo, q_dtype, kv_dtype: the CUDA prefill kernel is not built for (", p.head_dim_qk,
           ", ", p.head_dim_vo, ", ", dtype_name(p.q_dtype), ", ", dtype_name(p.kv_dtype), ")");
#endif
    if (p.num_work == 0) return;  // no query rows: nothing to write
    const PrefillParams params = make_params(*args);
    if (p.device == FI_DEVICE_CPU) {
      require_plan_in_workspace(args->workspace, p.plan_serial);
      return prefill_run_cpu(params);
    }
#ifdef FI_WITH_CUDA
    set_device(p.device);
    prefill_run_cuda(params, stream);
#endif
  });
}

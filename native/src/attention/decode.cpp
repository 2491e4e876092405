// fi_decode_run: validates a run against its plan, then dispatches to the CPU or CUDA backend.
#include <cmath>

#include "../common/runtime.h"
#include "../common/tensor_desc.h"
#include "decode.h"

namespace fi {
namespace {

void require_shape(const fi_tensor_desc& t, const char* name, std::initializer_list<int64_t> shape) {
  bool same = t.ndim == int32_t(shape.size());
  int d = 0;
  for (int64_t n : shape) same = same && t.shape[d++] == n;
  std::string want = "[";
  d = 0;
  for (int64_t n : shape) want += (d++ ? ", " : "") + std::to_string(n);
  require(same, name, ": expected shape ", want, "], got ", shape_string(t));
}

void validate_run(const fi_decode_run_args& a) {
  const fi_decode_plan_info& p = a.plan;
  require(p.batch_size >= 1 && p.num_work >= 1 && p.num_kv_heads >= 1 && p.num_qo_heads % p.num_kv_heads == 0,
          "plan: not a plan made by fi_decode_plan (run before plan?)");
  validate_desc(&a.q, "q");
  validate_desc(&a.k, "k");
  validate_desc(&a.v, "v");
  validate_desc(&a.out, "out");
  require(a.q.device == p.device, "q: is on ", device_string(a.q.device), ", the plan was made for ", device_string(p.device));
  require_shape(a.q, "q", {p.batch_size, p.num_qo_heads, p.head_dim});
  require(a.q.dtype == p.q_dtype, "q: dtype ", dtype_name(a.q.dtype), " differs from the plan's q data type ", dtype_name(p.q_dtype));
  for (const auto* kv : {&a.k, &a.v}) {
    const char* name = kv == &a.k ? "k" : "v";
    require(kv->device == p.device, name, ": is on ", device_string(kv->device), ", the plan was made for ", device_string(p.device));
    require(kv->ndim == 4 && kv->shape[1] == p.page_size && kv->shape[2] == p.num_kv_heads && kv->shape[3] == p.head_dim,
            name, ": expected a cache of shape [pages, ", p.page_size, ", ", p.num_kv_heads, ", ", p.head_dim,
            "] (page_size, num_kv_heads, head_dim), got ", shape_string(*kv));
    require(kv->dtype == p.kv_dtype, name, ": dtype ", dtype_name(kv->dtype), " differs from the plan's kv data type ", dtype_name(p.kv_dtype));
    require(kv->strides[3] == 1, name, ": the head_dim axis must be contiguous (stride 1)");
    require(p.max_page_index < kv->shape[0], "indices: page index ", p.max_page_index, " is out of range for a cache of ",
            kv->shape[0], " pages");
  }
  require_shape(a.out, "out", {p.batch_size, p.num_qo_heads, p.head_dim});
  require(a.out.dtype == a.q.dtype, "out: dtype ", dtype_name(a.out.dtype), " must equal q's ", dtype_name(a.q.dtype));
  require(a.out.device == p.device, "out: must be on ", device_string(p.device));
  require(a.q.strides[2] == 1 && a.out.strides[2] == 1, "q, out: the head_dim axis must be contiguous (stride 1)");
  if (a.lse.data != nullptr) {
    validate_desc(&a.lse, "lse");
    require_shape(a.lse, "lse", {p.batch_size, p.num_qo_heads});
    require(a.lse.dtype == FI_FLOAT32, "lse: expected float32, got ", dtype_name(a.lse.dtype));
    require(a.lse.device == p.device, "lse: must be on ", device_string(p.device));
  }
  require(a.workspace != nullptr && a.workspace_bytes >= p.workspace_bytes, "workspace: the plan needs ", p.workspace_bytes,
          " bytes, got ", a.workspace_bytes);
  require(a.pos_encoding_mode >= FI_POS_ENCODING_NONE && a.pos_encoding_mode <= FI_POS_ENCODING_ALIBI,
          "pos_encoding_mode: expected NONE (0), ROPE_LLAMA (1) or ALIBI (2), got ", a.pos_encoding_mode);
  require(a.window_left >= -1, "window_left: expected -1 (off) or >= 0, got ", a.window_left);
  require(std::isfinite(a.sm_scale), "sm_scale: must be finite");
  require(a.logits_soft_cap >= 0 && std::isfinite(a.logits_soft_cap), "logits_soft_cap: expected >= 0 (0 = off), got ", a.logits_soft_cap);
  require(a.rope_scale > 0 && a.rope_theta > 0, "rope_scale, rope_theta: must be > 0");
  require(std::isfinite(a.k_scale) && std::isfinite(a.v_scale), "k_scale, v_scale: must be finite");
}

}  // namespace
}  // namespace fi

using namespace fi;

extern "C" FI_API int32_t fi_decode_run(const fi_decode_run_args* args, void* stream) {
  return guard([&] {
    require(args != nullptr, "args: null pointer");
    validate_run(*args);
    if (args->plan.device == FI_DEVICE_CPU) {
      require_plan_in_workspace(args->workspace, args->plan.plan_serial);
      return decode_run_cpu(*args);
    }
#ifdef FI_WITH_CUDA
    set_device(args->plan.device);
    decode_run_cuda(*args, stream);
#endif
  });
}

// The decode entries of a generated variant's library (lib/jit.ts): CPU, decode_cpu.h instantiated
// with the variant; CUDA, prefill_variant.cuh's, which reports errors as a status and a message.
using VariantRunDecodeCpu = void (*)(const fi_decode_run_args*, const void*);
using VariantRunDecodeCuda = int32_t (*)(const fi_decode_run_args*, const void*, void*, char*, int64_t);

extern "C" FI_API int32_t fi_decode_run_variant(const fi_decode_run_args* args, void* variant_run, const void* variant_params,
                                                int32_t use_softmax, void* stream) {
  return guard([&] {
    require(args != nullptr && variant_run != nullptr, "args, variant_run: null pointer");
    validate_run(*args);
    require(use_softmax || args->lse.data == nullptr, "lse: a variant without softmax (useSoftmax: false) has no log-sum-exp");
    if (args->plan.device == FI_DEVICE_CPU) {
      require_plan_in_workspace(args->workspace, args->plan.plan_serial);
      return reinterpret_cast<VariantRunDecodeCpu>(variant_run)(args, variant_params);
    }
#ifdef FI_WITH_CUDA
    set_device(args->plan.device);
    char message[1024] = "";
    const int32_t status = reinterpret_cast<VariantRunDecodeCuda>(variant_run)(args, variant_params, stream, message, sizeof message);
    if (status != FI_OK) fail(status, "variant: ", message);
#else
    fail(FI_ERR_UNSUPPORTED, "variant: this library has no CUDA backend; the plan is for ", device_string(args->plan.device));
#endif
  });
}

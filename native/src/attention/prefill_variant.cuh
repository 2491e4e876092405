// The CUDA side of a generated attention variant (lib/jit.ts); included only by the generated
// sources, never by libflashinfer itself. The generated file defines, before including this:
//   FI_VARIANT_DQK, FI_VARIANT_DVO   head dims of the one configuration it is built for
//   FI_VARIANT_DT                    q dtype (__half or __nv_bfloat16)
//   FI_VARIANT_KV_KINDS              prefill_detail::kKv16 (kv in q's dtype) or kKvFp8
// and, after it, fi_variant::Variant (deriving from prefill_detail::DefaultVariant, with
// KernelParams extending PrefillKernelParams by the variant's parameter struct `vp`) and
// FI_VARIANT_CUDA_ENTRY(Variant), which exports fi_variant_run_cuda: the mma.sync (fa2) kernels
// and the merge, instantiated for that variant and configuration only.
//
// The library is linked on its own (static cudart, no reference into libflashinfer), so it
// carries its own copy of the two runtime helpers the kernel launchers call; its errors cross
// back as a status and a message, never as an exception.
#pragma once
#include <cstdio>
#include <cstring>

#include "prefill_kernels.cuh"

namespace fi {

void cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();
  fail(err == cudaErrorMemoryAllocation ? FI_ERR_OUT_OF_MEMORY : FI_ERR_CUDA, what, ": ", cudaGetErrorString(err));
}

namespace prefill_detail {

template <class Variant>
int32_t run_generated_variant(const PrefillParams* a, const void* params, void* stream, char* message, int64_t message_size) {
  constexpr int32_t q_dtype = std::is_same_v<FI_VARIANT_DT, __half> ? FI_FLOAT16 : FI_BFLOAT16;
  auto report = [&](int32_t code, const char* what) {
    if (message && message_size > 0) std::snprintf(message, size_t(message_size), "%s", what);
    return code;
  };
  try {
    const bool kv_ok = (FI_VARIANT_KV_KINDS == kKv16) ? a->kv_dtype == q_dtype
                                                      : a->kv_dtype == FI_FLOAT8_E4M3FN || a->kv_dtype == FI_FLOAT8_E5M2;
    require(a->head_dim_qk == FI_VARIANT_DQK && a->head_dim_vo == FI_VARIANT_DVO && a->q_dtype == q_dtype && kv_ok,
            "variant: this library is built for head dims (", FI_VARIANT_DQK, ", ", FI_VARIANT_DVO, ") and q ", dtype_name(q_dtype),
            ", not for the plan's (", a->head_dim_qk, ", ", a->head_dim_vo, ") with q ", dtype_name(a->q_dtype), " and kv ",
            dtype_name(a->kv_dtype));
    typename Variant::KernelParams kp{};
    static_cast<PrefillKernelParams&>(kp) = make_kernel_params(*a);
    std::memcpy(&kp.vp, params, sizeof(kp.vp));
    prefill_launch_fa2<FI_VARIANT_DQK, FI_VARIANT_DVO, FI_VARIANT_DT, Variant, FI_VARIANT_KV_KINDS>(kp, static_cast<cudaStream_t>(stream));
    return FI_OK;
  } catch (const Error& e) {
    return report(e.code, e.message.c_str());
  } catch (const std::exception& e) {
    return report(FI_ERR_INTERNAL, e.what());
  } catch (...) {
    return report(FI_ERR_INTERNAL, "unknown exception");
  }
}

}  // namespace prefill_detail
}  // namespace fi

#define FI_VARIANT_CUDA_ENTRY(VARIANT)                                                                                     \
  extern "C" __attribute__((visibility("default"))) int32_t fi_variant_run_cuda(                                          \
      const fi::PrefillParams* a, const void* params, void* stream, char* message, int64_t message_size) {                \
    return fi::prefill_detail::run_generated_variant<VARIANT>(a, params, stream, message, message_size);                  \
  }                                                                                                                        \
  extern "C" __attribute__((visibility("default"))) void* fi_variant_entry(void) {                                         \
    return reinterpret_cast<void*>(&fi_variant_run_cuda);                                                                  \
  }

// The CUDA side of a generated attention variant (lib/jit.ts); included only by the generated
// sources, never by libflashinfer itself. The generated file defines, before including this:
//   FI_VARIANT_DQK, FI_VARIANT_DVO   head dims of the one configuration it is built for
//   FI_VARIANT_DT                    q dtype (__half or __nv_bfloat16)
//   FI_VARIANT_KV_KINDS              fi::kKv16 (kv in q's dtype) or fi::kKvFp8
// and, after it, two structs of hooks (both with KernelParams extending the engine's by the
// variant's parameter struct `vp`):
//   fi_variant::Variant         for the prefill mma.sync (fa2) kernels (prefill_detail::DefaultVariant)
//   fi_variant::DecodeVariant   for the decode kernels (decode_detail::DecodeDefaultVariant)
// and FI_VARIANT_CUDA_ENTRY(Variant, DecodeVariant), which exports fi_variant_run_cuda: the plan's
// kernel (decode where built: equal head dims 64, 128 or 256; mma.sync; or, where built, Hopper
// wgmma) and the merge, instantiated for that variant and configuration only.
//
// The library is linked on its own (static cudart, no reference into libflashinfer), so it
// carries its own copy of the two runtime helpers the kernel launchers call; its errors cross
// back as a status and a message, never as an exception.
#pragma once
#include <cstdio>
#include <cstring>

#include "decode.h"
#include "prefill_kernels.cuh"

namespace fi {

void cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();
  fail(err == cudaErrorMemoryAllocation ? FI_ERR_OUT_OF_MEMORY : FI_ERR_CUDA, what, ": ", cudaGetErrorString(err));
}

namespace variant_detail {

constexpr int32_t kQDtype = std::is_same_v<FI_VARIANT_DT, __half> ? FI_FLOAT16 : FI_BFLOAT16;
// The Hopper (fa3) kernel: 16-bit kv, equal head dims 64, 128 or 256 (its body exists for sm_90a only).
constexpr bool kSm90Built = FI_VARIANT_KV_KINDS == kKv16 && FI_VARIANT_DQK == FI_VARIANT_DVO && (FI_VARIANT_DQK == 64 || FI_VARIANT_DQK == 128 || FI_VARIANT_DQK == 256);
constexpr bool kDecodeBuilt = FI_VARIANT_DQK == FI_VARIANT_DVO && (FI_VARIANT_DQK == 64 || FI_VARIANT_DQK == 128 || FI_VARIANT_DQK == 256);

// Runs f, turning its errors into a status and a message (nothing may unwind into the caller).
template <class F>
int32_t guarded(char* message, int64_t message_size, F&& f) {
  auto report = [&](int32_t code, const char* what) {
    if (message && message_size > 0) std::snprintf(message, size_t(message_size), "%s", what);
    return code;
  };
  try {
    f();
    return FI_OK;
  } catch (const Error& e) {
    return report(e.code, e.message.c_str());
  } catch (const std::exception& e) {
    return report(FI_ERR_INTERNAL, e.what());
  } catch (...) {
    return report(FI_ERR_INTERNAL, "unknown exception");
  }
}

inline void require_configuration(int head_dim_qk, int head_dim_vo, int32_t q_dtype, int32_t kv_dtype) {
  const bool kv_ok = (FI_VARIANT_KV_KINDS == kKv16) ? kv_dtype == kQDtype : kv_dtype == FI_FLOAT8_E4M3FN || kv_dtype == FI_FLOAT8_E5M2;
  require(head_dim_qk == FI_VARIANT_DQK && head_dim_vo == FI_VARIANT_DVO && q_dtype == kQDtype && kv_ok,
          "variant: this library is built for head dims (", FI_VARIANT_DQK, ", ", FI_VARIANT_DVO, ") and q ", dtype_name(kQDtype),
          ", not for the plan's (", head_dim_qk, ", ", head_dim_vo, ") with q ", dtype_name(q_dtype), " and kv ", dtype_name(kv_dtype));
}

template <class Variant, class DecodeVariant>
int32_t run(const PrefillParams* a, const void* params, void* stream, char* message, int64_t message_size) {
  return guarded(message, message_size, [&] {
    require_configuration(a->head_dim_qk, a->head_dim_vo, a->q_dtype, a->kv_dtype);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (a->kernel == FI_KERNEL_DECODE || a->kernel == FI_KERNEL_DECODE_TC) {
      if constexpr (kDecodeBuilt) {
        typename DecodeVariant::KernelParams kp{};
        static_cast<decode_detail::DecodeKernelParams&>(kp) = decode_detail::make_decode_kernel_params(*a, DecodeVariant::kCustomLogits);
        std::memcpy(&kp.vp, params, sizeof(kp.vp));
        decode_detail::decode_launch<FI_VARIANT_DQK, FI_VARIANT_DT, DecodeVariant, FI_VARIANT_KV_KINDS>(kp, *a, s);
      } else {
        fail(FI_ERR_UNSUPPORTED, "variant: the decode kernels are built for equal head dims 64, 128 or 256, not (", FI_VARIANT_DQK,
             ", ", FI_VARIANT_DVO, ")");
      }
      return;
    }
    typename Variant::KernelParams kp{};
    static_cast<prefill_detail::PrefillKernelParams&>(kp) = prefill_detail::make_kernel_params(*a);
    std::memcpy(&kp.vp, params, sizeof(kp.vp));
    if (a->kernel == FI_KERNEL_FA2) {
      prefill_detail::prefill_launch_fa2<FI_VARIANT_DQK, FI_VARIANT_DVO, FI_VARIANT_DT, Variant, FI_VARIANT_KV_KINDS>(kp, s);
    } else if constexpr (kSm90Built) {
      prefill_detail::prefill_launch_sm90<FI_VARIANT_DQK, FI_VARIANT_DVO, FI_VARIANT_DT, Variant>(kp, s);
      attention_merge<FI_VARIANT_DVO, FI_VARIANT_DT, Variant>(kp.a, kp, s);
    } else {
      fail(FI_ERR_UNSUPPORTED, "variant: the fa3 kernel serves 16-bit kv and head dims (64, 64), (128, 128) and (256, 256), not this build's (",
           FI_VARIANT_DQK, ", ", FI_VARIANT_DVO, ")", FI_VARIANT_KV_KINDS == kKvFp8 ? " with fp8 kv" : "");
    }
  });
}

}  // namespace variant_detail
}  // namespace fi

#define FI_VARIANT_CUDA_ENTRY(VARIANT, DECODE_VARIANT)                                                      \
  extern "C" __attribute__((visibility("default"))) int32_t fi_variant_run_cuda(                           \
      const fi::PrefillParams* a, const void* params, void* stream, char* message, int64_t message_size) { \
    return fi::variant_detail::run<VARIANT, DECODE_VARIANT>(a, params, stream, message, message_size);     \
  }                                                                                                         \
  extern "C" __attribute__((visibility("default"))) void* fi_variant_entry(void) {                          \
    return reinterpret_cast<void*>(&fi_variant_run_cuda);                                                   \
  }

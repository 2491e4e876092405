// Host side of the CUDA attention backend: alignment checks, derived kernel constants, and the
// launch of the plan's kernel: the decode kernels (decode.cu) or the instantiation of the prefill
// kernels for the run's head dims and q dtype (prefill_d*.cu).
#include "prefill_kernels.cuh"

namespace fi {
namespace {

using prefill_detail::PrefillKernelParams;

// Calls f(IntTag<DQK>, IntTag<DVO>, TypeTag<DT>) for a supported (head dims, q dtype); returns
// false when there is no instantiation.
template <class F>
bool dispatch_dims_q(int32_t dqk, int32_t dvo, int32_t q_dtype, F&& f) {
  auto with_q = [&](auto qk, auto vo) {
    if (q_dtype == FI_FLOAT16) f(qk, vo, TypeTag<__half>{});
    else f(qk, vo, TypeTag<__nv_bfloat16>{});
    return true;
  };
  if (q_dtype != FI_FLOAT16 && q_dtype != FI_BFLOAT16) return false;
  if (dqk == 64 && dvo == 64) return with_q(IntTag<64>{}, IntTag<64>{});
  if (dqk == 128 && dvo == 128) return with_q(IntTag<128>{}, IntTag<128>{});
  if (dqk == 192 && dvo == 128) return with_q(IntTag<192>{}, IntTag<128>{});
  if (dqk == 256 && dvo == 256) return with_q(IntTag<256>{}, IntTag<256>{});
  return false;
}

bool kv_dtype_ok(int32_t q_dtype, int32_t kv_dtype) {
  return kv_dtype == q_dtype || kv_dtype == FI_FLOAT8_E4M3FN || kv_dtype == FI_FLOAT8_E5M2;
}

// The kernel reads 8 elements at a time (16 bytes of a 16-bit tensor, 8 of an fp8 cache).
void require_aligned(const void* ptr, std::initializer_list<int64_t> strides, int itemsize, const char* name) {
  const int bytes = 8 * itemsize;
  bool ok = reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
  for (int64_t s : strides) ok = ok && s % 8 == 0;
  require(ok, name, ": the CUDA prefill kernel reads ", bytes, "-byte vectors, so the data pointer must be ", bytes,
          "-byte aligned and every stride a multiple of 8 elements");
}

}  // namespace

bool prefill_cuda_supports(int32_t head_dim_qk, int32_t head_dim_vo, int32_t q_dtype, int32_t kv_dtype) {
  if (mla_cuda_supports(head_dim_qk, head_dim_vo, q_dtype, kv_dtype)) return true;
  if (!kv_dtype_ok(q_dtype, kv_dtype)) return false;
  return dispatch_dims_q(head_dim_qk, head_dim_vo, q_dtype, [](auto, auto, auto) {});
}

std::string prefill_fa3_unsupported(const fi_prefill_plan_args& a) {
  if (a.head_dim_qk == 576 && a.head_dim_vo == 512) return "MLA (head dims 576, 512) runs on its own kernels (mla.cu)";
  std::string why = "no CUDA kernel for these head dims and dtypes";
  dispatch_dims_q(a.head_dim_qk, a.head_dim_vo, a.q_dtype, [&](auto qk, auto vo, auto q) {
    why = prefill_detail::prefill_sm90_unsupported<decltype(qk)::value, decltype(vo)::value, typename decltype(q)::type>(
        a.kv_dtype, a.pos_encoding_mode);
  });
  return why;
}

int prefill_ctas_per_sm_cuda(int32_t head_dim_qk, int32_t head_dim_vo, int32_t q_dtype, int32_t kv_dtype, int32_t cta_tile_q) {
  if (mla_cuda_supports(head_dim_qk, head_dim_vo, q_dtype, kv_dtype)) return 1;  // ~190 KB of shared memory a CTA
  int blocks = 1;
  dispatch_dims_q(head_dim_qk, head_dim_vo, q_dtype, [&](auto qk, auto vo, auto q) {
    blocks = prefill_detail::prefill_occupancy<decltype(qk)::value, decltype(vo)::value, typename decltype(q)::type>(kv_dtype, cta_tile_q);
  });
  return blocks;
}

void prefill_check_cuda(const PrefillParams& a) {
  require(prefill_cuda_supports(a.head_dim_qk, a.head_dim_vo, a.q_dtype, a.kv_dtype), "prefill: no CUDA kernel for head dims (",
          a.head_dim_qk, ", ", a.head_dim_vo, ") with q ", dtype_name(a.q_dtype), " and kv ", dtype_name(a.kv_dtype));
  require(a.cta_tile_q == 16 || a.cta_tile_q == 64 || a.cta_tile_q == 128, "prefill: cta_tile_q must be 16, 64 or 128, got ",
          a.cta_tile_q);
  const int vec_kv = itemsize(a.kv_dtype), vec_q = itemsize(a.q_dtype);
  if (a.page_size > 0) {
    require_aligned(a.k, {a.k_stride_page, a.k_stride_n, a.k_stride_h}, vec_kv, "k");
    require_aligned(a.v, {a.v_stride_page, a.v_stride_n, a.v_stride_h}, vec_kv, "v");
  } else {
    require_aligned(a.k, {a.k_stride_n, a.k_stride_h}, vec_kv, "k");
    require_aligned(a.v, {a.v_stride_n, a.v_stride_h}, vec_kv, "v");
  }
  require_aligned(a.q, {a.q_stride_n, a.q_stride_h}, vec_q, "q");
  require_aligned(a.out, {a.out_stride_n, a.out_stride_h}, vec_q, "out");
  if (a.rope_dim > 0) {
    require_aligned(a.q_rope, {a.q_rope_stride_n, a.q_rope_stride_h}, vec_q, "q_rope");
    require_aligned(a.k_rope, {a.k_rope_stride_page, a.k_rope_stride_n, a.k_rope_stride_h}, vec_kv, "k_rope");
  }
  require(a.num_kv_heads > 0 && a.num_qo_heads % a.num_kv_heads == 0, "prefill: num_qo_heads must be a multiple of num_kv_heads");
}

void prefill_run_cuda(const PrefillParams& a, void* stream) {
  prefill_check_cuda(a);
  if (a.num_work == 0) return;
  if (a.kernel == FI_KERNEL_DECODE || a.kernel == FI_KERNEL_DECODE_TC) return decode_run_cuda(a, stream);
  if (mla_cuda_supports(a.head_dim_qk, a.head_dim_vo, a.q_dtype, a.kv_dtype)) return mla_run_cuda(a, stream);
  const PrefillKernelParams kp = prefill_detail::make_kernel_params(a);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dims_q(a.head_dim_qk, a.head_dim_vo, a.q_dtype, [&](auto qk, auto vo, auto q) {
    prefill_detail::prefill_launch<decltype(qk)::value, decltype(vo)::value, typename decltype(q)::type>(kp, s);
  });
}

}  // namespace fi

// Host side of the CUDA decode backend: kernel parameters from a validated run, and the
// launch of the instantiation for the run's head_dim and q dtype.
#include "decode_kernels.cuh"

namespace fi {
namespace {

using decode_detail::DecodeKernelParams;

// Calls f(IntTag<HEAD_DIM>, TypeTag<DQ>) for the run-time head_dim and q dtype.
template <class F>
void dispatch_head_q(int head_dim, int32_t q_dtype, F&& f) {
  auto with_q = [&](auto d) {
    if (q_dtype == FI_FLOAT16) return f(d, TypeTag<__half>{});
    return f(d, TypeTag<__nv_bfloat16>{});
  };
  switch (head_dim) {
    case 64: return with_q(IntTag<64>{});
    case 128: return with_q(IntTag<128>{});
    default: return with_q(IntTag<256>{});
  }
}

}  // namespace

int decode_ctas_per_sm_cuda(int head_dim, int32_t q_dtype, int32_t kv_dtype, int heads_per_cta, bool use_tensor_cores) {
  int blocks = 1;
  dispatch_head_q(head_dim, q_dtype, [&](auto d, auto q) {
    blocks = decode_detail::decode_occupancy<decltype(d)::value, typename decltype(q)::type>(kv_dtype, heads_per_cta, use_tensor_cores);
  });
  return blocks;
}

void decode_run_cuda(const fi_decode_run_args& a, void* stream) {
  const fi_decode_plan_info& pl = a.plan;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int hpc = decode_heads_per_cta(pl.num_qo_heads / pl.num_kv_heads);
  const DecodeKernelParams p = decode_detail::make_decode_kernel_params(a, false);
  dispatch_head_q(pl.head_dim, pl.q_dtype, [&](auto d, auto q) {
    decode_detail::decode_launch<decltype(d)::value, typename decltype(q)::type>(p, pl, hpc, s);
  });
}

}  // namespace fi

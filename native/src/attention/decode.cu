// Host side of the CUDA decode kernels: kernel parameters from a validated run of a decode plan,
// and the launch of the instantiation for the run's head_dim and q dtype.
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

int decode_ctas_per_sm_cuda(int head_dim, int32_t q_dtype, int32_t kv_dtype, int group_size, bool tensor_cores) {
  int blocks = 1;
  dispatch_head_q(head_dim, q_dtype, [&](auto d, auto q) {
    blocks = decode_detail::decode_occupancy<decltype(d)::value, typename decltype(q)::type>(kv_dtype, group_size, tensor_cores);
  });
  return blocks;
}

void decode_run_cuda(const PrefillParams& a, void* stream) {
  const DecodeKernelParams p = decode_detail::make_decode_kernel_params(a, false);
  dispatch_head_q(a.head_dim_qk, a.q_dtype, [&](auto d, auto q) {
    decode_detail::decode_launch<decltype(d)::value, typename decltype(q)::type>(p, a, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace fi

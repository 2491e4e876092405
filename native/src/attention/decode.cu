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

void require_aligned(const void* ptr, std::initializer_list<int64_t> strides, int vec, const char* name) {
  bool ok = reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
  for (int64_t s : strides) ok = ok && s % vec == 0;
  require(ok, name, ": the CUDA kernel reads 16-byte vectors, so the data pointer must be 16-byte aligned and every "
                    "stride a multiple of ", vec, " elements");
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
  const int group = pl.num_qo_heads / pl.num_kv_heads;
  const int hpc = decode_heads_per_cta(group);
  const int vec_kv = 16 / itemsize(pl.kv_dtype), vec_q = 16 / itemsize(pl.q_dtype);
  require_aligned(a.k.data, {a.k.strides[0], a.k.strides[1], a.k.strides[2]}, vec_kv, "k");
  require_aligned(a.v.data, {a.v.strides[0], a.v.strides[1], a.v.strides[2]}, vec_kv, "v");
  require_aligned(a.q.data, {a.q.strides[0], a.q.strides[1]}, vec_q, "q");
  require_aligned(a.out.data, {a.out.strides[0], a.out.strides[1]}, vec_q, "out");

  DecodeKernelParams p{};
  p.q = a.q.data;
  p.out = a.out.data;
  p.lse = static_cast<float*>(a.lse.data);
  p.k = a.k.data;
  p.v = a.v.data;
  p.q_stride_b = a.q.strides[0];
  p.q_stride_h = a.q.strides[1];
  p.out_stride_b = a.out.strides[0];
  p.out_stride_h = a.out.strides[1];
  p.lse_stride_b = a.lse.data ? a.lse.strides[0] : 0;
  p.lse_stride_h = a.lse.data ? a.lse.strides[1] : 0;
  p.k_stride_page = a.k.strides[0];
  p.k_stride_pos = a.k.strides[1];
  p.k_stride_head = a.k.strides[2];
  p.v_stride_page = a.v.strides[0];
  p.v_stride_pos = a.v.strides[1];
  p.v_stride_head = a.v.strides[2];
  p.plan = decode_plan_view(a.workspace, pl.num_work, pl.batch_size, pl.off_indices);
  p.partial_o = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + pl.off_partial_o);
  p.partial_lse = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + pl.off_partial_lse);
  p.num_qo_heads = pl.num_qo_heads;
  p.group_size = group;
  p.head_chunks = (group + hpc - 1) / hpc;
  p.page_size = pl.page_size;
  p.pos_encoding = a.pos_encoding_mode;
  p.window_left = a.window_left;
  p.soft_cap = a.logits_soft_cap;
  p.q_scale = a.sm_scale * a.k_scale * (a.logits_soft_cap > 0 ? 1.0f / a.logits_soft_cap : kLog2e);
  p.v_scale = a.v_scale;
  p.rope_rcp_scale = 1.0f / a.rope_scale;
  p.rope_theta = a.rope_theta;

  dispatch_head_q(pl.head_dim, pl.q_dtype, [&](auto d, auto q) {
    decode_detail::decode_launch<decltype(d)::value, typename decltype(q)::type>(p, pl, hpc, s);
  });
}

}  // namespace fi

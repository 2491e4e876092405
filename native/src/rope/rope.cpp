// fi_rope_apply_rope / fi_rope_apply_rope_pos_ids / fi_rope_apply_cos_sin_cache: validate every
// argument, compute the frequency table (float64, on the host), then dispatch to the CPU or CUDA
// backend. Nothing is written unless every check passes.
#include <cmath>
#include <string>

#include "../common/runtime.h"
#include "rope.h"

using namespace fi;

namespace {

void require_same_device(const fi_tensor_desc& t, const char* name, const fi_tensor_desc& ref) {
  require(t.device == ref.device, name, ": on ", device_string(t.device), " but q is on ", device_string(ref.device),
          "; all tensors must be on one device");
}

// q or k: [nnz, heads, head_dim], float16 / bfloat16 / float32, last dimension contiguous.
RopeTensor rope_tensor(const fi_tensor_desc& t, const char* name, bool written) {
  require(t.ndim == 3, name, ": expected shape [nnz, heads, head_dim], got ", shape_string(t));
  if (!(t.dtype == FI_FLOAT16 || t.dtype == FI_BFLOAT16 || t.dtype == FI_FLOAT32)) {
    fail(is_integral(t.dtype) ? FI_ERR_INVALID_ARGUMENT : FI_ERR_UNSUPPORTED, name,
         ": dtype must be float16, bfloat16 or float32, got ", dtype_name(t.dtype));
  }
  if (numel(t) > 0) {
    require(t.shape[2] == 1 || t.strides[2] == 1, name, ": the last dimension must be contiguous (stride 1), got stride ",
            t.strides[2]);
    if (written) {
      for (int d = 0; d < 2; ++d) {
        require(t.shape[d] <= 1 || t.strides[d] != 0, name, ": is written, so it must not be a broadcast view (stride 0 in dimension ", d, ")");
      }
    }
  }
  return RopeTensor{t.data, t.strides[0], t.strides[1], t.shape[1]};
}

void require_like(const fi_tensor_desc& t, const char* name, const fi_tensor_desc& ref, const char* ref_name) {
  bool same = t.ndim == ref.ndim;
  for (int d = 0; same && d < t.ndim; ++d) same = t.shape[d] == ref.shape[d];
  require(same, name, ": shape must be ", shape_string(ref), " (the shape of ", ref_name, "), got ", shape_string(t));
  require(t.dtype == ref.dtype, name, ": dtype must be ", dtype_name(ref.dtype), " (the dtype of ", ref_name, "), got ",
          dtype_name(t.dtype));
}

// Validates q, k, q_out, k_out and fills the tensor fields of `a`.
void qk(RopeArgs& a, const fi_tensor_desc* q, const fi_tensor_desc* k, const fi_tensor_desc* q_out,
        const fi_tensor_desc* k_out) {
  validate_desc(q, "q");
  validate_desc(k, "k");
  validate_desc(q_out, "q_out");
  validate_desc(k_out, "k_out");
  a.q = rope_tensor(*q, "q", false);
  a.k = rope_tensor(*k, "k", false);
  require(k->dtype == q->dtype, "k: dtype must be ", dtype_name(q->dtype), " (the dtype of q), got ", dtype_name(k->dtype));
  require_same_device(*k, "k", *q);
  require(k->shape[0] == q->shape[0], "k: must have q's number of tokens ", q->shape[0], ", got shape ", shape_string(*k));
  require(k->shape[2] == q->shape[2], "k: must have q's head_dim ", q->shape[2], ", got shape ", shape_string(*k));
  require_like(*q_out, "q_out", *q, "q");
  require_like(*k_out, "k_out", *k, "k");
  require_same_device(*q_out, "q_out", *q);
  require_same_device(*k_out, "k_out", *q);
  a.q_out = rope_tensor(*q_out, "q_out", true);
  a.k_out = rope_tensor(*k_out, "k_out", true);
  a.nnz = q->shape[0];
  a.head_dim = q->shape[2];
  a.dtype = q->dtype;
}

void rotary(RopeArgs& a, int64_t rotary_dim) {
  require(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= a.head_dim, "rotary_dim: must be even and in [2, head_dim = ",
          a.head_dim, "], got ", rotary_dim);
  if (rotary_dim / 2 > kRopeMaxHalf) fail(FI_ERR_UNSUPPORTED, "rotary_dim: at most ", 2 * kRopeMaxHalf, " supported, got ", rotary_dim);
  a.rotary_dim = rotary_dim;
}

// A 1-d int32 / int64 index tensor of `n` entries on q's device (n < 0: any length).
void index_tensor(const fi_tensor_desc* t, const char* name, int64_t n, const fi_tensor_desc& q) {
  validate_desc(t, name);
  require(t->ndim == 1, name, ": expected a 1-d tensor, got shape ", shape_string(*t));
  require(t->dtype == FI_INT32 || t->dtype == FI_INT64, name, ": dtype must be int32 or int64, got ", dtype_name(t->dtype));
  require(n < 0 || t->shape[0] == n, name, ": expected ", n, " entries, got ", t->shape[0]);
  require_same_device(*t, name, q);
}

void frequencies(RopeArgs& a, double rope_scale, double rope_theta, int32_t llama31, double low, double high, double old_ctx) {
  require(std::isfinite(rope_scale) && rope_scale > 0, "rope_scale: must be finite and > 0, got ", rope_scale);
  require(std::isfinite(rope_theta) && rope_theta > 0, "rope_theta: must be finite and > 0, got ", rope_theta);
  if (llama31) {
    require(std::isfinite(low) && low > 0, "low_freq_factor: must be finite and > 0, got ", low);
    require(std::isfinite(high) && high > low, "high_freq_factor: must be finite and > low_freq_factor (", low, "), got ", high);
    require(std::isfinite(old_ctx) && old_ctx > 0, "old_context_len: must be finite and > 0, got ", old_ctx);
  }
  const int64_t half = a.rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double base = std::pow(rope_theta, -2.0 * double(i) / double(a.rotary_dim));
    if (!llama31) {
      a.freq[i] = base / rope_scale;
    } else {
      // smooth = (old_ctx / wavelen - low) / (high - low) clamped to [0, 1]: 1 keeps the
      // frequency (short wavelengths), 0 divides it by rope_scale (long wavelengths).
      double smooth = (old_ctx * base / (2 * M_PI) - low) / (high - low);
      smooth = smooth < 0 ? 0 : smooth > 1 ? 1 : smooth;
      a.freq[i] = (1 - smooth) * base / rope_scale + smooth * base;
    }
  }
}

void run(const RopeArgs& a, int32_t device, void* stream) {
  if (a.nnz == 0 || a.head_dim == 0 || (a.q.heads == 0 && a.k.heads == 0)) return;
  if (device == FI_DEVICE_CPU) return rope_cpu(a);
#ifdef FI_WITH_CUDA
  set_device(device);
  rope_cuda(a, stream);
#endif
}

}  // namespace

extern "C" FI_API int32_t fi_rope_apply_rope(const fi_tensor_desc* q, const fi_tensor_desc* k, const fi_tensor_desc* q_out,
                                             const fi_tensor_desc* k_out, const fi_tensor_desc* indptr,
                                             const fi_tensor_desc* offsets, int32_t rotary_dim, int32_t interleave,
                                             double rope_scale, double rope_theta, int32_t llama31, double low_freq_factor,
                                             double high_freq_factor, double old_context_len, void* stream) {
  return guard([&] {
    static thread_local RopeArgs a;
    a = RopeArgs{};
    qk(a, q, k, q_out, k_out);
    rotary(a, rotary_dim);
    a.interleave = interleave != 0;
    index_tensor(indptr, "indptr", -1, *q);
    require(indptr->shape[0] >= 1, "indptr: expected batch + 1 >= 1 entries, got 0");
    a.batch = indptr->shape[0] - 1;
    index_tensor(offsets, "offsets", a.batch, *q);
    require(offsets->dtype == indptr->dtype, "offsets: dtype must be ", dtype_name(indptr->dtype), " (the dtype of indptr), got ",
            dtype_name(offsets->dtype));
    a.index_dtype = indptr->dtype;
    a.indptr = indptr->data;
    a.indptr_stride = indptr->strides[0];
    a.offsets = offsets->data;
    a.offsets_stride = offsets->strides[0];
    frequencies(a, rope_scale, rope_theta, llama31, low_freq_factor, high_freq_factor, old_context_len);
    if (q->device == FI_DEVICE_CPU) {
      // On cuda the values are not read on the host: the kernel only writes rows [0, nnz) whatever they are.
      int64_t prev = 0;
      for (int64_t b = 0; b <= a.batch; ++b) {
        const int64_t v = load_as_int64(a.indptr, a.index_dtype, b * a.indptr_stride);
        require(b > 0 || v == 0, "indptr: must start at 0, got ", v);
        require(v >= prev, "indptr: must be non-decreasing, got indptr[", b, "] = ", v, " < ", prev);
        prev = v;
      }
      require(prev == a.nnz, "indptr: last entry must be nnz = ", a.nnz, " (q's tokens), got ", prev);
    } else {
      require(a.batch >= 1 || a.nnz == 0, "indptr: no requests for ", a.nnz, " tokens");
    }
    run(a, q->device, stream);
  });
}

extern "C" FI_API int32_t fi_rope_apply_rope_pos_ids(const fi_tensor_desc* q, const fi_tensor_desc* k,
                                                     const fi_tensor_desc* q_out, const fi_tensor_desc* k_out,
                                                     const fi_tensor_desc* pos_ids, int32_t rotary_dim, int32_t interleave,
                                                     double rope_scale, double rope_theta, int32_t llama31,
                                                     double low_freq_factor, double high_freq_factor,
                                                     double old_context_len, void* stream) {
  return guard([&] {
    static thread_local RopeArgs a;
    a = RopeArgs{};
    qk(a, q, k, q_out, k_out);
    rotary(a, rotary_dim);
    a.interleave = interleave != 0;
    index_tensor(pos_ids, "pos_ids", a.nnz, *q);
    a.index_dtype = pos_ids->dtype;
    a.pos_ids = pos_ids->data;
    a.pos_stride = pos_ids->strides[0];
    frequencies(a, rope_scale, rope_theta, llama31, low_freq_factor, high_freq_factor, old_context_len);
    run(a, q->device, stream);
  });
}

extern "C" FI_API int32_t fi_rope_apply_cos_sin_cache(const fi_tensor_desc* positions, const fi_tensor_desc* q,
                                                      const fi_tensor_desc* k, const fi_tensor_desc* q_out,
                                                      const fi_tensor_desc* k_out, const fi_tensor_desc* cos_sin_cache,
                                                      int32_t is_neox, void* stream) {
  return guard([&] {
    static thread_local RopeArgs a;
    a = RopeArgs{};
    qk(a, q, k, q_out, k_out);
    validate_desc(cos_sin_cache, "cos_sin_cache");
    require(cos_sin_cache->ndim == 2, "cos_sin_cache: expected shape [max_position, rotary_dim], got ", shape_string(*cos_sin_cache));
    require(cos_sin_cache->dtype == FI_FLOAT32, "cos_sin_cache: dtype must be float32, got ", dtype_name(cos_sin_cache->dtype));
    require_same_device(*cos_sin_cache, "cos_sin_cache", *q);
    const int64_t rd = cos_sin_cache->shape[1];
    require(rd > 0 && rd % 2 == 0 && rd <= a.head_dim, "cos_sin_cache: rotary_dim (its last dimension) must be even and in [2, head_size = ",
            a.head_dim, "], got ", rd);
    rotary(a, rd);
    require(cos_sin_cache->strides[1] == 1, "cos_sin_cache: the last dimension must be contiguous (stride 1), got stride ",
            cos_sin_cache->strides[1]);
    a.cos_sin = static_cast<const float*>(cos_sin_cache->data);
    a.cos_sin_stride = cos_sin_cache->strides[0];
    a.max_pos = cos_sin_cache->shape[0];
    a.interleave = is_neox == 0;
    index_tensor(positions, "positions", a.nnz, *q);
    a.index_dtype = positions->dtype;
    a.pos_ids = positions->data;
    a.pos_stride = positions->strides[0];
    if (q->device == FI_DEVICE_CPU) {
      // On cuda the values are not read on the host: the kernel writes NaN for a position outside the cache.
      for (int64_t t = 0; t < a.nnz; ++t) {
        const int64_t p = load_as_int64(a.pos_ids, a.index_dtype, t * a.pos_stride);
        require(p >= 0 && p < a.max_pos, "positions: positions[", t, "] = ", p, " is outside the cache [0, ", a.max_pos, ")");
      }
    }
    run(a, q->device, stream);
  });
}

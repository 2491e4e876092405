// fi_sampling_*: validate every argument, check values on cpu (on cuda they are not read on the
// host, see flashinfer.h), then dispatch to the CPU or CUDA backend. Nothing is written unless
// every check passes.
#include <cmath>
#include <string>

#include "../common/runtime.h"
#include "sampling.h"

using namespace fi;

namespace {

struct Rows {
  float* data;
  int64_t rows, vocab, stride;
};

// A [rows, vocab] float32 tensor with a contiguous last dimension.
Rows rows_of(const fi_tensor_desc& t, const char* name, bool written) {
  require(t.dtype == FI_FLOAT32, name, ": dtype must be float32, got ", dtype_name(t.dtype));
  require(t.ndim == 2, name, ": expected shape [batch, vocab], got ", shape_string(t));
  Rows r{static_cast<float*>(t.data), t.shape[0], t.shape[1], t.strides[0]};
  require(r.vocab == 1 || t.strides[1] == 1, name, ": the last dimension must be contiguous (stride 1), got stride ",
          t.strides[1]);
  if (r.rows <= 1) r.stride = r.vocab;
  if (written) {
    require(r.rows <= 1 || r.stride >= r.vocab, name, ": is written, so its rows must not overlap (row stride ", r.stride,
            ", vocab ", r.vocab, ")");
  }
  return r;
}

void require_device(const fi_tensor_desc& t, const char* name, int32_t device) {
  require(t.device == device, name, ": on ", device_string(t.device), " but the input is on ", device_string(device),
          "; all tensors must be on one device");
}

// A [n] tensor of `dtype` on `device`, or absent (data NULL) when `optional`.
template <typename T>
Vec1<T> vec_of(const fi_tensor_desc* t, const char* name, int32_t dtype, int64_t n, int32_t device, bool optional) {
  if (optional && (t == nullptr || t->data == nullptr)) return Vec1<T>{nullptr, 0};
  validate_desc(t, name);
  require(t->dtype == dtype, name, ": dtype must be ", dtype_name(dtype), ", got ", dtype_name(t->dtype));
  require(t->ndim == 1 && t->shape[0] == n, name, ": shape must be [", n, "], got ", shape_string(*t));
  require_device(*t, name, device);
  return Vec1<T>{static_cast<const T*>(t->data), t->strides[0]};
}

template <typename T>
T at(const Vec1<T>& v, int64_t i) { return v.data[i * v.stride]; }

// cpu only: every probability finite and >= 0, the row summing to 1 within the tolerance.
void check_prob_row(const float* p, int64_t vocab, const char* name, int64_t row) {
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const float x = p[v];
    require(std::isfinite(x) && x >= 0, name, ": row ", row, " holds ", x, " at token ", v,
            "; probabilities must be finite and >= 0");
    sum += x;
  }
  require(std::fabs(sum - 1.0) <= FI_SAMPLING_SUM_TOLERANCE, name, ": row ", row, " sums to ", sum,
          "; probabilities must sum to 1 (within ", FI_SAMPLING_SUM_TOLERANCE, ")");
}

// cpu only: no NaN or +inf (-inf masks a token).
void check_logit_values(const float* x, int64_t vocab, const char* name, int64_t row) {
  for (int64_t v = 0; v < vocab; ++v)
    require(!std::isnan(x[v]) && x[v] != INFINITY, name, ": row ", row, " holds ", x[v], " at token ", v,
            "; logits must not be NaN or +inf");
}

// cpu only: as check_logit_values, and at least one finite logit.
void check_logit_row(const float* x, int64_t vocab, const char* name, int64_t row) {
  check_logit_values(x, vocab, name, row);
  bool any = false;
  for (int64_t v = 0; v < vocab && !any; ++v) any = std::isfinite(x[v]);
  require(any, name, ": row ", row, " has no finite logit");
}

void check_top_k(int64_t k, const char* name) { require(k >= 1, name, ": top_k must be >= 1, got ", k); }
void check_top_p(double p, const char* name) {
  require(p > 0 && p <= 1, name, ": top_p must be in (0, 1], got ", p);
}
void check_min_p(double p, const char* name) {
  require(p >= 0 && p <= 1, name, ": min_p must be in [0, 1], got ", p);
}

int32_t* out_of(const fi_tensor_desc& t, const char* name, int64_t n, int32_t device, int64_t* stride) {
  require(t.dtype == FI_INT32, name, ": dtype must be int32, got ", dtype_name(t.dtype));
  require(t.ndim == 1 && t.shape[0] == n, name, ": shape must be [", n, "], got ", shape_string(t));
  require_device(t, name, device);
  require(n <= 1 || t.strides[0] > 0, name, ": is written, so it must not be a broadcast view");
  *stride = t.strides[0];
  return static_cast<int32_t*>(t.data);
}

}  // namespace

extern "C" FI_API int32_t fi_sampling_sample(const fi_sampling_params* params, void* stream) {
  return guard([&] {
    require(params != nullptr, "params: null");
    const fi_sampling_params& p = *params;
    const char* in_name = p.from_logits ? "logits" : "probs";
    validate_desc(&p.probs, in_name);
    validate_desc(&p.out, "out");
    const Rows in = rows_of(p.probs, in_name, false);
    const int32_t dev = p.probs.device;
    require(in.vocab >= 1, in_name, ": vocab size must be >= 1, got 0");
    SampleArgs a{};
    a.probs = in.data;
    a.rows = in.rows;
    a.vocab = in.vocab;
    a.row_stride = in.stride;
    a.indices = vec_of<int32_t>(&p.indices, "indices", FI_INT32, p.indices.ndim == 1 ? p.indices.shape[0] : -1, dev, true);
    a.batch = a.indices.data ? p.indices.shape[0] : in.rows;
    a.out = out_of(p.out, "out", a.batch, dev, &a.out_stride);
    const int32_t f = p.filters;
    const bool k_first = (f & FI_SAMPLING_TOP_K_FIRST) != 0;
    require(f == 0 || f == FI_SAMPLING_TOP_K || f == FI_SAMPLING_TOP_P || f == (FI_SAMPLING_TOP_K | FI_SAMPLING_TOP_P) ||
                f == (FI_SAMPLING_TOP_K | FI_SAMPLING_TOP_P | FI_SAMPLING_TOP_K_FIRST) || f == FI_SAMPLING_MIN_P,
            "filters: unsupported combination ", f);
    require(!p.from_logits || f == 0, "filters: sampling from logits takes no filters (got ", f, ")");
    (void)k_first;
    a.filters = f;
    a.from_logits = p.from_logits != 0;
    a.seed = p.seed;
    a.offset = p.offset;
    a.seeds = vec_of<int64_t>(&p.seeds, "seeds", FI_INT64, a.batch, dev, true);
    a.offsets = vec_of<int64_t>(&p.offsets, "offsets", FI_INT64, a.batch, dev, true);
    if (f & FI_SAMPLING_TOP_K) {
      a.top_k = vec_of<int32_t>(&p.top_k, "top_k", FI_INT32, a.batch, dev, true);
      if (!a.top_k.data) check_top_k(p.top_k_val, "top_k");
    }
    if (f & FI_SAMPLING_TOP_P) {
      a.top_p = vec_of<float>(&p.top_p, "top_p", FI_FLOAT32, a.batch, dev, true);
      if (!a.top_p.data) check_top_p(p.top_p_val, "top_p");
    }
    if (f & FI_SAMPLING_MIN_P) {
      a.min_p = vec_of<float>(&p.min_p, "min_p", FI_FLOAT32, a.batch, dev, true);
      if (!a.min_p.data) check_min_p(p.min_p_val, "min_p");
    }
    a.top_k_val = p.top_k_val;
    a.top_p_val = float(p.top_p_val);
    a.min_p_val = float(p.min_p_val);
    if (a.batch == 0) return;
    if (dev == FI_DEVICE_CPU) {
      // Every row, sampled or not: the input is checked whole whatever indices select.
      for (int64_t row = 0; row < in.rows; ++row) {
        const float* r = in.data + row * in.stride;
        if (a.from_logits) check_logit_row(r, in.vocab, in_name, row);
        else check_prob_row(r, in.vocab, in_name, row);
      }
      for (int64_t b = 0; b < a.batch; ++b) {
        const int64_t row = a.indices.data ? at(a.indices, b) : b;
        require(row >= 0 && row < in.rows, "indices: indices[", b, "] = ", row, " is outside [0, ", in.rows, ")");
        if (a.top_k.data) check_top_k(at(a.top_k, b), "top_k");
        if (a.top_p.data) check_top_p(at(a.top_p, b), "top_p");
        if (a.min_p.data) check_min_p(at(a.min_p, b), "min_p");
      }
      return sample_cpu(a);
    }
#ifdef FI_WITH_CUDA
    set_device(dev);
    sample_cuda(a, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_sampling_softmax(const fi_tensor_desc* logits, const fi_tensor_desc* out,
                                              const fi_tensor_desc* temperature, double temperature_val, void* stream) {
  return guard([&] {
    validate_desc(logits, "logits");
    validate_desc(out, "out");
    const Rows in = rows_of(*logits, "logits", false);
    const Rows o = rows_of(*out, "out", true);
    require_same_shape_and_device(*logits, "logits", *out, "out");
    const int32_t dev = logits->device;
    SoftmaxArgs a{in.data, o.data, in.rows, in.vocab, in.stride, o.stride, {}, float(temperature_val)};
    a.temperature = vec_of<float>(temperature, "temperature", FI_FLOAT32, in.rows, dev, true);
    if (!a.temperature.data) {
      require(std::isfinite(temperature_val) && temperature_val > 0, "temperature: must be finite and > 0, got ",
              temperature_val);
    }
    if (in.rows == 0 || in.vocab == 0) return;
    if (dev == FI_DEVICE_CPU) {
      for (int64_t r = 0; r < in.rows; ++r) {
        const float* x = in.data + r * in.stride;
        check_logit_values(x, in.vocab, "logits", r);
        if (a.temperature.data) {
          const float t = at(a.temperature, r);
          require(std::isfinite(t) && t > 0, "temperature: temperature[", r, "] must be finite and > 0, got ", t);
        }
      }
      return softmax_cpu(a);
    }
#ifdef FI_WITH_CUDA
    set_device(dev);
    softmax_cuda(a, stream);
#endif
  });
}

namespace {

// Shared by renorm and mask: in/out [rows, vocab] float32; per-row top_k / top_p.
int32_t renorm_entry(const fi_tensor_desc* input, const char* in_name, const fi_tensor_desc* out,
                     const fi_tensor_desc* top_k, const fi_tensor_desc* top_p, int32_t top_k_val, double top_p_val,
                     int32_t filter, bool mask, void* stream) {
  return guard([&] {
    validate_desc(input, in_name);
    validate_desc(out, "out");
    const Rows in = rows_of(*input, in_name, false);
    const Rows o = rows_of(*out, "out", true);
    require_same_shape_and_device(*input, in_name, *out, "out");
    require(o.data != in.data || o.stride == in.stride || in.rows * in.vocab == 0, "out: must be ", in_name,
            " itself (same strides) or not overlap it");
    const int32_t dev = input->device;
    require(filter == FI_SAMPLING_TOP_K || filter == FI_SAMPLING_TOP_P, "filter: must be top-k or top-p, got ", filter);
    RenormArgs a{in.data, o.data, in.rows, in.vocab, in.stride, o.stride, {}, {}, top_k_val, float(top_p_val), filter, mask};
    if (filter == FI_SAMPLING_TOP_K) {
      a.top_k = vec_of<int32_t>(top_k, "top_k", FI_INT32, in.rows, dev, true);
      if (!a.top_k.data) check_top_k(top_k_val, "top_k");
    } else {
      a.top_p = vec_of<float>(top_p, "top_p", FI_FLOAT32, in.rows, dev, true);
      if (!a.top_p.data) check_top_p(top_p_val, "top_p");
    }
    if (in.rows == 0 || in.vocab == 0) return;
    if (dev == FI_DEVICE_CPU) {
      for (int64_t r = 0; r < in.rows; ++r) {
        const float* x = in.data + r * in.stride;
        if (mask) check_logit_values(x, in.vocab, in_name, r);  // as softmax: -inf masks, +inf and NaN are errors
        else check_prob_row(x, in.vocab, in_name, r);
        if (a.top_k.data) check_top_k(at(a.top_k, r), "top_k");
        if (a.top_p.data) check_top_p(at(a.top_p, r), "top_p");
      }
      return renorm_cpu(a);
    }
#ifdef FI_WITH_CUDA
    set_device(dev);
    renorm_cuda(a, stream);
#endif
  });
}

}  // namespace

extern "C" FI_API int32_t fi_sampling_renorm(const fi_tensor_desc* probs, const fi_tensor_desc* out,
                                             const fi_tensor_desc* top_k, const fi_tensor_desc* top_p,
                                             int32_t top_k_val, double top_p_val, int32_t filter, void* stream) {
  return renorm_entry(probs, "probs", out, top_k, top_p, top_k_val, top_p_val, filter, false, stream);
}

extern "C" FI_API int32_t fi_sampling_top_k_mask_logits(const fi_tensor_desc* logits, const fi_tensor_desc* out,
                                                        const fi_tensor_desc* top_k, int32_t top_k_val, void* stream) {
  return renorm_entry(logits, "logits", out, top_k, nullptr, top_k_val, 1.0, FI_SAMPLING_TOP_K, true, stream);
}

extern "C" FI_API int32_t fi_sampling_chain_speculative(const fi_tensor_desc* draft_probs,
                                                        const fi_tensor_desc* draft_token_ids,
                                                        const fi_tensor_desc* target_probs,
                                                        const fi_tensor_desc* output_token_ids,
                                                        const fi_tensor_desc* accepted_num,
                                                        const fi_tensor_desc* emitted_num, uint64_t seed,
                                                        uint64_t offset, void* stream) {
  return guard([&] {
    validate_desc(draft_probs, "draftProbs");
    validate_desc(draft_token_ids, "draftTokenIds");
    validate_desc(target_probs, "targetProbs");
    validate_desc(output_token_ids, "outputTokenIds");
    validate_desc(accepted_num, "acceptedNum");
    validate_desc(emitted_num, "emittedNum");
    const fi_tensor_desc &d = *draft_probs, &t = *target_probs, &ids = *draft_token_ids;
    require(d.dtype == FI_FLOAT32 && d.ndim == 3, "draftProbs: expected float32 [batch, n, vocab], got ",
            dtype_name(d.dtype), " ", shape_string(d));
    require(t.dtype == FI_FLOAT32 && t.ndim == 3, "targetProbs: expected float32 [batch, n + 1, vocab], got ",
            dtype_name(t.dtype), " ", shape_string(t));
    const int64_t batch = d.shape[0], n = d.shape[1], vocab = d.shape[2];
    require(t.shape[0] == batch && t.shape[1] == n + 1 && t.shape[2] == vocab, "targetProbs: shape must be [", batch,
            ", ", n + 1, ", ", vocab, "] (draftProbs is ", shape_string(d), "), got ", shape_string(t));
    require(vocab >= 1, "draftProbs: vocab size must be >= 1");
    require(vocab == 1 || (d.strides[2] == 1 && t.strides[2] == 1), "draftProbs, targetProbs: the vocab dimension must be contiguous");
    require(ids.dtype == FI_INT32 && ids.ndim == 2 && ids.shape[0] == batch && ids.shape[1] == n,
            "draftTokenIds: expected int32 [", batch, ", ", n, "], got ", dtype_name(ids.dtype), " ", shape_string(ids));
    const fi_tensor_desc& o = *output_token_ids;
    require(o.dtype == FI_INT32 && o.ndim == 2 && o.shape[0] == batch && o.shape[1] == n + 1,
            "outputTokenIds: expected int32 [", batch, ", ", n + 1, "], got ", dtype_name(o.dtype), " ", shape_string(o));
    const int32_t dev = d.device;
    for (const auto* x : {&t, &ids, &o, accepted_num, emitted_num}) require_device(*x, "chainSpeculativeSampling tensors", dev);
    ChainArgs a{};
    a.draft = static_cast<const float*>(d.data);
    a.target = static_cast<const float*>(t.data);
    a.draft_ids = static_cast<const int32_t*>(ids.data);
    a.out_ids = static_cast<int32_t*>(o.data);
    a.batch = batch;
    a.n = n;
    a.vocab = vocab;
    a.draft_s0 = d.strides[0];
    a.draft_s1 = d.strides[1];
    a.target_s0 = t.strides[0];
    a.target_s1 = t.strides[1];
    a.ids_s0 = ids.strides[0];
    a.ids_s1 = ids.strides[1];
    a.out_s0 = o.strides[0];
    a.out_s1 = o.strides[1];
    require(batch <= 1 || o.strides[0] > 0, "outputTokenIds: must not be a broadcast view");
    require(n + 1 <= 1 || o.strides[1] > 0, "outputTokenIds: must not be a broadcast view");
    a.accepted = out_of(*accepted_num, "acceptedNum", batch, dev, &a.acc_s);
    a.emitted = out_of(*emitted_num, "emittedNum", batch, dev, &a.emit_s);
    a.seed = seed;
    a.offset = offset;
    if (batch == 0) return;
    if (dev == FI_DEVICE_CPU) {
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i <= n; ++i) {
          if (i < n) {
            check_prob_row(a.draft + b * a.draft_s0 + i * a.draft_s1, vocab, "draftProbs", b * n + i);
            const int32_t id = a.draft_ids[b * a.ids_s0 + i * a.ids_s1];
            require(id >= 0 && id < vocab, "draftTokenIds: [", b, ", ", i, "] = ", id, " is outside [0, ", vocab, ")");
          }
          check_prob_row(a.target + b * a.target_s0 + i * a.target_s1, vocab, "targetProbs", b * (n + 1) + i);
        }
      }
      return chain_speculative_cpu(a);
    }
#ifdef FI_WITH_CUDA
    set_device(dev);
    chain_speculative_cuda(a, stream);
#endif
  });
}

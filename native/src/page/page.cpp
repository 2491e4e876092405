// fi_page_*: validate every argument (the index arrays on the host: device tensors are copied to
// the host and the stream synchronized for that), then dispatch to the CPU or CUDA backend.
// Nothing is written unless every check passes.
#include <string>
#include <vector>

#include "../common/runtime.h"
#include "page.h"

using namespace fi;

namespace {

void require_same_device(const fi_tensor_desc& t, const char* name, const fi_tensor_desc& ref, const char* ref_name) {
  require(t.device == ref.device, name, ": on ", device_string(t.device), " but ", ref_name, " is on ",
          device_string(ref.device), "; all tensors must be on one device");
}

// A 1-d int32 tensor of `n` entries (n < 0: any length).
void require_int_vector(const fi_tensor_desc& t, const char* name, int64_t n, const char* what) {
  require(t.dtype == FI_INT32, name, ": dtype must be int32, got ", dtype_name(t.dtype));
  require(t.ndim == 1, name, ": expected 1 dimension, got shape ", shape_string(t));
  if (n >= 0) require(t.shape[0] == n, name, ": expected ", n, " entries (", what, "), got ", t.shape[0]);
}

void require_writable(const fi_tensor_desc& t, const char* name) {
  if (numel(t) == 0) return;
  for (int d = 0; d < t.ndim; ++d)
    require(t.shape[d] <= 1 || t.strides[d] != 0, name, ": is written, so it must not be a broadcast view (stride 0 in dimension ", d, ")");
}

// The entries of a 1-d int32 tensor on the host. A CUDA tensor is copied with cudaMemcpyAsync on
// `stream` and the stream synchronized (the validation needs the values).
std::vector<int32_t> host_ints(const fi_tensor_desc& t, void* stream) {
  const int64_t n = t.shape[0];
  std::vector<int32_t> out(static_cast<size_t>(n > 0 ? n : 0));
  if (n == 0) return out;
  const int64_t stride = t.strides[0];
  if (t.device == FI_DEVICE_CPU) {
    const int32_t* p = static_cast<const int32_t*>(t.data);
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = p[i * stride];
    return out;
  }
#ifdef FI_WITH_CUDA
  const int64_t span = (n - 1) * stride + 1;
  std::vector<int32_t> raw(static_cast<size_t>(span));
  set_device(t.device);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cuda_check(cudaMemcpyAsync(raw.data(), t.data, size_t(span) * 4, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync(index array)");
  cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize(index array)");
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = raw[size_t(i * stride)];
#endif
  return out;
}

// indptr[0] = 0, monotone; returns nothing, throws naming `name`.
void require_indptr(const std::vector<int32_t>& indptr, const char* name, int64_t last_max, const char* last_what) {
  require(indptr[0] == 0, name, "[0] must be 0, got ", indptr[0]);
  for (size_t i = 1; i < indptr.size(); ++i)
    require(indptr[i] >= indptr[i - 1], name, " must be non-decreasing: ", name, "[", i, "] = ", indptr[i], " < ",
            name, "[", i - 1, "] = ", indptr[i - 1]);
  if (last_max >= 0)
    require(indptr.back() <= last_max, name, "[", indptr.size() - 1, "] = ", indptr.back(), " exceeds ", last_what,
            " (", last_max, ")");
}

// A page table as decode plan() checks it: indptr from 0, non-decreasing; last_page_len in
// [1, page_size] for a request with pages and [0, page_size] for one without.
void require_page_table(const std::vector<int32_t>& indptr, const std::vector<int32_t>& last, int64_t page_size, int64_t max_entries,
                        const char* max_what) {
  require_indptr(indptr, "kv_indptr", max_entries, max_what);
  for (size_t b = 0; b < last.size(); ++b) {
    const bool has_pages = indptr[b + 1] > indptr[b];
    require(last[b] >= (has_pages ? 1 : 0) && last[b] <= page_size, "kv_last_page_len[", b, "] = ", last[b], " must be in [",
            has_pages ? 1 : 0, ", page_size = ", page_size, "] for a request with", has_pages ? "" : "out", " pages");
  }
}

}  // namespace

extern "C" FI_API int32_t fi_page_get_seq_lens(const fi_tensor_desc* kv_indptr, const fi_tensor_desc* kv_last_page_len,
                                               int32_t page_size, const fi_tensor_desc* seq_lens, void* stream) {
  return guard([&] {
    validate_desc(kv_indptr, "kv_indptr");
    validate_desc(kv_last_page_len, "kv_last_page_len");
    validate_desc(seq_lens, "seq_lens");
    require(page_size >= 1, "page_size: must be >= 1, got ", page_size);
    require_int_vector(*kv_last_page_len, "kv_last_page_len", -1, "");
    const int64_t batch = kv_last_page_len->shape[0];
    require_int_vector(*kv_indptr, "kv_indptr", batch + 1, "batch + 1, batch from kv_last_page_len");
    require_int_vector(*seq_lens, "seq_lens", batch, "batch");
    require_same_device(*kv_indptr, "kv_indptr", *kv_last_page_len, "kv_last_page_len");
    require_same_device(*seq_lens, "seq_lens", *kv_last_page_len, "kv_last_page_len");
    require_writable(*seq_lens, "seq_lens");
    require_page_table(host_ints(*kv_indptr, stream), host_ints(*kv_last_page_len, stream), page_size, -1, "");
    if (batch == 0) return;
    if (seq_lens->device == FI_DEVICE_CPU) return page_seq_lens_cpu(*kv_indptr, *kv_last_page_len, page_size, *seq_lens);
#ifdef FI_WITH_CUDA
    set_device(seq_lens->device);
    page_seq_lens_cuda(*kv_indptr, *kv_last_page_len, page_size, *seq_lens, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_page_get_batch_indices_positions(const fi_tensor_desc* append_indptr,
                                                              const fi_tensor_desc* seq_lens,
                                                              const fi_tensor_desc* batch_indices,
                                                              const fi_tensor_desc* positions, void* stream) {
  return guard([&] {
    validate_desc(append_indptr, "append_indptr");
    validate_desc(seq_lens, "seq_lens");
    validate_desc(batch_indices, "batch_indices");
    validate_desc(positions, "positions");
    require_int_vector(*seq_lens, "seq_lens", -1, "");
    const int64_t batch = seq_lens->shape[0];
    require_int_vector(*append_indptr, "append_indptr", batch + 1, "batch + 1, batch from seq_lens");
    require_int_vector(*batch_indices, "batch_indices", -1, "");
    const int64_t nnz = batch_indices->shape[0];
    require_int_vector(*positions, "positions", nnz, "nnz, as batch_indices");
    require_same_device(*append_indptr, "append_indptr", *seq_lens, "seq_lens");
    require_same_device(*batch_indices, "batch_indices", *seq_lens, "seq_lens");
    require_same_device(*positions, "positions", *seq_lens, "seq_lens");
    require_writable(*batch_indices, "batch_indices");
    require_writable(*positions, "positions");
    const std::vector<int32_t> indptr = host_ints(*append_indptr, stream);
    require_indptr(indptr, "append_indptr", -1, "");
    require(indptr.back() == nnz, "append_indptr[", batch, "] = ", indptr.back(), " must equal nnz (", nnz, ")");
    const std::vector<int32_t> lens = host_ints(*seq_lens, stream);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t appended = int64_t(indptr[size_t(b + 1)]) - indptr[size_t(b)];
      require(lens[size_t(b)] >= appended, "seq_lens[", b, "] = ", lens[size_t(b)], " is less than the ", appended,
              " tokens appended to request ", b, " (seq_lens are the lengths after appending)");
    }
    if (batch == 0 || nnz == 0) return;
    if (seq_lens->device == FI_DEVICE_CPU) return page_batch_indices_positions_cpu(*append_indptr, *seq_lens, *batch_indices, *positions);
#ifdef FI_WITH_CUDA
    set_device(seq_lens->device);
    page_batch_indices_positions_cuda(*append_indptr, *seq_lens, *batch_indices, *positions, stream);
#endif
  });
}

extern "C" FI_API int32_t fi_page_append_paged_kv_cache(
    const fi_tensor_desc* append_key, const fi_tensor_desc* append_value, const fi_tensor_desc* batch_indices,
    const fi_tensor_desc* positions, const fi_tensor_desc* k_cache, const fi_tensor_desc* v_cache,
    const fi_tensor_desc* kv_indices, const fi_tensor_desc* kv_indptr, const fi_tensor_desc* kv_last_page_len,
    int32_t check_indices, void* stream) {
  return guard([&] {
    validate_desc(append_key, "append_key");
    validate_desc(append_value, "append_value");
    validate_desc(batch_indices, "batch_indices");
    validate_desc(positions, "positions");
    validate_desc(k_cache, "k_cache");
    validate_desc(v_cache, "v_cache");
    validate_desc(kv_indices, "kv_indices");
    validate_desc(kv_indptr, "kv_indptr");
    validate_desc(kv_last_page_len, "kv_last_page_len");

    const int32_t cd = k_cache->dtype;
    require(k_cache->ndim == 4, "k_cache: expected 4 dimensions [pages, page_size, num_kv_heads, head_dim], got shape ",
            shape_string(*k_cache));
    if (cd != FI_FLOAT16 && cd != FI_BFLOAT16 && cd != FI_FLOAT8_E4M3FN && cd != FI_FLOAT8_E5M2)
      fail(is_integral(cd) ? FI_ERR_INVALID_ARGUMENT : FI_ERR_UNSUPPORTED,
           "k_cache: dtype must be float16, bfloat16, float8_e4m3fn or float8_e5m2, got ", dtype_name(cd));
    require(v_cache->dtype == cd, "v_cache: dtype must be ", dtype_name(cd), " (k_cache's), got ", dtype_name(v_cache->dtype));
    require_same_shape_and_device(*k_cache, "k_cache", *v_cache, "v_cache");
    const int64_t max_pages = k_cache->shape[0], page_size = k_cache->shape[1], heads = k_cache->shape[2],
                  head_dim = k_cache->shape[3];
    require(page_size >= 1, "k_cache: page_size (dimension 1) must be >= 1");

    const int32_t ad = append_key->dtype;
    require(ad == FI_FLOAT16 || ad == FI_BFLOAT16 || ad == cd, "append_key: dtype must be float16, bfloat16 or the cache's (",
            dtype_name(cd), "), got ", dtype_name(ad));
    require(append_key->ndim == 3, "append_key: expected 3 dimensions [nnz, num_kv_heads, head_dim], got shape ",
            shape_string(*append_key));
    const int64_t nnz = append_key->shape[0];
    require(append_key->shape[1] == heads && append_key->shape[2] == head_dim, "append_key: shape ",
            shape_string(*append_key), " must be [nnz, ", heads, ", ", head_dim, "] (num_kv_heads, head_dim of the cache)");
    require(append_value->dtype == ad, "append_value: dtype must be ", dtype_name(ad), " (append_key's), got ",
            dtype_name(append_value->dtype));
    require_same_shape_and_device(*append_key, "append_key", *append_value, "append_value");
    require_int_vector(*batch_indices, "batch_indices", nnz, "nnz, from append_key");
    require_int_vector(*positions, "positions", nnz, "nnz, from append_key");
    require_int_vector(*kv_last_page_len, "kv_last_page_len", -1, "");
    const int64_t batch = kv_last_page_len->shape[0];
    require_int_vector(*kv_indptr, "kv_indptr", batch + 1, "batch + 1, batch from kv_last_page_len");
    require_int_vector(*kv_indices, "kv_indices", -1, "");
    const fi_tensor_desc* others[] = {append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr, kv_last_page_len};
    const char* names[] = {"append_value", "batch_indices", "positions", "k_cache", "v_cache", "kv_indices", "kv_indptr", "kv_last_page_len"};
    for (int i = 0; i < 8; ++i) require_same_device(*others[i], names[i], *append_key, "append_key");
    require_writable(*k_cache, "k_cache");
    require_writable(*v_cache, "v_cache");

    // Index arrays on the host (copied from the device when needed): the whole page table, also
    // when nothing is appended, then every appended token's place in it.
    if (check_indices) {
      const std::vector<int32_t> indptr = host_ints(*kv_indptr, stream);
      const std::vector<int32_t> last = host_ints(*kv_last_page_len, stream);
      require_page_table(indptr, last, page_size, kv_indices->shape[0], "the entries of kv_indices");
      const std::vector<int32_t> indices = host_ints(*kv_indices, stream);
      for (int32_t i = 0; i < indptr.back(); ++i)
        require(indices[size_t(i)] >= 0 && indices[size_t(i)] < max_pages, "kv_indices[", i, "] = ", indices[size_t(i)],
                " is out of range of the cache's ", max_pages, " pages");
      const std::vector<int32_t> bi = host_ints(*batch_indices, stream);
      const std::vector<int32_t> pos = host_ints(*positions, stream);
      for (int64_t j = 0; j < nnz; ++j) {
        const int64_t b = bi[size_t(j)], p = pos[size_t(j)];
        require(b >= 0 && b < batch, "batch_indices[", j, "] = ", b, " is out of range [0, ", batch, ")");
        const int64_t pages = int64_t(indptr[size_t(b + 1)]) - indptr[size_t(b)];
        const int64_t len = pages > 0 ? (pages - 1) * page_size + last[size_t(b)] : 0;
        require(p >= 0 && p / page_size < pages && p < len, "positions[", j, "] = ", p, " is past the page table of request ",
                b, " (", pages, " pages of ", page_size, ", length ", len, ")");
      }
    }  // check_indices
    if (nnz == 0 || heads == 0 || head_dim == 0) return;

    if (k_cache->device == FI_DEVICE_CPU)
      return page_append_cpu(*append_key, *append_value, *batch_indices, *positions, *k_cache, *v_cache, *kv_indices, *kv_indptr);
#ifdef FI_WITH_CUDA
    set_device(k_cache->device);
    page_append_cuda(*append_key, *append_value, *batch_indices, *positions, *k_cache, *v_cache, *kv_indices, *kv_indptr,
                     stream);
#endif
  });
}

// CPU reference of the page family: plain loops (OpenMP over tokens for the append).
#include "page.h"

namespace fi {
namespace {

inline int32_t at(const fi_tensor_desc& t, int64_t i) {
  return static_cast<const int32_t*>(t.data)[i * t.strides[0]];
}
inline void put(const fi_tensor_desc& t, int64_t i, int32_t x) { static_cast<int32_t*>(t.data)[i * t.strides[0]] = x; }

}  // namespace

void page_seq_lens_cpu(const fi_tensor_desc& indptr, const fi_tensor_desc& last_page_len, int32_t page_size,
                       const fi_tensor_desc& seq_lens) {
  const int64_t batch = seq_lens.shape[0];
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t pages = int64_t(at(indptr, i + 1)) - at(indptr, i);
    put(seq_lens, i, pages > 0 ? int32_t((pages - 1) * page_size + at(last_page_len, i)) : 0);
  }
}

void page_batch_indices_positions_cpu(const fi_tensor_desc& append_indptr, const fi_tensor_desc& seq_lens,
                                      const fi_tensor_desc& batch_indices, const fi_tensor_desc& positions) {
  const int64_t batch = seq_lens.shape[0];
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = at(append_indptr, b), end = at(append_indptr, b + 1);
    const int64_t first = int64_t(at(seq_lens, b)) - (end - start);
    for (int64_t j = start; j < end; ++j) {
      put(batch_indices, j, int32_t(b));
      put(positions, j, int32_t(first + (j - start)));
    }
  }
}

void page_append_cpu(const fi_tensor_desc& key, const fi_tensor_desc& value, const fi_tensor_desc& batch_indices,
                     const fi_tensor_desc& positions, const fi_tensor_desc& k_cache, const fi_tensor_desc& v_cache,
                     const fi_tensor_desc& kv_indices, const fi_tensor_desc& kv_indptr) {
  const int64_t nnz = key.shape[0], heads = key.shape[1], head_dim = key.shape[2];
  const int64_t page_size = k_cache.shape[1];
#pragma omp parallel for if (nnz * heads * head_dim > (1 << 15))
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t b = at(batch_indices, j), p = at(positions, j);
    const int64_t page = at(kv_indices, int64_t(at(kv_indptr, b)) + p / page_size), slot = p % page_size;
    for (int w = 0; w < 2; ++w) {
      const fi_tensor_desc& src = w == 0 ? key : value;
      const fi_tensor_desc& dst = w == 0 ? k_cache : v_cache;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t so = j * src.strides[0] + h * src.strides[1];
        const int64_t d0 = page * dst.strides[0] + slot * dst.strides[1] + h * dst.strides[2];
        for (int64_t d = 0; d < head_dim; ++d) {
          cast_element(dst.data, dst.dtype, d0 + d * dst.strides[3], src.data, src.dtype, so + d * src.strides[2]);
        }
      }
    }
  }
}

}  // namespace fi

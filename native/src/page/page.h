// Backend launchers of the page family (FlashInfer's flashinfer.page: sequence lengths from a
// CSR page table, batch indices and positions of appended tokens, appending K/V into a paged
// cache). The extern "C" entries in page.cpp validate everything (index arrays on the host),
// then call the CPU or CUDA launcher; launchers assume valid, non-empty input.
#pragma once
#include "../common/tensor_desc.h"

namespace fi {

// seq_lens[i] = (indptr[i+1] - indptr[i] - 1) * page_size + last_page_len[i], or 0 without pages.
// All int32, 1-d, any stride.
void page_seq_lens_cpu(const fi_tensor_desc& indptr, const fi_tensor_desc& last_page_len, int32_t page_size,
                       const fi_tensor_desc& seq_lens);
// For token j of request b (append_indptr[b] <= j < append_indptr[b+1]): batch_indices[j] = b,
// positions[j] = seq_lens[b] - (append_indptr[b+1] - append_indptr[b]) + (j - append_indptr[b]).
void page_batch_indices_positions_cpu(const fi_tensor_desc& append_indptr, const fi_tensor_desc& seq_lens,
                                      const fi_tensor_desc& batch_indices, const fi_tensor_desc& positions);
// key/value [nnz, heads, head_dim]; k_cache/v_cache [pages, page_size, heads, head_dim] views (any
// strides); token j goes to page kv_indices[kv_indptr[b] + p / page_size], slot p % page_size,
// b = batch_indices[j], p = positions[j]. Values are converted to the cache dtype (nearest even).
void page_append_cpu(const fi_tensor_desc& key, const fi_tensor_desc& value, const fi_tensor_desc& batch_indices,
                     const fi_tensor_desc& positions, const fi_tensor_desc& k_cache, const fi_tensor_desc& v_cache,
                     const fi_tensor_desc& kv_indices, const fi_tensor_desc& kv_indptr);

#ifdef FI_WITH_CUDA
void page_seq_lens_cuda(const fi_tensor_desc& indptr, const fi_tensor_desc& last_page_len, int32_t page_size,
                        const fi_tensor_desc& seq_lens, void* stream);
void page_batch_indices_positions_cuda(const fi_tensor_desc& append_indptr, const fi_tensor_desc& seq_lens,
                                       const fi_tensor_desc& batch_indices, const fi_tensor_desc& positions,
                                       void* stream);
void page_append_cuda(const fi_tensor_desc& key, const fi_tensor_desc& value, const fi_tensor_desc& batch_indices,
                      const fi_tensor_desc& positions, const fi_tensor_desc& k_cache, const fi_tensor_desc& v_cache,
                      const fi_tensor_desc& kv_indices, const fi_tensor_desc& kv_indptr, void* stream);
#endif

}  // namespace fi

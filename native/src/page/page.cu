// CUDA kernels of the page family. Deliberately simple: one thread per output entry.
// append: blocks of a few tokens copying 16-byte vectors when the appended dtype equals the cache's
// and every row is contiguous and 16-byte aligned (the common case); otherwise one element per thread,
// converted with the same bit-exact conversions the CPU backend uses (common/dtype.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/launch.cuh"
#include "../common/runtime.h"
#include "page.h"

namespace fi {
namespace {

struct IntVec {
  const int32_t* p;
  int64_t stride;
  __device__ __forceinline__ int32_t operator[](int64_t i) const { return p[i * stride]; }
};

IntVec int_vec(const fi_tensor_desc& t) { return {static_cast<const int32_t*>(t.data), t.strides[0]}; }

__global__ void seq_lens_kernel(IntVec indptr, IntVec last, int32_t page_size, int32_t* out, int64_t out_stride,
                                int64_t batch) {
  FI_GRID_STRIDE_LOOP(i, batch) {
    const int64_t pages = int64_t(indptr[i + 1]) - indptr[i];
    out[i * out_stride] = pages > 0 ? int32_t((pages - 1) * page_size + last[i]) : 0;
  }
}

__global__ void batch_indices_positions_kernel(IntVec indptr, IntVec seq_lens, int64_t batch, int32_t* bi,
                                               int64_t bi_stride, int32_t* pos, int64_t pos_stride, int64_t nnz) {
  FI_GRID_STRIDE_LOOP(j, nnz) {
    // The largest b in [0, batch) with indptr[b] <= j (empty requests before it are skipped).
    int64_t lo = 0, hi = batch - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (indptr[mid] <= j) lo = mid; else hi = mid - 1;
    }
    const int64_t start = indptr[lo], end = indptr[lo + 1];
    bi[j * bi_stride] = int32_t(lo);
    pos[j * pos_stride] = int32_t(int64_t(seq_lens[lo]) - (end - start) + (j - start));
  }
}

struct AppendParams {
  const void* src[2];  // key, value: [nnz, heads, head_dim]
  void* dst[2];        // k_cache, v_cache: [pages, page_size, heads, head_dim]
  int64_t src_stride[2][3];
  int64_t dst_stride[2][4];
  IntVec batch_indices, positions, indices, indptr;
  int64_t nnz, heads, head_dim, page_size;
  int32_t src_dtype, dst_dtype;
};

// Element offset of slot (j, h) of cache w, or -1 never (validated on the host).
__device__ __forceinline__ int64_t dst_row(const AppendParams& p, int w, int64_t j, int64_t h) {
  const int64_t b = p.batch_indices[j], pos = p.positions[j];
  const int64_t page = p.indices[int64_t(p.indptr[b]) + pos / p.page_size], slot = pos % p.page_size;
  return page * p.dst_stride[w][0] + slot * p.dst_stride[w][1] + h * p.dst_stride[w][2];
}

// One element per thread, any strides, any supported dtype pair.
__global__ void append_elementwise_kernel(const AppendParams p) {
  const int64_t per = p.nnz * p.heads * p.head_dim;
  FI_GRID_STRIDE_LOOP(i, 2 * per) {
    const int w = i >= per ? 1 : 0;
    const int64_t r = i - w * per;
    const int64_t d = r % p.head_dim, h = (r / p.head_dim) % p.heads, j = r / (p.head_dim * p.heads);
    const int64_t so = j * p.src_stride[w][0] + h * p.src_stride[w][1] + d * p.src_stride[w][2];
    const int64_t dof = dst_row(p, w, j, h) + d * p.dst_stride[w][3];
    cast_element(p.dst[w], p.dst_dtype, dof, p.src[w], p.src_dtype, so);
  }
}

// Same dtype, head_dim contiguous, rows 16-byte aligned: a block appends kTokens tokens. First
// one thread per token walks the index chain (batch index, position, page) and leaves the
// token's destination row offsets in shared memory, so those dependent loads happen once per
// token and in parallel; then all threads copy the tokens' K and V rows as 16-byte vectors, each
// thread issuing all its loads before its stores. (A thread per vector, each walking the chain
// with 64-bit division, reached 42% of copy; a warp per token, 29%.)
constexpr int kTokens = 8;
constexpr int kAppendThreads = 256;

__global__ void __launch_bounds__(kAppendThreads) append_vec16_kernel(const AppendParams p, int chunks, int itemsize) {
  __shared__ int64_t dst_off[2][kTokens];  // element offsets of the tokens' rows in k/v cache
  const int per_token = int(p.heads) * chunks, per_block = 2 * kTokens * per_token;
  constexpr int kMaxPerThread = 8;
  for (int64_t j0 = int64_t(blockIdx.x) * kTokens; j0 < p.nnz; j0 += int64_t(gridDim.x) * kTokens) {
    __syncthreads();  // the previous tokens' readers are done with dst_off
    if (threadIdx.x < kTokens && j0 + threadIdx.x < p.nnz) {
      const int64_t j = j0 + threadIdx.x;
      const int64_t b = p.batch_indices[j], pos = p.positions[j];
      const int64_t page = p.indices[int64_t(p.indptr[b]) + pos / p.page_size], slot = pos % p.page_size;
      for (int w = 0; w < 2; ++w) dst_off[w][threadIdx.x] = page * p.dst_stride[w][0] + slot * p.dst_stride[w][1];
    }
    __syncthreads();
    const int tokens = int(p.nnz - j0 < kTokens ? p.nnz - j0 : kTokens);
    const int items = 2 * tokens * per_token;
    for (int i0 = threadIdx.x; i0 < per_block; i0 += kAppendThreads * kMaxPerThread) {
      uint4 val[kMaxPerThread];
      int64_t to[kMaxPerThread];
#pragma unroll
      for (int u = 0; u < kMaxPerThread; ++u) {
        const int i = i0 + u * kAppendThreads;
        if (i < items) {
          const int tw = i / per_token, r = i - tw * per_token, tok = tw >> 1, w = tw & 1;
          const int h = r / chunks, c = r - h * chunks;
          const char* src = static_cast<const char*>(p.src[w]) + ((j0 + tok) * p.src_stride[w][0] + h * p.src_stride[w][1]) * itemsize;
          val[u] = reinterpret_cast<const uint4*>(src)[c];
          to[u] = (dst_off[w][tok] + h * p.dst_stride[w][2]) * itemsize + 16 * c;
          if (w) to[u] = -1 - to[u];  // the sign tells which cache
        }
      }
#pragma unroll
      for (int u = 0; u < kMaxPerThread; ++u) {
        if (i0 + u * kAppendThreads < items) {
          const bool v = to[u] < 0;
          char* dst = static_cast<char*>(p.dst[v ? 1 : 0]) + (v ? -1 - to[u] : to[u]);
          *reinterpret_cast<uint4*>(dst) = val[u];
        }
      }
    }
  }
}

// Every row of t starts 16-byte aligned and its last dimension is contiguous.
bool rows_aligned16(const fi_tensor_desc& t) {
  const int64_t size = itemsize(t.dtype);
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  if (t.shape[t.ndim - 1] > 1 && t.strides[t.ndim - 1] != 1) return false;
  for (int d = 0; d + 1 < t.ndim; ++d)
    if (t.shape[d] > 1 && (t.strides[d] * size) % 16 != 0) return false;
  return true;
}

}  // namespace

void page_seq_lens_cuda(const fi_tensor_desc& indptr, const fi_tensor_desc& last_page_len, int32_t page_size,
                        const fi_tensor_desc& seq_lens, void* stream) {
  const int64_t batch = seq_lens.shape[0];
  seq_lens_kernel<<<elementwise_blocks(batch), kElementwiseThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      int_vec(indptr), int_vec(last_page_len), page_size, static_cast<int32_t*>(seq_lens.data), seq_lens.strides[0], batch);
  check_launch("page seq_lens kernel");
}

void page_batch_indices_positions_cuda(const fi_tensor_desc& append_indptr, const fi_tensor_desc& seq_lens,
                                       const fi_tensor_desc& batch_indices, const fi_tensor_desc& positions,
                                       void* stream) {
  const int64_t nnz = positions.shape[0];
  batch_indices_positions_kernel<<<elementwise_blocks(nnz), kElementwiseThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      int_vec(append_indptr), int_vec(seq_lens), seq_lens.shape[0], static_cast<int32_t*>(batch_indices.data),
      batch_indices.strides[0], static_cast<int32_t*>(positions.data), positions.strides[0], nnz);
  check_launch("page batch_indices_positions kernel");
}

void page_append_cuda(const fi_tensor_desc& key, const fi_tensor_desc& value, const fi_tensor_desc& batch_indices,
                      const fi_tensor_desc& positions, const fi_tensor_desc& k_cache, const fi_tensor_desc& v_cache,
                      const fi_tensor_desc& kv_indices, const fi_tensor_desc& kv_indptr, void* stream) {
  AppendParams p{};
  const fi_tensor_desc* src[2] = {&key, &value};
  const fi_tensor_desc* dst[2] = {&k_cache, &v_cache};
  for (int w = 0; w < 2; ++w) {
    p.src[w] = src[w]->data;
    p.dst[w] = dst[w]->data;
    for (int d = 0; d < 3; ++d) p.src_stride[w][d] = src[w]->strides[d];
    for (int d = 0; d < 4; ++d) p.dst_stride[w][d] = dst[w]->strides[d];
  }
  p.batch_indices = int_vec(batch_indices);
  p.positions = int_vec(positions);
  p.indices = int_vec(kv_indices);
  p.indptr = int_vec(kv_indptr);
  p.nnz = key.shape[0];
  p.heads = key.shape[1];
  p.head_dim = key.shape[2];
  p.page_size = k_cache.shape[1];
  p.src_dtype = key.dtype;
  p.dst_dtype = k_cache.dtype;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int size = itemsize(key.dtype);
  const bool vec = key.dtype == k_cache.dtype && (p.head_dim * size) % 16 == 0 && rows_aligned16(key) &&
                   rows_aligned16(value) && rows_aligned16(k_cache) && rows_aligned16(v_cache);
  if (vec) {
    const int chunks = int(p.head_dim * size / 16);
    const int64_t blocks = (p.nnz + kTokens - 1) / kTokens, cap = int64_t(1) << 16;
    append_vec16_kernel<<<unsigned(blocks < cap ? blocks : cap), kAppendThreads, 0, s>>>(p, chunks, size);
  } else {
    const int64_t n = 2 * p.nnz * p.heads * p.head_dim;
    append_elementwise_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, s>>>(p);
  }
  check_launch("page append kernel");
}

}  // namespace fi

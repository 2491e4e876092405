// Decode scheduler (host): validates the page table, splits long requests into chunks so the
// whole device is busy even at batch 1, and writes the flat plan into the workspace.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "../common/runtime.h"
#include "decode.h"

namespace fi {

int32_t next_plan_serial() {
  static std::atomic<int32_t> serial{1};
  return serial.fetch_add(1);
}

void require_plan_in_workspace(const void* workspace, int32_t serial) {
  const int32_t found = static_cast<const int32_t*>(workspace)[kPlanSerialSlot];
  require(found == serial, "workspace: it no longer holds this wrapper's plan (plan ", serial, "; plan ", found,
          " was written into it since): give each wrapper its own workspace, or plan again");
}

DecodeMachine decode_machine(const fi_decode_plan_args& a) {
#ifdef FI_WITH_CUDA
  if (a.device >= 0) {
    // Occupancy queries cost microseconds; plan() runs every step, so remember the answers.
    static std::mutex mutex;
    static std::map<std::tuple<int, int, int, int, int>, int32_t> cache;
    const int hpc = decode_heads_per_cta(a.num_qo_heads / a.num_kv_heads);
    const auto key = std::make_tuple(a.device, a.head_dim, a.q_dtype, a.kv_dtype, hpc * 2 + (a.use_tensor_cores != 0));
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it == cache.end()) {
      int sms = 0;
      set_device(a.device);
      cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device), "cudaDeviceGetAttribute");
      const int per_sm = decode_ctas_per_sm_cuda(a.head_dim, a.q_dtype, a.kv_dtype, hpc, a.use_tensor_cores != 0);
      it = cache.emplace(key, sms * std::max(per_sm, 1)).first;
    }
    return DecodeMachine{it->second, 256};
  }
#endif
  return DecodeMachine{8, 64};
}

namespace {

// Smallest and largest of n int32 (n may be 0: then 0 and -1). Cloned for AVX2 so the scan over
// every page index of a batch runs at memory speed; the default clone serves older CPUs.
__attribute__((target_clones("avx2", "default"))) void min_max_int32(const int32_t* x, int32_t n, int32_t* lo,
                                                                      int32_t* hi) {
  int32_t mn = 0, mx = -1;
  for (int32_t i = 0; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  *lo = mn;
  *hi = mx;
}

void validate_plan_args(const fi_decode_plan_args& a) {
  require(a.batch_size >= 1, "batch_size: expected >= 1, got ", a.batch_size);
  require(a.num_kv_heads >= 1, "num_kv_heads: expected >= 1, got ", a.num_kv_heads);
  require(a.num_qo_heads >= 1 && a.num_qo_heads % a.num_kv_heads == 0, "num_qo_heads: expected a positive multiple of num_kv_heads (",
          a.num_kv_heads, "), got ", a.num_qo_heads);
  require(a.page_size >= 1, "page_size: expected >= 1, got ", a.page_size);
  if (a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256)
    fail(FI_ERR_UNSUPPORTED, "head_dim: supported values are 64, 128 and 256, got ", a.head_dim);
  if (a.q_dtype != FI_FLOAT16 && a.q_dtype != FI_BFLOAT16)
    fail(FI_ERR_UNSUPPORTED, "q_dtype: expected float16 or bfloat16, got ", dtype_name(a.q_dtype));
  if (a.kv_dtype != a.q_dtype && a.kv_dtype != FI_FLOAT8_E4M3FN && a.kv_dtype != FI_FLOAT8_E5M2)
    fail(FI_ERR_UNSUPPORTED, "kv_dtype: expected q's dtype (", dtype_name(a.q_dtype),
         ") or float8_e4m3fn / float8_e5m2, got ", dtype_name(a.kv_dtype));
  require(a.indptr && a.last_page_len, "indptr, last_page_len: null pointer");
  require_valid_device(a.device, "device");
  const int32_t* ip = a.indptr;
  require(ip[0] == 0, "indptr[0]: expected 0, got ", ip[0]);
  for (int32_t r = 0; r < a.batch_size; ++r) {
    require(ip[r + 1] >= ip[r], "indptr: must be non-decreasing, but indptr[", r + 1, "] = ", ip[r + 1],
            " < indptr[", r, "] = ", ip[r]);
    const int32_t last = a.last_page_len[r];
    if (ip[r + 1] > ip[r]) {
      require(last >= 1 && last <= a.page_size, "last_page_len[", r, "]: expected 1..", a.page_size, " (page_size), got ", last);
    } else {
      require(last >= 0 && last <= a.page_size, "last_page_len[", r, "]: expected 0..", a.page_size, ", got ", last);
    }
  }
  require(ip[a.batch_size] == 0 || a.indices != nullptr, "indices: null pointer");
}

}  // namespace

}  // namespace fi

using namespace fi;

extern "C" FI_API int32_t fi_decode_plan(const fi_decode_plan_args* args, void* host_plan,
                                         uint64_t host_plan_bytes, void* workspace,
                                         uint64_t workspace_bytes, void* stream,
                                         fi_decode_plan_info* info) {
  return guard([&] {
    require(args != nullptr && info != nullptr, "args, info: null pointer");
    const fi_decode_plan_args& a = *args;
    validate_plan_args(a);
    const int32_t batch = a.batch_size;
    const int32_t nnz = a.indptr[batch];

    // Request lengths, largest page index.
    int64_t total = 0;
    int32_t max_page = -1;
    int32_t min_page = 0;
    min_max_int32(a.indices, nnz, &min_page, &max_page);
    if (min_page < 0) {
      const int32_t i = int32_t(std::find_if(a.indices, a.indices + nnz, [](int32_t x) { return x < 0; }) - a.indices);
      fail(FI_ERR_INVALID_ARGUMENT, "indices[", i, "]: page index must be >= 0, got ", a.indices[i]);
    }
    auto request_len = [&](int32_t r) -> int64_t {
      const int32_t pages = a.indptr[r + 1] - a.indptr[r];
      return pages == 0 ? 0 : int64_t(pages - 1) * a.page_size + a.last_page_len[r];
    };
    for (int32_t r = 0; r < batch; ++r) total += request_len(r);
    require(total < (int64_t(1) << 31), "indptr: total KV length ", total, " exceeds 2^31 - 1 tokens");

    // Chunk size: enough work items to fill the device once, no chunk below the minimum.
    const DecodeMachine m = decode_machine(a);
    const int32_t group = a.num_qo_heads / a.num_kv_heads;
    const int32_t head_tasks = a.num_kv_heads * ((group + decode_heads_per_cta(group) - 1) / decode_heads_per_cta(group));
    const int32_t items_wanted = std::max(1, m.concurrent_ctas / head_tasks);  // per head task
    int64_t max_len = 0;
    for (int32_t r = 0; r < batch; ++r) max_len = std::max(max_len, request_len(r));
    int64_t chunk = std::max<int64_t>(max_len, 1);
    if (batch < items_wanted) {
      const int64_t even = (total + items_wanted - 1) / items_wanted;
      chunk = std::min(chunk, std::max<int64_t>(even, m.min_chunk_tokens));
      chunk = align_up(uint64_t(chunk), 16);
    }
    int32_t num_work = 0, num_partials = 0;
    for (int32_t r = 0; r < batch; ++r) {
      const int64_t chunks = std::max<int64_t>(1, (request_len(r) + chunk - 1) / chunk);
      num_work += int32_t(chunks);
      if (chunks > 1) num_partials += int32_t(chunks);
    }
    const int32_t valid_work = num_work;
    if (a.fixed_grid) {
      // Shapes that depend on batch size only: chunk >= total / items_wanted bounds the count.
      num_work = batch + items_wanted;
      num_partials = num_work;
    }

    fi_decode_plan_info r{};
    r.batch_size = batch;
    r.num_qo_heads = a.num_qo_heads;
    r.num_kv_heads = a.num_kv_heads;
    r.head_dim = a.head_dim;
    r.page_size = a.page_size;
    r.q_dtype = a.q_dtype;
    r.kv_dtype = a.kv_dtype;
    r.device = a.device;
    r.fixed_grid = a.fixed_grid;
    r.use_tensor_cores = a.use_tensor_cores ? 1 : 0;
    r.num_work = num_work;
    r.num_partials = num_partials;
    r.chunk_tokens = int32_t(chunk);
    r.max_page_index = max_page;
    r.nnz_pages = nnz;
    r.total_kv_len = total;
    r.any_split = (a.fixed_grid || num_partials > 0) ? 1 : 0;
    const uint64_t plan_ints = decode_plan_ints(num_work, batch);
    r.plan_bytes = plan_ints * 4;
    // The page indices follow the plan directly (one copy to the device), except in CUDA-graph
    // mode, where every offset a captured launch uses must not move: then they go last.
    const uint64_t partial_o_bytes = uint64_t(num_partials) * a.num_qo_heads * a.head_dim * 4;
    const uint64_t partial_lse_bytes = uint64_t(num_partials) * a.num_qo_heads * 4;
    uint64_t end;
    if (a.fixed_grid) {
      r.off_partial_o = align_up(r.plan_bytes, kWorkspaceAlign);
      r.off_partial_lse = align_up(r.off_partial_o + partial_o_bytes, kWorkspaceAlign);
      r.off_indices = align_up(r.off_partial_lse + partial_lse_bytes, kWorkspaceAlign);
      end = r.off_indices + uint64_t(nnz) * 4;
    } else {
      r.off_indices = r.plan_bytes;
      r.off_partial_o = align_up(r.off_indices + uint64_t(nnz) * 4, kWorkspaceAlign);
      r.off_partial_lse = align_up(r.off_partial_o + partial_o_bytes, kWorkspaceAlign);
      end = r.off_partial_lse + partial_lse_bytes;
    }
    r.workspace_bytes = end;
    r.host_bytes = a.device == FI_DEVICE_CPU ? 0 : r.plan_bytes + uint64_t(nnz) * 4;
    *info = r;

    require(workspace != nullptr && workspace_bytes >= r.workspace_bytes, "workspace: this plan needs ",
            r.workspace_bytes, " bytes, the buffer has ", workspace_bytes);
    int32_t* staging = static_cast<int32_t*>(a.device == FI_DEVICE_CPU ? workspace : host_plan);
    if (a.device != FI_DEVICE_CPU)
      require(host_plan != nullptr && host_plan_bytes >= r.host_bytes, "host_plan: needs ", r.host_bytes,
              " bytes of page-locked staging, got ", host_plan_bytes);

    // Fill the plan.
    std::memset(staging, 0, r.plan_bytes);
    staging[0] = valid_work;
    staging[1] = batch;
    staging[kPlanSerialSlot] = info->plan_serial = next_plan_serial();
    int32_t* work_request = staging + kDecodeHeaderInts;
    int32_t* work_begin = work_request + num_work;
    int32_t* work_end = work_begin + num_work;
    int32_t* work_slot = work_end + num_work;
    int32_t* merge_indptr = work_slot + num_work;
    int32_t* kv_len = merge_indptr + batch + 1;
    int32_t* page_indptr = kv_len + batch;
    int32_t w = 0, slot = 0;
    merge_indptr[0] = 0;
    for (int32_t q = 0; q < batch; ++q) {
      const int64_t len = request_len(q);
      kv_len[q] = int32_t(len);
      const int64_t chunks = std::max<int64_t>(1, (len + chunk - 1) / chunk);
      for (int64_t c = 0; c < chunks; ++c, ++w) {
        work_request[w] = q;
        work_begin[w] = int32_t(c * chunk);
        work_end[w] = int32_t(std::min(len, (c + 1) * chunk));
        work_slot[w] = chunks > 1 ? slot++ : -1;
      }
      merge_indptr[q + 1] = slot;
    }
    std::memcpy(page_indptr, a.indptr, sizeof(int32_t) * (batch + 1));
    if (a.device == FI_DEVICE_CPU) {
      std::memcpy(static_cast<char*>(workspace) + r.off_indices, a.indices, sizeof(int32_t) * nnz);
      return;
    }
#ifdef FI_WITH_CUDA
    std::memcpy(reinterpret_cast<char*>(staging) + r.plan_bytes, a.indices, sizeof(int32_t) * nnz);
    set_device(a.device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (!a.fixed_grid) {  // plan and indices are adjacent in both buffers
      cuda_check(cudaMemcpyAsync(workspace, staging, r.host_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync(plan)");
      return;
    }
    cuda_check(cudaMemcpyAsync(workspace, staging, r.plan_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync(plan)");
    if (nnz > 0)
      cuda_check(cudaMemcpyAsync(static_cast<char*>(workspace) + r.off_indices, reinterpret_cast<char*>(staging) + r.plan_bytes,
                                 sizeof(int32_t) * nnz, cudaMemcpyHostToDevice, s),
                 "cudaMemcpyAsync(indices)");
#endif
  });
}

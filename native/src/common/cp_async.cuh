// cp.async (sm_80+): 16-byte asynchronous copies global -> shared in commit groups.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fi {

// Copies 16 bytes, or writes 16 zero bytes and reads nothing when !valid (src-size 0).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's groups are pending (a barrier then makes every
// thread's landed copies visible to the block).
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

}  // namespace fi

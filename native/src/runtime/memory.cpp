// Device memory from CUDA's stream-ordered pool; page-locked host memory; copies.
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "../common/runtime.h"

using namespace fi;

namespace {

#ifdef FI_WITH_CUDA
// Keep freed blocks in the pool instead of returning them to the driver at every sync,
// so allocation in a serving loop costs a pool lookup (what a caching allocator would give).
void configure_pool_once(int32_t device) {
  static std::once_flag flags[64];
  if (device >= 64) return;
  std::call_once(flags[device], [device] {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
      uint64_t threshold = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
    cudaGetLastError();
  });
}

cudaMemcpyKind copy_kind(int32_t dst_device, int32_t src_device) {
  if (src_device == FI_DEVICE_CPU) return dst_device == FI_DEVICE_CPU ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice;
  return dst_device == FI_DEVICE_CPU ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
}
#endif

}  // namespace

extern "C" {

FI_API int32_t fi_device_malloc(int32_t device, uint64_t bytes, void* stream, void** out) {
  return guard([&] {
    require(out != nullptr, "out: null pointer");
    require(device != FI_DEVICE_CPU, "device: fi_device_malloc takes a CUDA device; use fi_host_malloc for cpu");
    require_valid_device(device, "device");
    *out = nullptr;
#ifdef FI_WITH_CUDA
    set_device(device);
    configure_pool_once(device);
    if (bytes == 0) return;
    void* p = nullptr;
    const cudaError_t err = cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream));
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      fail(FI_ERR_OUT_OF_MEMORY, "out of memory on ", device_string(device), ": cannot allocate ",
           bytes, " bytes");
    }
    cuda_check(err, "cudaMallocAsync");
    *out = p;
#endif
  });
}

FI_API int32_t fi_device_free(int32_t device, void* ptr, void* stream) {
  return guard([&] {
    if (ptr == nullptr) return;
    require_valid_device(device, "device");
#ifdef FI_WITH_CUDA
    set_device(device);
    cuda_check(cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)), "cudaFreeAsync");
#endif
  });
}

FI_API int32_t fi_host_malloc(uint64_t bytes, void** out, int32_t* pinned) {
  return guard([&] {
    require(out != nullptr && pinned != nullptr, "out, pinned: null pointer");
    *out = nullptr;
    *pinned = 0;
    const uint64_t size = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
#ifdef FI_WITH_CUDA
    if (cuda_device_count() > 0) {
      void* p = nullptr;
      const cudaError_t err = cudaHostAlloc(&p, size, cudaHostAllocPortable);
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        fail(FI_ERR_OUT_OF_MEMORY, "out of page-locked host memory: cannot allocate ", bytes, " bytes");
      }
      cuda_check(err, "cudaHostAlloc");
      *out = p;
      *pinned = 1;
      return;
    }
#endif
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr) fail(FI_ERR_OUT_OF_MEMORY, "out of host memory: cannot allocate ", bytes, " bytes");
    *out = p;
  });
}

FI_API int32_t fi_host_free(void* ptr, int32_t pinned) {
  return guard([&] {
    if (ptr == nullptr) return;
#ifdef FI_WITH_CUDA
    if (pinned) {
      cuda_check(cudaFreeHost(ptr), "cudaFreeHost");
      return;
    }
#endif
    require(!pinned, "pinned: this library has no CUDA backend, so nothing is pinned");
    std::free(ptr);
  });
}

FI_API int32_t fi_memcpy(void* dst, int32_t dst_device, const void* src, int32_t src_device,
                         uint64_t bytes, void* stream) {
  return guard([&] {
    require_valid_device(dst_device, "dst_device");
    require_valid_device(src_device, "src_device");
    if (bytes == 0) return;
    require(dst != nullptr && src != nullptr, "dst, src: null pointer");
    if (dst_device == FI_DEVICE_CPU && src_device == FI_DEVICE_CPU) {
      std::memmove(dst, src, bytes);
      return;
    }
#ifdef FI_WITH_CUDA
    set_device(src_device != FI_DEVICE_CPU ? src_device : dst_device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (dst_device >= 0 && src_device >= 0 && dst_device != src_device) {
      cuda_check(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, s), "cudaMemcpyPeerAsync");
    } else {
      cuda_check(cudaMemcpyAsync(dst, src, bytes, copy_kind(dst_device, src_device), s), "cudaMemcpyAsync");
    }
#endif
  });
}

}  // extern "C"

// Devices: count, properties, synchronization, memory info; plus the shared device helpers.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>

#include "../common/runtime.h"

namespace fi {

std::string device_string(int32_t device) {
  return device == FI_DEVICE_CPU ? std::string("cpu") : "cuda:" + std::to_string(device);
}

int32_t cuda_device_count() {
#ifdef FI_WITH_CUDA
  static int32_t count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // no driver or no GPU: clear the sticky error and report none
      n = 0;
    }
    return int32_t(n);
  }();
  return count;
#else
  return 0;
#endif
}

void require_valid_device(int32_t device, const char* name) {
  if (device == FI_DEVICE_CPU) return;
  require(device >= 0, name, ": device must be cpu (-1) or a CUDA ordinal, got ", device);
  const int32_t n = cuda_device_count();
  if (n == 0) fail(FI_ERR_NO_DEVICE, name, ": ", device_string(device), " requested but no CUDA device is available");
  require(device < n, name, ": ", device_string(device), " does not exist (", n, " CUDA device(s))");
}

#ifdef FI_WITH_CUDA
void cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear non-sticky errors so the next call starts clean
  const int32_t code = err == cudaErrorMemoryAllocation ? FI_ERR_OUT_OF_MEMORY : FI_ERR_CUDA;
  fail(code, what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

void set_device(int32_t device) {
  int current = -1;
  cuda_check(cudaGetDevice(&current), "cudaGetDevice");
  if (current != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
}
#endif

}  // namespace fi

using namespace fi;

extern "C" {

FI_API int32_t fi_device_count(int32_t* count) {
  return guard([&] {
    require(count != nullptr, "count: null pointer");
    *count = cuda_device_count();
  });
}

FI_API int32_t fi_device_get_properties(int32_t device, fi_device_properties* out) {
  return guard([&] {
    require(out != nullptr, "out: null pointer");
    require(device != FI_DEVICE_CPU, "device: properties are reported for CUDA devices only");
    require_valid_device(device, "device");
#ifdef FI_WITH_CUDA
    cudaDeviceProp p{};
    cuda_check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    fi_device_properties r{};
    std::memcpy(r.name, p.name, std::min(sizeof(r.name) - 1, std::strlen(p.name)));
    r.total_memory = p.totalGlobalMem;
    r.sm_count = p.multiProcessorCount;
    r.major = p.major;
    r.minor = p.minor;
    r.l2_cache_size = p.l2CacheSize;
    r.max_shared_memory_per_block_optin = int32_t(p.sharedMemPerBlockOptin);
    r.memory_bus_width = p.memoryBusWidth;
    int clock = 0;
    cudaDeviceGetAttribute(&clock, cudaDevAttrMemoryClockRate, device);
    r.memory_clock_khz = clock;
    *out = r;
#endif
  });
}

FI_API int32_t fi_device_synchronize(int32_t device) {
  return guard([&] {
    require_valid_device(device, "device");
#ifdef FI_WITH_CUDA
    if (device == FI_DEVICE_CPU) return;
    set_device(device);
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
#endif
  });
}

FI_API int32_t fi_device_mem_info(int32_t device, uint64_t* free_bytes, uint64_t* total_bytes) {
  return guard([&] {
    require(free_bytes && total_bytes, "free_bytes, total_bytes: null pointer");
    require(device != FI_DEVICE_CPU, "device: memory info is reported for CUDA devices only");
    require_valid_device(device, "device");
#ifdef FI_WITH_CUDA
    set_device(device);
    size_t f = 0, t = 0;
    cuda_check(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    *free_bytes = f;
    *total_bytes = t;
#endif
  });
}

}  // extern "C"

// Device handling shared by every entry: validation, CUDA error checks, current-device guard.
#pragma once
#include <cstdint>
#include <string>

#include "status.h"

#ifdef FI_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace fi {

std::string device_string(int32_t device);
// Number of usable CUDA devices (0 without driver, GPU or CUDA backend); cached after first call.
int32_t cuda_device_count();
// Throws FI_ERR_NO_DEVICE / FI_ERR_INVALID_ARGUMENT naming `name` unless `device` exists.
void require_valid_device(int32_t device, const char* name);

// CPU backends: multiply-adds below which a run stays on one thread (waking an OpenMP team costs
// tens of microseconds on a busy host, more than such a run takes).
constexpr int64_t kCpuParallelWork = int64_t(1) << 11;

#ifdef FI_WITH_CUDA
// Throws FI_ERR_CUDA (FI_ERR_OUT_OF_MEMORY for allocation failures) naming `what`.
void cuda_check(cudaError_t err, const char* what);
// Makes `device` current for the calling thread.
void set_device(int32_t device);
// The launch error of the last kernel, if any.
inline void check_launch(const char* what) { cuda_check(cudaGetLastError(), what); }
#endif

}  // namespace fi

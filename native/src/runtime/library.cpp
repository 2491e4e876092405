// Library identity and ABI layout checks.
#include <cstring>

#include "../common/status.h"

extern "C" {

FI_API const char* fi_version(void) { return "0.1.0"; }

FI_API int32_t fi_has_cuda_backend(void) {
#ifdef FI_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

FI_API uint64_t fi_struct_size(const char* which) {
  if (which == nullptr) return 0;
  if (std::strcmp(which, "fi_tensor_desc") == 0) return sizeof(fi_tensor_desc);
  if (std::strcmp(which, "fi_device_properties") == 0) return sizeof(fi_device_properties);
  if (std::strcmp(which, "fi_decode_plan_args") == 0) return sizeof(fi_decode_plan_args);
  if (std::strcmp(which, "fi_decode_plan_info") == 0) return sizeof(fi_decode_plan_info);
  if (std::strcmp(which, "fi_decode_run_args") == 0) return sizeof(fi_decode_run_args);
  if (std::strcmp(which, "fi_prefill_plan_args") == 0) return sizeof(fi_prefill_plan_args);
  if (std::strcmp(which, "fi_prefill_plan_info") == 0) return sizeof(fi_prefill_plan_info);
  if (std::strcmp(which, "fi_prefill_run_args") == 0) return sizeof(fi_prefill_run_args);
  if (std::strcmp(which, "fi_sampling_params") == 0) return sizeof(fi_sampling_params);
  return 0;
}

}  // extern "C"

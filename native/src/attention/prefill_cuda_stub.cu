// TEMPORARY stand-in for the CUDA prefill backend (prefill.cu), so the host branch builds with
// CUDA before the kernels are merged. Delete this file when prefill.cu lands.
#include "../common/status.h"
#include "prefill.h"

namespace fi {

bool prefill_cuda_supports(int32_t, int32_t, int32_t, int32_t) { return false; }

int prefill_ctas_per_sm_cuda(int32_t, int32_t, int32_t, int32_t, int32_t) { return 1; }

void prefill_run_cuda(const PrefillParams&, void*) {
  fail(FI_ERR_UNSUPPORTED, "prefill: the CUDA prefill kernels are not built into this library");
}

}  // namespace fi

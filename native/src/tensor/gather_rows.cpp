// fi_tensor_gather_rows: rows of src picked by host indices (an embedding lookup). Everything is
// checked before a byte is written.
#include "../common/runtime.h"
#include "tensor_ops.h"

using namespace fi;

extern "C" FI_API int32_t fi_tensor_gather_rows(const fi_tensor_desc* dst, const fi_tensor_desc* src, const int32_t* indices, int64_t n,
                                                void* stream) {
  return guard([&] {
    validate_desc(dst, "dst");
    validate_desc(src, "src");
    require(src->ndim == 2, "src: expected [rows, cols], got ", shape_string(*src));
    require(n >= 0, "indices: expected a count >= 0, got ", n);
    require(dst->ndim == 2 && dst->shape[0] == n && dst->shape[1] == src->shape[1], "dst: expected [", n, ", ", src->shape[1],
            "] (one row per index), got ", shape_string(*dst));
    require(dst->dtype == src->dtype, "dst: dtype ", dtype_name(dst->dtype), " differs from src's ", dtype_name(src->dtype));
    require(dst->device == src->device, "dst: is on ", device_string(dst->device), ", src on ", device_string(src->device));
    require(src->shape[1] <= 1 || (src->strides[1] == 1 && dst->strides[1] == 1), "src, dst: the column axis must be contiguous (stride 1)");
    require(n <= 1 || dst->strides[0] != 0, "dst: must not be a broadcast view");
    require(n == 0 || indices != nullptr, "indices: null pointer");
    for (int64_t i = 0; i < n; ++i)
      require(indices[i] >= 0 && indices[i] < src->shape[0], "indices[", i, "]: expected 0..", src->shape[0] - 1, " (src's rows), got ",
              indices[i]);
    require_no_overlap(*dst, "dst", *src, "src");
    if (n == 0 || src->shape[1] == 0) return;
    if (dst->device == FI_DEVICE_CPU) return gather_rows_cpu(*dst, *src, indices, n);
#ifdef FI_WITH_CUDA
    set_device(dst->device);
    gather_rows_cuda(*dst, *src, indices, n, stream);
#else
    (void)stream;
#endif
  });
}

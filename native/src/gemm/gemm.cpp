// fi_gemm: validates every argument, reduces the operands to matrix strides, then dispatches to
// the CPU backend or the CUDA one (cuBLASLt, loaded at run time: gemm_cuda.cpp). Nothing is
// written unless every check passes.
#include <cmath>

#include "../common/runtime.h"
#include "gemm.h"

using namespace fi;

namespace {

// The logical matrices of t ([batch,] rows, cols; transposed: rows and cols swapped).
GemmMatrix matrix_of(const fi_tensor_desc& t, bool batched, bool transposed) {
  const int n = t.ndim;
  GemmMatrix m{t.data, batched ? t.strides[0] : 0, t.strides[n - 2], t.strides[n - 1]};
  if (transposed) std::swap(m.row, m.col);
  return m;
}

}  // namespace

extern "C" FI_API int32_t fi_gemm(const fi_tensor_desc* a, const fi_tensor_desc* b, const fi_tensor_desc* out, int32_t trans_a,
                                  int32_t trans_b, double alpha, double beta, void* stream) {
  return guard([&] {
    validate_desc(a, "a");
    validate_desc(b, "b");
    validate_desc(out, "out");
    require(a->ndim == 2 || a->ndim == 3, "a: expected [M, K] or [batch, M, K] (", trans_a ? "[K, M] with transA" : "no transA", "), got ",
            shape_string(*a));
    const bool batched = a->ndim == 3;
    require(b->ndim == a->ndim, "b: expected ", a->ndim, " dimensions as a, got ", shape_string(*b));
    require(out->ndim == a->ndim, "out: expected ", a->ndim, " dimensions as a, got ", shape_string(*out));
    const bool fp8 = a->dtype == FI_FLOAT8_E4M3FN || a->dtype == FI_FLOAT8_E5M2;
    if (!fp8) require_float_dtype(*a, "a");
    require(fp8 ? (b->dtype == FI_FLOAT8_E4M3FN || b->dtype == FI_FLOAT8_E5M2) : b->dtype == a->dtype, "b: dtype must be ",
            fp8 ? "float8_e4m3fn or float8_e5m2 (as a)" : dtype_name(a->dtype), ", got ", dtype_name(b->dtype));
    if (fp8) {
      require(out->dtype == FI_BFLOAT16 || out->dtype == FI_FLOAT16 || out->dtype == FI_FLOAT32, "out: dtype must be bfloat16, float16 or float32 ",
              "for float8 inputs, got ", dtype_name(out->dtype));
    } else {
      require(out->dtype == a->dtype || out->dtype == FI_FLOAT32, "out: dtype must be ", dtype_name(a->dtype), " (a's) or float32, got ",
              dtype_name(out->dtype));
    }
    require(b->device == a->device, "b: on ", device_string(b->device), " but a is on ", device_string(a->device));
    require(out->device == a->device, "out: on ", device_string(out->device), " but a is on ", device_string(a->device));
    require(std::isfinite(alpha), "alpha: must be finite, got ", alpha);
    require(std::isfinite(beta), "beta: must be finite, got ", beta);

    const int n = a->ndim;
    GemmArgs g{};
    g.batch = batched ? a->shape[0] : 1;
    g.m = a->shape[n - (trans_a ? 1 : 2)];
    g.k = a->shape[n - (trans_a ? 2 : 1)];
    const int64_t kb = b->shape[n - (trans_b ? 1 : 2)];
    g.n = b->shape[n - (trans_b ? 2 : 1)];
    if (batched) require(b->shape[0] == g.batch, "b: batch ", b->shape[0], " differs from a's ", g.batch);
    require(kb == g.k, "b: op(b) must be [K = ", g.k, ", N] (K from op(a) = [", g.m, ", ", g.k, "]), got op(b) = [", kb, ", ", g.n,
            "] from ", shape_string(*b), trans_b ? " with transB" : "");
    require(out->shape[n - 2] == g.m && out->shape[n - 1] == g.n && (!batched || out->shape[0] == g.batch), "out: shape must be [",
            batched ? std::to_string(g.batch) + ", " : std::string(), g.m, ", ", g.n, "], got ", shape_string(*out));
    for (int d = 0; d < n; ++d)
      require(out->shape[d] <= 1 || out->strides[d] != 0, "out: is written, so it must not be a broadcast view (dimension ", d, " has stride 0)");
    require(g.m <= 1 || g.n <= 1 || out->strides[n - 2] != out->strides[n - 1], "out: its rows and columns must not alias (strides ",
            out->strides[n - 2], ", ", out->strides[n - 1], ")");
    require_no_overlap(*out, "out", *a, "a");
    require_no_overlap(*out, "out", *b, "b");

    g.dtype = a->dtype;
    g.b_dtype = b->dtype;
    g.out_dtype = out->dtype;
    g.a = matrix_of(*a, batched, trans_a != 0);
    g.b = matrix_of(*b, batched, trans_b != 0);
    g.out = matrix_of(*out, batched, false);
    g.alpha = alpha;
    g.beta = beta;
    if (g.batch == 0 || g.m == 0 || g.n == 0) return;
    if (a->device == FI_DEVICE_CPU) return gemm_cpu(g);
#ifdef FI_WITH_CUDA
    set_device(a->device);
    gemm_cuda(g, a->device, stream);
#else
    (void)stream;
#endif
  });
}

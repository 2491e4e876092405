// The part of cuBLASLt's C API the CUDA GEMM backend uses, declared here (from NVIDIA's cuBLAS
// documentation) so that the library builds without cuBLAS headers and loads cuBLASLt at run time
// with dlopen (gemm_cuda.cpp). Handles are opaque pointers; the enum values and the heuristic
// result's layout are checked against cublasLt.h wherever it is found (test/gemm.test.ts, the
// "cuBLASLt declarations" case, on the GPU machine).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>
#include <library_types.h>  // cudaDataType_t

namespace fi::cublaslt {

using Status = int32_t;  // cublasStatus_t
constexpr Status kSuccess = 0;
constexpr Status kNotSupported = 15;

using Handle = void*;           // cublasLtHandle_t
using MatmulDesc = void*;       // cublasLtMatmulDesc_t
using MatrixLayout = void*;     // cublasLtMatrixLayout_t
using MatmulPreference = void*; // cublasLtMatmulPreference_t

// cublasOperation_t
constexpr int32_t kOpN = 0, kOpT = 1;
// cublasComputeType_t
constexpr int32_t kCompute32F = 68;
// cublasLtMatmulDescAttributes_t
constexpr int32_t kDescTransA = 3, kDescTransB = 4;
// cublasLtMatrixLayoutAttribute_t
constexpr int32_t kLayoutBatchCount = 5, kLayoutStridedBatchOffset = 6;
// cublasLtMatmulPreferenceAttributes_t
constexpr int32_t kPrefMaxWorkspaceBytes = 1;

struct MatmulAlgo {  // cublasLtMatmulAlgo_t
  uint64_t data[8];
};
struct HeuristicResult {  // cublasLtMatmulHeuristicResult_t
  MatmulAlgo algo;
  size_t workspace_size;
  Status state;
  float waves_count;
  int reserved[4];
};

// The entry points, as function pointer types.
using CreateFn = Status (*)(Handle*);
using MatmulDescCreateFn = Status (*)(MatmulDesc*, int32_t compute_type, cudaDataType_t scale_type);
using MatmulDescDestroyFn = Status (*)(MatmulDesc);
using MatmulDescSetAttributeFn = Status (*)(MatmulDesc, int32_t attr, const void* buf, size_t size);
using MatrixLayoutCreateFn = Status (*)(MatrixLayout*, cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld);
using MatrixLayoutDestroyFn = Status (*)(MatrixLayout);
using MatrixLayoutSetAttributeFn = Status (*)(MatrixLayout, int32_t attr, const void* buf, size_t size);
using MatmulPreferenceCreateFn = Status (*)(MatmulPreference*);
using MatmulPreferenceDestroyFn = Status (*)(MatmulPreference);
using MatmulPreferenceSetAttributeFn = Status (*)(MatmulPreference, int32_t attr, const void* buf, size_t size);
using MatmulAlgoGetHeuristicFn = Status (*)(Handle, MatmulDesc, MatrixLayout a, MatrixLayout b, MatrixLayout c, MatrixLayout d,
                                            MatmulPreference, int requested, HeuristicResult* results, int* returned);
using MatmulFn = Status (*)(Handle, MatmulDesc, const void* alpha, const void* a, MatrixLayout a_desc, const void* b,
                            MatrixLayout b_desc, const void* beta, const void* c, MatrixLayout c_desc, void* d, MatrixLayout d_desc,
                            const MatmulAlgo* algo, void* workspace, size_t workspace_bytes, cudaStream_t stream);
using GetVersionFn = size_t (*)();

}  // namespace fi::cublaslt

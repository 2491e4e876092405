// Backend launchers of the tensor family (copy, gather_rows, fill, random). The extern "C"
// entries in copy.cpp / gather_rows.cpp / fill.cpp / random.cpp validate, then call the CPU or
// CUDA launcher.
#pragma once
#include "../common/tensor_desc.h"

namespace fi {

void copy_cpu(const fi_tensor_desc& dst, const fi_tensor_desc& src);
void gather_rows_cpu(const fi_tensor_desc& dst, const fi_tensor_desc& src, const int32_t* indices, int64_t n);
void fill_bits_cpu(const fi_tensor_desc& dst, uint64_t bits);
void random_cpu(const fi_tensor_desc& dst, int32_t distribution, uint64_t seed, uint64_t offset,
                double a, double b);

#ifdef FI_WITH_CUDA
void copy_cuda(const fi_tensor_desc& dst, const fi_tensor_desc& src, void* stream);
void gather_rows_cuda(const fi_tensor_desc& dst, const fi_tensor_desc& src, const int32_t* indices, int64_t n, void* stream);
void fill_bits_cuda(const fi_tensor_desc& dst, uint64_t bits, void* stream);
void random_cuda(const fi_tensor_desc& dst, int32_t distribution, uint64_t seed, uint64_t offset,
                 double a, double b, void* stream);
#endif

}  // namespace fi

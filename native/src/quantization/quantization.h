// Backend launchers of the quantization family (bit packing as numpy.packbits). The extern "C"
// entries in quantization.cpp validate everything; launchers assume valid, non-empty input.
#pragma once
#include "../common/tensor_desc.h"

namespace fi {

// x: [n] bool/uint8 (nonzero = 1), y: [ceil(n / 8)] uint8. little: bit k of a byte holds element
// 8i + k; big: bit 7 - k does. The last byte is zero-padded.
void packbits_cpu(const fi_tensor_desc& x, const fi_tensor_desc& y, bool little);
// indptr, indptr_new: [segments + 1] int32; y: [indptr_new[segments]] uint8. Each segment
// [indptr[s], indptr[s+1]) of x is packed into y[indptr_new[s], indptr_new[s+1]).
void segment_packbits_cpu(const fi_tensor_desc& x, const fi_tensor_desc& indptr, const fi_tensor_desc& indptr_new,
                          const fi_tensor_desc& y, bool little);

#ifdef FI_WITH_CUDA
void packbits_cuda(const fi_tensor_desc& x, const fi_tensor_desc& y, bool little, void* stream);
void segment_packbits_cuda(const fi_tensor_desc& x, const fi_tensor_desc& indptr, const fi_tensor_desc& indptr_new,
                           const fi_tensor_desc& y, bool little, void* stream);
#endif

}  // namespace fi

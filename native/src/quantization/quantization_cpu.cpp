// CPU reference of the quantization family: bit packing, one output byte at a time.
#include "quantization.h"

namespace fi {
namespace {

// Packs x[start, end) (at most 8 elements, element stride xs) into one byte.
uint8_t pack_byte(const uint8_t* x, int64_t xs, int64_t start, int64_t end, bool little) {
  uint8_t b = 0;
  for (int64_t i = start; i < end; ++i) {
    if (x[i * xs] != 0) b |= uint8_t(1u << (little ? (i - start) : 7 - (i - start)));
  }
  return b;
}

}  // namespace

void packbits_cpu(const fi_tensor_desc& x, const fi_tensor_desc& y, bool little) {
  const int64_t n = x.shape[0], bytes = y.shape[0];
  const uint8_t* xp = static_cast<const uint8_t*>(x.data);
  uint8_t* yp = static_cast<uint8_t*>(y.data);
  for (int64_t i = 0; i < bytes; ++i) {
    const int64_t end = 8 * i + 8 < n ? 8 * i + 8 : n;
    yp[i * y.strides[0]] = pack_byte(xp, x.strides[0], 8 * i, end, little);
  }
}

void segment_packbits_cpu(const fi_tensor_desc& x, const fi_tensor_desc& indptr, const fi_tensor_desc& indptr_new,
                          const fi_tensor_desc& y, bool little) {
  const int64_t segments = indptr.shape[0] - 1;
  const int32_t* ip = static_cast<const int32_t*>(indptr.data);
  int32_t* ipn = static_cast<int32_t*>(indptr_new.data);
  const uint8_t* xp = static_cast<const uint8_t*>(x.data);
  uint8_t* yp = static_cast<uint8_t*>(y.data);
  const int64_t is = indptr.strides[0], ns = indptr_new.strides[0];
  int64_t o = 0;
  ipn[0] = 0;
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t start = ip[s * is], end = ip[(s + 1) * is];
    for (int64_t b = start; b < end; b += 8) {
      yp[o++ * y.strides[0]] = pack_byte(xp, x.strides[0], b, b + 8 < end ? b + 8 : end, little);
    }
    ipn[(s + 1) * ns] = int32_t(o);
  }
}

}  // namespace fi

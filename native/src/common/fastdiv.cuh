// Division by a divisor fixed for a whole launch (a page size), as a multiply-high, an add and a
// shift. A 32-bit integer division by a run-time value is a sequence of about twenty instructions
// on the GPU, and the decode loaders divide every token index they copy (page = token / page size,
// slot = token % page size). The host computes the constants once per launch.
//
// Round-up method (Granlund & Montgomery, "Division by invariant integers using multiplication"):
// with l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1, n / d = (umulhi(n, m) + n) >> l.
// The sum is kept in 32 bits, so the quotient is exact for n < 2^31 (token indices are below
// 2^31: plans reject longer caches); d = 1 and powers of two reduce to a plain shift (m = 1).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fi {

struct FastDiv {
  uint32_t divisor, multiplier, shift;

  static FastDiv of(uint32_t d) {
    uint32_t l = 0;
    while ((uint64_t(1) << l) < d) ++l;
    const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << l) - d)) / d + 1;
    return FastDiv{d, uint32_t(m), l};
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(n, multiplier);
#else
    const uint32_t hi = uint32_t((uint64_t(n) * multiplier) >> 32);
#endif
    return (hi + n) >> shift;
  }
  // n / divisor and n % divisor.
  __host__ __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * divisor;
  }
};

}  // namespace fi

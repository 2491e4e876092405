// Counter-based random numbers shared by the CPU and CUDA backends.
// Philox4x32-10 (Salmon et al., SC'11) gives four 32-bit words per (key, counter). The
// normal transform uses only +, -, *, / and sqrt (correctly rounded on both backends) with
// floating-point contraction disabled for the files that include it, so a seed gives
// bit-identical tensors on CPU and CUDA.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace fi {

struct Philox4 {
  uint32_t v[4];
};

FI_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

// counter = (c0, c1, c2, c3), key = (k0, k1)
FI_HD Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 random bits (exact in float32).
FI_HD double uniform_from_bits(uint32_t x) { return double(x >> 8) * (1.0 / 16777216.0); }
// Uniform in (0, 1]: safe for log.
FI_HD double uniform_open0_from_bits(uint32_t x) { return double((x >> 8) + 1) * (1.0 / 16777216.0); }

// Natural log for x in (0, 1], double precision, from + - * / only:
// x = m * 2^k with m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s), s = (m - 1) / (m + 1).
FI_HD double portable_log(double x) {
  uint64_t b = double_bits(x);
  int k = int((b >> 52) & 0x7ff) - 1023;
  double m = bits_double((b & ((uint64_t(1) << 52) - 1)) | (uint64_t(1023) << 52));  // [1, 2)
  if (m > 1.4142135623730951) {
    m *= 0.5;
    k += 1;
  }
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  // atanh series: s + s^3/3 + ... ; |s| < 0.1716 so 2*s^(2n+1)/(2n+1) < 1e-17 by n = 11
  double t = 1.0 / 23.0;
  t = t * s2 + 1.0 / 21.0; t = t * s2 + 1.0 / 19.0; t = t * s2 + 1.0 / 17.0;
  t = t * s2 + 1.0 / 15.0; t = t * s2 + 1.0 / 13.0; t = t * s2 + 1.0 / 11.0;
  t = t * s2 + 1.0 / 9.0;  t = t * s2 + 1.0 / 7.0;  t = t * s2 + 1.0 / 5.0;
  t = t * s2 + 1.0 / 3.0;  t = t * s2 + 1.0;
  return double(k) * 0.69314718055994531 + 2.0 * s * t;
}

// sin and cos of 2*pi*u for u in [0, 1), by octant reduction and Taylor series on [0, pi/4].
FI_HD void portable_sincos_2pi(double u, double* sin_out, double* cos_out) {
  const double q = u * 8.0;  // octant position, exact
  const int octant = int(q);
  double r = q - double(octant);  // [0, 1) within the octant
  const bool mirror = octant & 1;
  if (mirror) r = 1.0 - r;
  const double x = r * 0.78539816339744831, x2 = x * x;  // angle in [0, pi/4]
  // sin(x)/x and cos(x) by Horner's rule in x^2, through the x^15 and x^16 terms.
  double sn = 1.0 / 1307674368000.0;  // 1/15!
  sn = sn * x2 - 1.0 / 6227020800.0; sn = sn * x2 + 1.0 / 39916800.0; sn = sn * x2 - 1.0 / 362880.0;
  sn = sn * x2 + 1.0 / 5040.0; sn = sn * x2 - 1.0 / 120.0; sn = sn * x2 + 1.0 / 6.0;
  sn = 1.0 - sn * x2;
  const double s = sn * x;
  double cs = 1.0 / 20922789888000.0;  // 1/16!
  cs = cs * x2 - 1.0 / 87178291200.0; cs = cs * x2 + 1.0 / 479001600.0; cs = cs * x2 - 1.0 / 3628800.0;
  cs = cs * x2 + 1.0 / 40320.0; cs = cs * x2 - 1.0 / 720.0; cs = cs * x2 + 1.0 / 24.0; cs = cs * x2 - 0.5;
  const double c = 1.0 + cs * x2;
  // In octant o the reduced angle a satisfies: o=0: (s,c); 1: (c,s); 2: (c,-s); 3: (s,-c); ...
  double sv, cv;
  switch (octant & 7) {
    case 0: sv = s; cv = c; break;
    case 1: sv = c; cv = s; break;
    case 2: sv = c; cv = -s; break;
    case 3: sv = s; cv = -c; break;
    case 4: sv = -s; cv = -c; break;
    case 5: sv = -c; cv = -s; break;
    case 6: sv = -c; cv = s; break;
    default: sv = -s; cv = c; break;
  }
  *sin_out = sv;
  *cos_out = cv;
}

// Word k of a Philox output, selected without a run-time array index (which would put the
// array in local memory on the GPU).
FI_HD uint32_t philox_word(const Philox4& r, int k) {
  return k == 0 ? r.v[0] : k == 1 ? r.v[1] : k == 2 ? r.v[2] : r.v[3];
}

// Value of element `i` of a random fill (see fi_tensor_random).
FI_HD double random_value(int32_t distribution, uint64_t seed, uint64_t offset, uint64_t i,
                          double a, double b) {
  const Philox4 r = philox4x32_10(offset + i / 4, seed);
  const int lane = int(i % 4);
  if (distribution == FI_RANDOM_UNIFORM) return a + (b - a) * uniform_from_bits(philox_word(r, lane));
  // Box-Muller on the pair (v0, v1) for lanes 0 and 1, (v2, v3) for lanes 2 and 3.
  const bool high = lane >= 2;
  const double radius = sqrt(-2.0 * portable_log(uniform_open0_from_bits(high ? r.v[2] : r.v[0])));
  double sn, cs;
  portable_sincos_2pi(uniform_from_bits(high ? r.v[3] : r.v[1]), &sn, &cs);
  return a + b * radius * ((lane & 1) ? sn : cs);
}

}  // namespace fi

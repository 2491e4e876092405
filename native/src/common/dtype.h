// Dtype sizes, names and bit-exact conversions shared by the CPU and CUDA backends.
// All conversions go through double (exact for every dtype here except int64 beyond 2^53,
// which takes the integer path) and are written with integer bit operations only, so the two
// backends round identically.
#pragma once
#include <cstdint>
#include <cstring>
#include <climits>

#include "flashinfer.h"

#if defined(__CUDACC__)
#define FI_HD __host__ __device__ __forceinline__
#else
#define FI_HD inline
#endif

namespace fi {

FI_HD int itemsize(int32_t dtype) {
  switch (dtype) {
    case FI_FLOAT32: case FI_INT32: return 4;
    case FI_FLOAT16: case FI_BFLOAT16: return 2;
    case FI_FLOAT8_E4M3FN: case FI_FLOAT8_E5M2: case FI_UINT8: case FI_BOOL: return 1;
    case FI_INT64: case FI_FLOAT64: return 8;
    default: return 0;
  }
}

inline const char* dtype_name(int32_t dtype) {
  static const char* names[] = {"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                                "int32",   "int64",   "uint8",    "bool",          "float64"};
  return dtype >= 0 && dtype < FI_DTYPE_COUNT ? names[dtype] : "unknown";
}

FI_HD bool is_integral(int32_t dtype) {
  return dtype == FI_INT32 || dtype == FI_INT64 || dtype == FI_UINT8 || dtype == FI_BOOL;
}

FI_HD uint64_t double_bits(double x) {
  uint64_t b;
  memcpy(&b, &x, 8);
  return b;
}
FI_HD double bits_double(uint64_t b) {
  double x;
  memcpy(&x, &b, 8);
  return x;
}

// Round a double to a small binary float with EXP exponent bits and MAN mantissa bits
// (IEEE layout, bias 2^(EXP-1)-1), round-to-nearest-even, subnormals kept.
// IEEE_SPECIALS: the top exponent is Inf/NaN (float16, bfloat16, e5m2); overflow gives Inf.
// Otherwise (e4m3fn) only the all-ones pattern is NaN and overflow gives NaN, as PyTorch does.
template <int EXP, int MAN, bool IEEE_SPECIALS>
FI_HD uint32_t round_to_minifloat(double x) {
  constexpr int bias = (1 << (EXP - 1)) - 1;
  constexpr uint32_t sign_bit = 1u << (EXP + MAN);
  constexpr uint32_t nan_bits = IEEE_SPECIALS ? (((1u << EXP) - 1) << MAN) | (1u << (MAN - 1))
                                              : (1u << (EXP + MAN)) - 1;
  constexpr uint32_t inf_bits = ((1u << EXP) - 1) << MAN;
  constexpr uint32_t max_finite = IEEE_SPECIALS ? inf_bits - 1 : nan_bits - 1;
  const uint64_t b = double_bits(x);
  const uint32_t sign = (b >> 63) ? sign_bit : 0u;
  const int dexp = int((b >> 52) & 0x7ff);
  const uint64_t dman = b & ((uint64_t(1) << 52) - 1);
  if (dexp == 0x7ff) {  // Inf or NaN; NaN keeps its sign, e4m3fn has no Inf
    if (dman != 0) return sign | nan_bits;
    return IEEE_SPECIALS ? (sign | inf_bits) : (sign | nan_bits);
  }
  if (dexp == 0) return sign;  // zero or a double subnormal: far below every target's range
  const int e = dexp - 1023;
  if (e > bias + 1) return IEEE_SPECIALS ? (sign | inf_bits) : (sign | nan_bits);
  const uint64_t sig = dman | (uint64_t(1) << 52);  // 53 significant bits
  const int min_exp = 1 - bias;
  int shift = 52 - MAN + (e < min_exp ? (min_exp - e) : 0);
  if (shift > 60) return sign;  // below half the smallest subnormal
  uint64_t q = sig >> shift;
  const uint64_t rem = sig & ((uint64_t(1) << shift) - 1);
  const uint64_t half = uint64_t(1) << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) q += 1;
  // Normal: the implicit bit in q adds one to (exponent field - 1); a mantissa carry moves up.
  const uint64_t mag = e < min_exp ? q : (uint64_t(e + bias - 1) << MAN) + q;
  if (mag > max_finite) return IEEE_SPECIALS ? (sign | inf_bits) : (sign | nan_bits);
  return sign | uint32_t(mag);
}

template <int EXP, int MAN, bool IEEE_SPECIALS>
FI_HD double minifloat_to_double(uint32_t v) {
  constexpr int bias = (1 << (EXP - 1)) - 1;
  const bool neg = (v >> (EXP + MAN)) & 1;
  const int ef = int((v >> MAN) & ((1u << EXP) - 1));
  const uint32_t mf = v & ((1u << MAN) - 1);
  double mag;
  if (IEEE_SPECIALS && ef == (1 << EXP) - 1) {
    mag = mf ? bits_double(0x7ff8000000000000ull) : bits_double(0x7ff0000000000000ull);
  } else if (!IEEE_SPECIALS && ef == (1 << EXP) - 1 && mf == (1u << MAN) - 1) {
    mag = bits_double(0x7ff8000000000000ull);
  } else if (ef == 0) {
    // subnormal: mf * 2^(1 - bias - MAN); exact in double
    mag = double(mf) * bits_double(uint64_t(1023 + 1 - bias - MAN) << 52);
  } else {
    mag = bits_double((uint64_t(ef - bias + 1023) << 52) | (uint64_t(mf) << (52 - MAN)));
  }
  // Set the sign with bit operations: negating a NaN constant is not reliable on every compiler.
  return bits_double(double_bits(mag) | (neg ? uint64_t(1) << 63 : 0));
}

// Load element `i` of a contiguous buffer of `dtype` as double.
FI_HD double load_as_double(const void* p, int32_t dtype, int64_t i) {
  switch (dtype) {
    case FI_FLOAT32: {
      const float f = static_cast<const float*>(p)[i];
      if (f != f) {  // NaN: keep the sign explicitly (conversions may canonicalize it)
        uint32_t u;
        memcpy(&u, &f, 4);
        return bits_double((uint64_t(u >> 31) << 63) | 0x7ff8000000000000ull);
      }
      return double(f);
    }
    case FI_FLOAT16: return minifloat_to_double<5, 10, true>(static_cast<const uint16_t*>(p)[i]);
    case FI_BFLOAT16: return minifloat_to_double<8, 7, true>(static_cast<const uint16_t*>(p)[i]);
    case FI_FLOAT8_E4M3FN: return minifloat_to_double<4, 3, false>(static_cast<const uint8_t*>(p)[i]);
    case FI_FLOAT8_E5M2: return minifloat_to_double<5, 2, true>(static_cast<const uint8_t*>(p)[i]);
    case FI_INT32: return double(static_cast<const int32_t*>(p)[i]);
    case FI_INT64: return double(static_cast<const int64_t*>(p)[i]);
    case FI_UINT8: return double(static_cast<const uint8_t*>(p)[i]);
    case FI_BOOL: return static_cast<const uint8_t*>(p)[i] ? 1.0 : 0.0;
    case FI_FLOAT64: return static_cast<const double*>(p)[i];
    default: return 0.0;
  }
}

FI_HD int64_t load_as_int64(const void* p, int32_t dtype, int64_t i) {
  switch (dtype) {
    case FI_INT32: return static_cast<const int32_t*>(p)[i];
    case FI_INT64: return static_cast<const int64_t*>(p)[i];
    case FI_UINT8: return static_cast<const uint8_t*>(p)[i];
    case FI_BOOL: return static_cast<const uint8_t*>(p)[i] ? 1 : 0;
    default: return 0;
  }
}

// Float -> integer: truncate toward zero, saturate to [lo, hi], NaN -> 0.
// hi + 1 is a power of two (2^31, 2^63, 256), exact in double.
FI_HD int64_t saturating_trunc(double x, int64_t lo, double hi_plus_one, int64_t hi) {
  if (!(x == x)) return 0;
  if (x >= hi_plus_one) return hi;
  if (x <= double(lo)) return lo;
  return int64_t(x);
}

// int64 -> double rounded to odd: with the sticky bit kept, a second rounding to any narrower
// float format gives the correctly rounded result (no double-rounding error above 2^53).
FI_HD double int64_to_double_round_odd(int64_t v) {
  const bool neg = v < 0;
  uint64_t m = neg ? uint64_t(0) - uint64_t(v) : uint64_t(v);
  if (m < (uint64_t(1) << 53)) return neg ? -double(m) : double(m);
  int shift = 0;
  while ((m >> shift) >= (uint64_t(1) << 53)) ++shift;
  uint64_t q = m >> shift;
  if (m & ((uint64_t(1) << shift) - 1)) q |= 1;
  const double d = double(q) * bits_double(uint64_t(1023 + shift) << 52);  // exact
  return neg ? -d : d;
}

// Store `x` (already converted to the destination's bit pattern) into element `i`.
FI_HD void store_bits(void* p, int32_t dtype, int64_t i, uint64_t bits) {
  switch (itemsize(dtype)) {
    case 1: static_cast<uint8_t*>(p)[i] = uint8_t(bits); break;
    case 2: static_cast<uint16_t*>(p)[i] = uint16_t(bits); break;
    case 4: static_cast<uint32_t*>(p)[i] = uint32_t(bits); break;
    case 8: static_cast<uint64_t*>(p)[i] = bits; break;
  }
}

// Bit pattern of double `x` in `dtype` (the value a store of x would write).
FI_HD uint64_t double_to_bits(double x, int32_t dtype) {
  switch (dtype) {
    case FI_FLOAT32: {
      if (x != x) return uint32_t(double_bits(x) >> 63) << 31 | 0x7fc00000u;  // NaN keeps its sign
      const float f = float(x);
      uint32_t u;
      memcpy(&u, &f, 4);
      return u;
    }
    case FI_FLOAT16: return round_to_minifloat<5, 10, true>(x);
    case FI_BFLOAT16: return round_to_minifloat<8, 7, true>(x);
    case FI_FLOAT8_E4M3FN: return round_to_minifloat<4, 3, false>(x);
    case FI_FLOAT8_E5M2: return round_to_minifloat<5, 2, true>(x);
    case FI_INT32: return uint32_t(int32_t(saturating_trunc(x, INT32_MIN, 2147483648.0, INT32_MAX)));
    case FI_INT64: return uint64_t(saturating_trunc(x, INT64_MIN, 9223372036854775808.0, INT64_MAX));
    case FI_UINT8: return uint8_t(saturating_trunc(x, 0, 256.0, 255));
    case FI_BOOL: return x != 0.0 ? 1 : 0;  // NaN is true, as in PyTorch
    case FI_FLOAT64:
      if (x != x) return (double_bits(x) & (uint64_t(1) << 63)) | 0x7ff8000000000000ull;
      return double_bits(x);
    default: return 0;
  }
}

// Bit pattern of integer `v` in an integral `dtype` (wraps like a C cast; bool is v != 0).
FI_HD uint64_t int64_to_bits(int64_t v, int32_t dtype) {
  switch (dtype) {
    case FI_INT32: return uint32_t(int32_t(v));
    case FI_INT64: return uint64_t(v);
    case FI_UINT8: return uint8_t(v);
    case FI_BOOL: return v != 0 ? 1 : 0;
    default: return 0;
  }
}

// One element of a cast copy: src element si of src_dtype to dst element di of dst_dtype.
FI_HD void cast_element(void* dst, int32_t dst_dtype, int64_t di, const void* src,
                        int32_t src_dtype, int64_t si) {
  uint64_t bits;
  if (is_integral(src_dtype) && is_integral(dst_dtype)) {
    bits = int64_to_bits(load_as_int64(src, src_dtype, si), dst_dtype);
  } else if (src_dtype == FI_INT64 && dst_dtype != FI_FLOAT64) {
    bits = double_to_bits(int64_to_double_round_odd(load_as_int64(src, src_dtype, si)), dst_dtype);
  } else {
    bits = double_to_bits(load_as_double(src, src_dtype, si), dst_dtype);
  }
  store_bits(dst, dst_dtype, di, bits);
}

}  // namespace fi

// Float64 reference for dtype conversions and for the seeded random fills, written
// independently of native/src/common/dtype.h and philox.h: floats are rounded by scaling with
// powers of two (Math.log2 / Math.pow) and rounding the scaled value half-to-even, never by
// picking apart the bits of a double; Philox uses 16-bit limbs for its 32x32->64 products and
// Box-Muller uses Math.log / Math.cos / Math.sin.
import type { DType } from "../../lib/index.ts";

// ------------------------------------------------------------------ small float formats

export type FloatFormat = "float32" | "float16" | "bfloat16" | "float8_e4m3fn" | "float8_e5m2";

export interface FormatSpec {
  readonly name: FloatFormat;
  /** Exponent and mantissa (fraction) field widths. */
  readonly exp: number;
  readonly man: number;
  /** true: the top exponent holds Inf and NaN (IEEE). false (e4m3fn): only S.1111.111 is NaN, no Inf. */
  readonly ieee: boolean;
  readonly bias: number;
  /** Smallest normal exponent (also the exponent of the subnormals' scale). */
  readonly emin: number;
  /** Largest finite value. */
  readonly maxFinite: number;
  /** Smallest positive subnormal. */
  readonly minSubnormal: number;
  /** Smallest positive normal. */
  readonly minNormal: number;
  /** Bits of a positive quiet NaN, of +Inf (undefined for e4m3fn), of the sign. */
  readonly nanBits: number;
  readonly infBits: number | undefined;
  readonly signBit: number;
  /** Number of bit patterns (2^(1+exp+man)). */
  readonly patterns: number;
}

function spec(name: FloatFormat, exp: number, man: number, ieee: boolean): FormatSpec {
  const bias = 2 ** (exp - 1) - 1;
  const emin = 1 - bias;
  // IEEE: the top exponent field is special, so the largest finite exponent is bias.
  // e4m3fn: the top exponent field is usable except the all-ones mantissa (NaN).
  const emax = ieee ? bias : 2 ** exp - 1 - bias;
  const topFraction = ieee ? 2 - 2 ** -man : 2 - 2 * 2 ** -man;
  const signBit = 2 ** (exp + man);
  return {
    name, exp, man, ieee, bias, emin,
    maxFinite: topFraction * 2 ** emax,
    minSubnormal: 2 ** (emin - man),
    minNormal: 2 ** emin,
    nanBits: ieee ? (2 ** exp - 1) * 2 ** man + 2 ** (man - 1) : signBit - 1,
    infBits: ieee ? (2 ** exp - 1) * 2 ** man : undefined,
    signBit,
    patterns: 2 * signBit,
  };
}

export const FORMATS: Record<FloatFormat, FormatSpec> = {
  float32: spec("float32", 8, 23, true),
  float16: spec("float16", 5, 10, true),
  bfloat16: spec("bfloat16", 8, 7, true),
  float8_e4m3fn: spec("float8_e4m3fn", 4, 3, false),
  float8_e5m2: spec("float8_e5m2", 5, 2, true),
};

export const isFloatFormat = (d: DType): d is FloatFormat => d in FORMATS;

/** Round-half-to-even of a non-negative double (exact: floor and the remainder are exact). */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const r = v - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** floor(log2(a)) for finite a > 0, corrected so that 2^e <= a < 2^(e+1) holds exactly. */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (e > -1074 && Math.pow(2, e) > a) e--;
  while (e < 1023 && Math.pow(2, e + 1) <= a) e++;
  return e;
}

/**
 * Rounds `x` to the format (nearest, ties to even, subnormals kept) and returns
 * { value, bits }. NaN input gives the positive quiet NaN pattern. Overflow gives Inf for IEEE
 * formats and NaN (with the sign of x) for e4m3fn; Inf gives NaN for e4m3fn.
 */
export function roundToFormat(x: number, fmt: FormatSpec | FloatFormat): { value: number; bits: number } {
  const f = typeof fmt === "string" ? FORMATS[fmt] : fmt;
  if (Number.isNaN(x)) return { value: NaN, bits: f.nanBits };
  const negative = x < 0 || Object.is(x, -0);
  const sign = negative ? f.signBit : 0;
  const a = Math.abs(x);
  const overflow = () =>
    f.ieee ? { value: negative ? -Infinity : Infinity, bits: sign + f.infBits! } : { value: NaN, bits: sign + f.nanBits };
  if (a === Infinity) return f.ieee ? overflow() : { value: NaN, bits: f.nanBits };
  if (a === 0) return { value: negative ? -0 : 0, bits: sign };
  // Quantum of the result: 2^(e - man) for normals, the subnormal step below 2^emin.
  const e = Math.max(exponentOf(a), f.emin);
  const scaled = a * Math.pow(2, f.man - e); // exact: a power-of-two scaling, no over/underflow
  let q = roundHalfEven(scaled); // integer in [0, 2^(man+1)]
  let ex = e;
  if (q === 2 ** (f.man + 1)) { // the rounding carried into the next binade
    q = 2 ** f.man;
    ex += 1;
  }
  const mag = q * Math.pow(2, ex - f.man);
  if (mag > f.maxFinite) return overflow();
  const value = negative ? -mag : mag;
  if (q < 2 ** f.man) return { value, bits: sign + q }; // subnormal (or zero)
  return { value, bits: sign + (ex + f.bias) * 2 ** f.man + (q - 2 ** f.man) };
}

/** The value of a bit pattern of the format (NaN for every NaN pattern). */
export function decodeFormat(bits: number, fmt: FormatSpec | FloatFormat): number {
  const f = typeof fmt === "string" ? FORMATS[fmt] : fmt;
  const negative = bits >= f.signBit;
  const rest = negative ? bits - f.signBit : bits;
  const ef = Math.floor(rest / 2 ** f.man);
  const mf = rest % 2 ** f.man;
  const topExp = 2 ** f.exp - 1;
  let mag: number;
  if (f.ieee && ef === topExp) mag = mf === 0 ? Infinity : NaN;
  else if (!f.ieee && ef === topExp && mf === 2 ** f.man - 1) mag = NaN;
  else if (ef === 0) mag = mf * Math.pow(2, f.emin - f.man);
  else mag = (1 + mf / 2 ** f.man) * Math.pow(2, ef - f.bias);
  return negative ? -mag : mag;
}

export const isNaNPattern = (bits: number, fmt: FormatSpec | FloatFormat): boolean => Number.isNaN(decodeFormat(bits, fmt));

/** All finite non-negative values of a format, ascending (with +0). */
export function finiteNonNegativeValues(fmt: FormatSpec | FloatFormat): number[] {
  const f = typeof fmt === "string" ? FORMATS[fmt] : fmt;
  const out: number[] = [];
  for (let b = 0; b < f.signBit; ++b) {
    const v = decodeFormat(b, f);
    if (Number.isFinite(v)) out.push(v);
  }
  return out.sort((p, q) => p - q);
}

// ------------------------------------------------------------------ integers and bool

export const INT64_MIN = -(2n ** 63n);
export const INT64_MAX = 2n ** 63n - 1n;

function truncSaturate(x: number, lo: number, hi: number): number {
  if (Number.isNaN(x)) return 0;
  const t = Math.trunc(x);
  return t < lo ? lo : t > hi ? hi : t + 0; // + 0 turns -0 into 0
}

export const floatToInt32 = (x: number): number => truncSaturate(x, -(2 ** 31), 2 ** 31 - 1);
export const floatToUint8 = (x: number): number => truncSaturate(x, 0, 255);
export const floatToBool = (x: number): number => (x !== 0 ? 1 : 0); // NaN !== 0: true
export function floatToInt64(x: number): bigint {
  if (Number.isNaN(x)) return 0n;
  if (x >= 2 ** 63) return INT64_MAX;
  if (x <= -(2 ** 63)) return INT64_MIN;
  return BigInt(Math.trunc(x));
}

/** Integer -> integer dtype, wrapping like a C cast (bool: v != 0). */
export function intToInt(v: bigint, dtype: "int32" | "int64" | "uint8" | "bool"): bigint {
  switch (dtype) {
    case "int32": return BigInt.asIntN(32, v);
    case "int64": return BigInt.asIntN(64, v);
    case "uint8": return BigInt.asUintN(8, v);
    case "bool": return v !== 0n ? 1n : 0n;
  }
}

/**
 * The element a tensor of `dtype` holds after storing the double `x` (any float source), in
 * canonical form: the bit pattern for every float format but float64 (float32, float16,
 * bfloat16, float8_*), the number for float64, a bigint for int64, else the number (bool 0/1).
 */
export function convertFromFloat(x: number, dtype: DType): number | bigint {
  switch (dtype) {
    case "float64": return x;
    case "float32": case "float16": case "bfloat16": case "float8_e4m3fn": case "float8_e5m2":
      return roundToFormat(x, dtype).bits;
    case "int32": return floatToInt32(x);
    case "int64": return floatToInt64(x);
    case "uint8": return floatToUint8(x);
    case "bool": return floatToBool(x);
  }
}

export const isIntegral = (d: DType): d is "int32" | "int64" | "uint8" | "bool" =>
  d === "int32" || d === "int64" || d === "uint8" || d === "bool";

/**
 * The canonical element of `dtype` for an integer source value `v` (int32, int64, uint8 or bool
 * source): integer destinations wrap, float destinations round the integer's value.
 */
export function convertFromInt(v: bigint, dtype: DType): number | bigint {
  if (isIntegral(dtype)) {
    const w = intToInt(v, dtype);
    return dtype === "int64" ? w : Number(w);
  }
  return convertFromFloat(Number(v), dtype);
}

/** The value (a double) that a canonical element of `dtype` stands for. */
export function canonicalValue(c: number | bigint, dtype: DType): number {
  if (isFloatFormat(dtype)) return decodeFormat(Number(c), dtype);
  return Number(c);
}

/** Canonical elements are the same: equal, or both NaN of a float dtype (any NaN pattern). */
export function sameCanonical(dtype: DType, a: number | bigint, b: number | bigint): boolean {
  if (dtype === "float64") return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
  if (isFloatFormat(dtype) && isNaNPattern(Number(a), dtype) && isNaNPattern(Number(b), dtype)) return true;
  return a === b;
}

// ------------------------------------------------------------------ Philox4x32-10

export const PHILOX_M0 = 0xd2511f53;
export const PHILOX_M1 = 0xcd9e8d57;
export const PHILOX_W0 = 0x9e3779b9;
export const PHILOX_W1 = 0xbb67ae85;

/** The full 64-bit product of two uint32s as [hi, lo], from 16-bit limbs (all exact in doubles). */
export function mulHiLo(a: number, b: number): [number, number] {
  const al = a & 0xffff, ah = a >>> 16, bl = b & 0xffff, bh = b >>> 16;
  const ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh; // each < 2^32
  const mid = Math.floor(ll / 65536) + (lh % 65536) + (hl % 65536); // < 3 * 2^16
  const lo = ((mid % 65536) * 65536 + (ll % 65536)) >>> 0;
  const hi = (hh + Math.floor(lh / 65536) + Math.floor(hl / 65536) + Math.floor(mid / 65536)) >>> 0;
  return [hi, lo];
}

/** Philox4x32-10 of a full 128-bit counter (c0..c3) and 64-bit key (k0, k1), uint32 words. */
export function philoxBlock(ctr: readonly number[], key: readonly number[]): [number, number, number, number] {
  let [c0, c1, c2, c3] = ctr.map((w) => w >>> 0) as [number, number, number, number];
  let [k0, k1] = key.map((w) => w >>> 0) as [number, number];
  for (let round = 0; round < 10; ++round) {
    const [hi0, lo0] = mulHiLo(PHILOX_M0, c0);
    const [hi1, lo1] = mulHiLo(PHILOX_M1, c2);
    const n0 = (hi1 ^ c1 ^ k0) >>> 0, n1 = lo1, n2 = (hi0 ^ c3 ^ k1) >>> 0, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 = (k0 + PHILOX_W0) >>> 0;
    k1 = (k1 + PHILOX_W1) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** What the library uses: counter (c0 = low 32 bits, c1 = high, c2 = c3 = 0), key = seed. */
export function philox4x32_10(counter: bigint, seed: bigint): [number, number, number, number] {
  const lo = (v: bigint) => Number(v & 0xffffffffn), hi = (v: bigint) => Number((v >> 32n) & 0xffffffffn);
  return philoxBlock([lo(counter), hi(counter), 0, 0], [lo(seed), hi(seed)]);
}

const TWO_M24 = 2 ** -24;
/** Uniform in [0, 1) with 24 random bits. */
export const uniformFromBits = (x: number): number => (x >>> 8) * TWO_M24;
/** Uniform in (0, 1]. */
export const uniformOpen0FromBits = (x: number): number => ((x >>> 8) + 1) * TWO_M24;

/**
 * The double value of element `i` of fi.rand (`uniform`) or fi.randn (`normal`) with the given
 * seed and Philox counter offset (0 for an explicit seed).
 */
export function randomValue(kind: "uniform" | "normal", seed: bigint, offset: bigint, i: number): number {
  const r = philox4x32_10(offset + BigInt(Math.floor(i / 4)), seed);
  const lane = i % 4;
  if (kind === "uniform") return uniformFromBits(r[lane]!);
  const pair = lane & 2;
  const radius = Math.sqrt(-2 * Math.log(uniformOpen0FromBits(r[pair]!)));
  const angle = 2 * Math.PI * uniformFromBits(r[pair + 1]!);
  return radius * (lane & 1 ? Math.sin(angle) : Math.cos(angle));
}

/** randomValue for elements 0..n-1, sharing one Philox call per 4 elements. */
export function randomValues(kind: "uniform" | "normal", seed: bigint, offset: bigint, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let base = 0; base < n; base += 4) {
    const r = philox4x32_10(offset + BigInt(base / 4), seed);
    for (let lane = 0; lane < 4 && base + lane < n; ++lane) {
      if (kind === "uniform") {
        out[base + lane] = uniformFromBits(r[lane]!);
      } else {
        const pair = lane & 2;
        const radius = Math.sqrt(-2 * Math.log(uniformOpen0FromBits(r[pair]!)));
        const angle = 2 * Math.PI * uniformFromBits(r[pair + 1]!);
        out[base + lane] = radius * (lane & 1 ? Math.sin(angle) : Math.cos(angle));
      }
    }
  }
  return out;
}

/** An element as the tests compare it: float bits for float16/bfloat16/float32 (so NaN payloads
 * and -0 compare exactly), the value otherwise. */
export type Canon = number | bigint;

/** A typed array over raw bytes that reads a dtype's canonical elements. */
export function canonicalView(dtype: DType, bytes: Uint8Array): ArrayLike<Canon> {
  const { buffer, byteOffset, byteLength } = bytes;
  switch (dtype) {
    case "float64": return new Float64Array(buffer, byteOffset, byteLength / 8);
    case "float32": return new Uint32Array(buffer, byteOffset, byteLength / 4);
    case "int32": return new Int32Array(buffer, byteOffset, byteLength / 4);
    case "int64": return new BigInt64Array(buffer, byteOffset, byteLength / 8);
    case "float16": case "bfloat16": return new Uint16Array(buffer, byteOffset, byteLength / 2);
    default: return bytes; // float8_*, uint8, bool
  }
}

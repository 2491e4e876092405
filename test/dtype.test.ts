// Dtype conversions through the public API (fi.tensor, Tensor.to, toArray, toFloat32Array,
// fill_) against the independent float64 reference in reference/dtype.ts.
//
// Elements are compared in "canonical" form: the bit pattern for float32 / float16 / bfloat16 /
// float8, the number for float64 (Object.is, so -0 and NaN are checked), a bigint for int64 and
// the number for int32 / uint8 / bool. Any NaN pattern of a float dtype matches any other (the
// library does not promise a NaN payload or sign); NaN never matches a number.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import {
  type Canon,
  canonicalView,
  FORMATS,
  type FloatFormat,
  INT64_MAX,
  INT64_MIN,
  canonicalValue,
  convertFromFloat,
  convertFromInt,
  decodeFormat,
  finiteNonNegativeValues,
  isFloatFormat,
  isIntegral,
  isNaNPattern,
  roundToFormat,
  sameCanonical,
} from "./reference/dtype.ts";

type DType = fi.DType;

const gpu = fi.cudaAvailable();
const CPU = "cpu" as const;
const CUDA = "cuda:0";
const FLOAT_FORMATS: FloatFormat[] = ["float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"];
const SMALL_FORMATS: FloatFormat[] = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"];

// ------------------------------------------------------------------ helpers


/** The elements of a tensor (any device, any layout), row-major, in canonical form. */
function canonical(t: fi.Tensor): Canon[] {
  const host = t.to(CPU);
  const packed = host.contiguous();
  try {
    const v = packed.hostView();
    const bytes = new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice();
    return Array.from(canonicalView(t.dtype, bytes));
  } finally {
    packed.dispose();
    host.dispose();
  }
}

/** A cpu tensor holding exactly these canonical elements (raw bits written through hostView). */
function fromCanonical(dtype: DType, values: readonly Canon[]): fi.Tensor {
  const t = fi.empty([values.length], { dtype, device: CPU });
  const v = t.hostView();
  const target = canonicalView(dtype, new Uint8Array(v.buffer, v.byteOffset, v.byteLength)) as unknown as { [i: number]: Canon };
  for (let i = 0; i < values.length; ++i) target[i] = values[i]!;
  return t;
}

/** Element i of `got` vs `want` (canonical); lists the first mismatches with their inputs. */
function mismatches(dtype: DType, got: readonly Canon[], want: readonly Canon[], input: (i: number) => string): string[] {
  expect(got.length).toBe(want.length);
  const out: string[] = [];
  let count = 0;
  for (let i = 0; i < want.length; ++i) {
    if (sameCanonical(dtype, got[i]!, want[i]!)) continue;
    if (++count <= 12) out.push(`[${i}] ${input(i)} -> ${dtype}: got ${show(dtype, got[i]!)}, want ${show(dtype, want[i]!)}`);
  }
  if (count > 12) out.push(`... ${count - 12} more`);
  return out;
}

function show(dtype: DType, c: Canon): string {
  if (typeof c === "bigint") return `${c}n`;
  if (isFloatFormat(dtype)) return `0x${c.toString(16)} (${decodeFormat(c, dtype)})`;
  return Object.is(c, -0) ? "-0" : String(c);
}

const showNumber = (x: number) => (Object.is(x, -0) ? "-0" : String(x));

/** Casts `src` to `dtype` on its own device and returns the result's canonical elements. */
function castCanonical(src: fi.Tensor, dtype: DType): Canon[] {
  const out = src.to({ dtype });
  try {
    return canonical(out);
  } finally {
    out.dispose();
  }
}

/** Reference conversion of a source element (canonical, of `from`) to `to`. */
function refConvert(c: Canon, from: DType, to: DType): Canon {
  if (isIntegral(from)) return convertFromInt(from === "bool" ? (c !== 0 && c !== 0n ? 1n : 0n) : BigInt(c), to);
  return convertFromFloat(canonicalValue(c, from), to);
}

/** A tensor of n elements whose every byte is `byte` (poison: a missed write shows). */
function poisoned(dtype: DType, n: number, byte: number, device: string = CPU): fi.Tensor {
  const t = fi.empty([n], { dtype, device: CPU });
  const v = t.hostView();
  new Uint8Array(v.buffer, v.byteOffset, v.byteLength).fill(byte);
  if (device === CPU) return t;
  const moved = t.to(device);
  t.dispose();
  return moved;
}

/**
 * Casts a source tensor (given by canonical elements) to every dtype, with to() and with copy_()
 * into destinations poisoned with two different byte patterns, and checks each result.
 */
function checkAllCasts(from: DType, src: readonly Canon[], device: string = CPU): void {
  const cpuSrc = fromCanonical(from, src);
  const t = device === CPU ? cpuSrc : cpuSrc.to(device);
  try {
    for (const to of fi.DTYPES) {
      const want = src.map((c) => refConvert(c, from, to));
      const label = (i: number) => `${from} ${show(from, src[i]!)}`;
      if (to !== from) expect(mismatches(to, castCanonical(t, to), want, label)).toEqual([]);
      for (const byte of [0xa5, 0x5a]) {
        const dst = poisoned(to, src.length, byte, device);
        dst.copy_(t);
        expect(mismatches(to, canonical(dst), want, (i) => `copy_ over 0x${byte.toString(16)}: ${label(i)}`)).toEqual([]);
        dst.dispose();
      }
    }
  } finally {
    if (t !== cpuSrc) t.dispose();
    cpuSrc.dispose();
  }
}

// -------------------------------------------------------------- fresh random inputs

const randomUint32 = () => Math.floor(Math.random() * 2 ** 32) >>> 0;
const randomSign = () => (Math.random() < 0.5 ? -1 : 1);

/** A random double of any magnitude from 2^lo to 2^hi, 52 random mantissa bits. */
function randomDouble(lo = -160, hi = 160): number {
  const e = lo + Math.floor(Math.random() * (hi - lo));
  const m = 1 + Math.floor(Math.random() * 2 ** 26) / 2 ** 26 + Math.floor(Math.random() * 2 ** 26) / 2 ** 52;
  return randomSign() * m * 2 ** e;
}

/** A double from 64 random bits: any NaN payload, Inf, subnormals, anything. */
function randomDoubleBits(): number {
  const u = new Uint32Array([randomUint32(), randomUint32()]);
  return new Float64Array(u.buffer)[0]!;
}

function randomInt64(): bigint {
  return BigInt.asIntN(64, (BigInt(randomUint32()) << 32n) | BigInt(randomUint32()));
}

/** Doubles that stress a float format: neighbours, midpoints and just-off-midpoints. */
function formatStressValues(fmt: FloatFormat, samplesPerGap = Infinity): number[] {
  const f = FORMATS[fmt];
  const vals = finiteNonNegativeValues(fmt);
  vals.push(fmt === "float8_e4m3fn" ? 480 : f.maxFinite + 2 ** (Math.floor(Math.log2(f.maxFinite)) - f.man)); // the next step up
  const out: number[] = [];
  const step = Number.isFinite(samplesPerGap) ? Math.max(1, Math.floor((vals.length - 1) / samplesPerGap)) : 1;
  for (let k = 0; k < vals.length - 1; k += step) {
    const k0 = Number.isFinite(samplesPerGap) ? k + Math.floor(Math.random() * step) % (vals.length - 1 - k) : k;
    const a = vals[k0]!, b = vals[k0 + 1]!;
    const mid = (a + b) / 2; // exact in double
    const eps = (b - a) * 2 ** -20;
    for (const x of [a, mid, mid - eps, mid + eps, a + (b - a) * Math.random()]) out.push(x, -x);
  }
  return out;
}

// ------------------------------------------------------------------ the reference itself

describe("reference self-checks", () => {
  test("float32 rounding matches Math.fround and float16 matches Math.f16round on fresh values", () => {
    const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
    const hasF16 = typeof (Math as { f16round?: unknown }).f16round === "function";
    const bad: string[] = [];
    for (let i = 0; i < 20000; ++i) {
      const x = i % 4 === 0 ? randomDoubleBits() : randomDouble(-170, 140);
      f32[0] = x;
      const r = roundToFormat(x, "float32");
      if (!(r.bits === u32[0] || (Number.isNaN(x) && isNaNPattern(u32[0]!, "float32")))) bad.push(`f32 ${x}`);
      if (hasF16) {
        const h = (Math as unknown as { f16round(v: number): number }).f16round(x);
        const v = roundToFormat(x, "float16").value;
        if (!(Object.is(h, v) || (Number.isNaN(h) && Number.isNaN(v)))) bad.push(`f16 ${x}`);
      }
    }
    expect(bad.slice(0, 10)).toEqual([]);
  });

  test("decode(encode(v)) is v for every bit pattern of every small format", () => {
    for (const fmt of SMALL_FORMATS) {
      const f = FORMATS[fmt];
      let nans = 0;
      for (let b = 0; b < f.patterns; ++b) {
        const v = decodeFormat(b, fmt);
        if (Number.isNaN(v)) { ++nans; continue; }
        expect(roundToFormat(v, fmt).bits).toBe(b);
      }
      // float16: 2 * 1023 NaNs; bfloat16: 2 * 127; e5m2: 2 * 3; e4m3fn: 0x7f and 0xff only.
      expect(nans).toBe(fmt === "float8_e4m3fn" ? 2 : 2 * (2 ** f.man - 1));
    }
    expect(FORMATS.float16.maxFinite).toBe(65504);
    expect(FORMATS.bfloat16.maxFinite).toBe(3.3895313892515355e38);
    expect(FORMATS.float8_e4m3fn.maxFinite).toBe(448);
    expect(FORMATS.float8_e5m2.maxFinite).toBe(57344);
    expect(FORMATS.float8_e4m3fn.minSubnormal).toBe(2 ** -9);
    expect(FORMATS.float8_e5m2.minSubnormal).toBe(2 ** -16);
  });
});

// ------------------------------------------------------------------ exhaustive decoding

describe("every bit pattern of the 16- and 8-bit float formats", () => {
  for (const fmt of SMALL_FORMATS) {
    const n = FORMATS[fmt].patterns;
    test(`all ${n} ${fmt} patterns decode and cast to every dtype`, () => {
      const bits = Array.from({ length: n }, (_, b) => b);
      checkAllCasts(fmt, bits);
    });

    test(`all ${n} ${fmt} patterns through toFloat32Array and back`, () => {
      const bits = Array.from({ length: n }, (_, b) => b);
      const t = fromCanonical(fmt, bits);
      const f32 = t.toFloat32Array();
      expect(f32.length).toBe(n);
      const bad: string[] = [];
      for (let b = 0; b < n; ++b) {
        const want = decodeFormat(b, fmt);
        const got = f32[b]!;
        if (!(Object.is(got, Math.fround(want)) || (Number.isNaN(want) && Number.isNaN(got)))) bad.push(`0x${b.toString(16)}: ${got} vs ${want}`);
      }
      expect(bad.slice(0, 10)).toEqual([]);
      // float32 -> fmt is the identity on every non-NaN pattern (all are exact in float32).
      const back = canonical(fi.tensor(f32, undefined, { dtype: fmt, device: CPU }));
      expect(mismatches(fmt, back, bits, (i) => `0x${i.toString(16)}`)).toEqual([]);
      t.dispose();
    });
  }

  test("float16 from a Float16Array keeps every value", () => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const t = fi.tensor(new Float16Array(bits.buffer), undefined, { device: CPU });
    expect(t.dtype).toBe("float16");
    const got = canonical(t);
    expect(mismatches("float16", got, Array.from(bits), (i) => `0x${i.toString(16)}`)).toEqual([]);
    const arr = t.toArray();
    expect(arr).toBeInstanceOf(Float16Array);
    for (let b = 0; b < 65536; b += 257) {
      const want = decodeFormat(b, "float16");
      if (Number.isNaN(want)) expect(Number.isNaN(arr[b] as number)).toBe(true);
      else expect(Object.is(arr[b], want)).toBe(true);
    }
  });
});

// ------------------------------------------------------------------ exhaustive encoding

describe("rounding to each float format", () => {
  for (const fmt of FLOAT_FORMATS) {
    test(`${fmt}: representable values, midpoints (ties to even) and near-midpoints from float64`, () => {
      // float32 and bfloat16 have too many values for a full sweep: a fresh random sample of gaps.
      const values = formatStressValues(fmt === "float32" ? "bfloat16" : fmt, fmt === "float32" || fmt === "bfloat16" ? 6000 : Infinity);
      if (fmt === "float32") for (let i = 0; i < 20000; ++i) {
        const a = Math.fround(randomDouble(-149, 127));
        const ulp = 2 ** (Math.max(Math.floor(Math.log2(Math.abs(a))), -126) - 23);
        values.push(a, a + ulp / 2, a - ulp / 2, a + ulp / 2 + ulp * 2 ** -20, a + ulp / 2 - ulp * 2 ** -20);
      }
      const t = fi.tensor(new Float64Array(values), undefined, { dtype: fmt, device: CPU });
      const want = values.map((x) => roundToFormat(x, fmt).bits);
      expect(mismatches(fmt, canonical(t), want, (i) => showNumber(values[i]!))).toEqual([]);
      t.dispose();
    });
  }

  test("fresh random float64 bit patterns (NaN payloads, Inf, subnormals) to every dtype", () => {
    const x = new Float64Array(20000);
    for (let i = 0; i < x.length; ++i) x[i] = i % 2 ? randomDoubleBits() : randomDouble(-40, 70);
    checkAllCasts("float64", Array.from(x));
  });

  test("hand-checked ties, boundaries and overflow", () => {
    // [input, float16, bfloat16, e4m3fn, e5m2] bit patterns, worked out by hand.
    const cases: [number, number, number, number, number][] = [
      [1, 0x3c00, 0x3f80, 0x38, 0x3c],
      [-1, 0xbc00, 0xbf80, 0xb8, 0xbc],
      [1 + 2 ** -11, 0x3c00, 0x3f80, 0x38, 0x3c], // f16 tie to even (down)
      [1 + 3 * 2 ** -11, 0x3c02, 0x3f80, 0x38, 0x3c], // f16 tie to even (up)
      [1 + 2 ** -8, 0x3c04, 0x3f80, 0x38, 0x3c], // bf16 tie (down)
      [1 + 3 * 2 ** -8, 0x3c0c, 0x3f82, 0x38, 0x3c], // bf16 tie (up)
      [1.0625, 0x3c40, 0x3f88, 0x38, 0x3c], // e4m3 tie 1 | 1.125 -> 1
      [1.1875, 0x3cc0, 0x3f98, 0x3a, 0x3d], // e4m3 tie 1.125 | 1.25 -> 1.25; e5m2 above 1.125 -> 1.25
      [1.125, 0x3c80, 0x3f90, 0x39, 0x3c], // e5m2 tie 1 | 1.25 -> 1
      [1.375, 0x3d80, 0x3fb0, 0x3b, 0x3e], // e5m2 tie 1.25 | 1.5 -> 1.5
      [2049, 0x6800, 0x4500, 0x7f, 0x68], // f16 2048 | 2050 -> 2048; e4m3 overflow -> NaN
      [65504, 0x7bff, 0x4780, 0x7f, 0x7c], // f16 max; bf16 rounds to 65536; e5m2 65536 is Inf
      [65519.99, 0x7bff, 0x4780, 0x7f, 0x7c],
      [65520, 0x7c00, 0x4780, 0x7f, 0x7c], // f16 overflow at the tie above max
      [448, 0x5f00, 0x43e0, 0x7e, 0x5f], // e4m3 max
      [464, 0x5f40, 0x43e8, 0x7e, 0x5f], // e4m3 tie 448 | 480: even is 448
      [464.0001, 0x5f40, 0x43e8, 0x7f, 0x5f], // above the tie: rounds to 480, which is NaN
      [-464.0001, 0xdf40, 0xc3e8, 0xff, 0xdf],
      [57344, 0x7b00, 0x4760, 0x7f, 0x7b], // e5m2 max
      [61439, 0x7b80, 0x4770, 0x7f, 0x7b],
      [61440, 0x7b80, 0x4770, 0x7f, 0x7c], // e5m2 tie 57344 | 65536 -> Inf
      [2 ** -24, 0x0001, 0x3380, 0x00, 0x00], // f16 smallest subnormal
      [2 ** -25, 0x0000, 0x3300, 0x00, 0x00], // half of it: tie to 0
      [2 ** -25 * (1 + 2 ** -30), 0x0001, 0x3300, 0x00, 0x00],
      [3 * 2 ** -25, 0x0002, 0x33c0, 0x00, 0x00], // 1.5 subnormal steps: tie to 2
      [-(2 ** -25), 0x8000, 0xb300, 0x80, 0x80],
      [2 ** -14, 0x0400, 0x3880, 0x00, 0x04], // f16 smallest normal
      [2 ** -14 - 2 ** -25, 0x0400, 0x3880, 0x00, 0x04], // f16 tie between the top subnormal and the smallest normal
      [2 ** -9, 0x1800, 0x3b00, 0x01, 0x18], // e4m3 smallest subnormal
      [2 ** -10, 0x1400, 0x3a80, 0x00, 0x14], // half: tie to 0
      [3 * 2 ** -10, 0x1a00, 0x3b40, 0x02, 0x1a], // e4m3 1.5 steps: tie to 2 steps
      [2 ** -16, 0x0100, 0x3780, 0x00, 0x01], // e5m2 smallest subnormal
      [2 ** -17, 0x0080, 0x3700, 0x00, 0x00],
      [2 ** -17 * (1 + 2 ** -20), 0x0080, 0x3700, 0x00, 0x01],
      [2 ** -133, 0x0000, 0x0001, 0x00, 0x00], // bf16 smallest subnormal
      [2 ** -134, 0x0000, 0x0000, 0x00, 0x00],
      [3 * 2 ** -134, 0x0000, 0x0002, 0x00, 0x00],
      [2 ** -126, 0x0000, 0x0080, 0x00, 0x00], // bf16 smallest normal
      [5e-324, 0x0000, 0x0000, 0x00, 0x00],
      [-5e-324, 0x8000, 0x8000, 0x80, 0x80],
      [3.3895313892515355e38, 0x7c00, 0x7f7f, 0x7f, 0x7c], // bf16 max
      [3.3961775292304957e38, 0x7c00, 0x7f80, 0x7f, 0x7c], // bf16 tie above max -> Inf
      [1e300, 0x7c00, 0x7f80, 0x7f, 0x7c],
      [-1e300, 0xfc00, 0xff80, 0xff, 0xfc],
      [Infinity, 0x7c00, 0x7f80, 0x7f, 0x7c],
      [-Infinity, 0xfc00, 0xff80, 0x7f, 0xfc], // e4m3fn has no Inf: NaN
      [0, 0x0000, 0x0000, 0x00, 0x00],
      [-0, 0x8000, 0x8000, 0x80, 0x80],
    ];
    const inputs = new Float64Array(cases.map((c) => c[0]));
    SMALL_FORMATS.forEach((fmt, k) => {
      const want = cases.map((c) => c[k + 1]!);
      // The reference agrees with the hand-worked table ...
      const ref = cases.map((c) => roundToFormat(c[0], fmt).bits);
      expect(mismatches(fmt, ref, want, (i) => `reference ${showNumber(inputs[i]!)}`)).toEqual([]);
      // ... and so does the library, through tensor(), to() from float32 (where exact) and full().
      const got = canonical(fi.tensor(inputs, undefined, { dtype: fmt, device: CPU }));
      expect(mismatches(fmt, got, want, (i) => showNumber(inputs[i]!))).toEqual([]);
      for (let i = 0; i < cases.length; ++i) {
        const t = fi.full([2], inputs[i]!, { dtype: fmt, device: CPU });
        expect(mismatches(fmt, canonical(t), [want[i]!, want[i]!], () => `full(${showNumber(inputs[i]!)})`)).toEqual([]);
        t.dispose();
      }
    });
  });

  test("NaN in gives NaN out in every float format, and the NaN patterns decode as NaN", () => {
    const x = new Float64Array([NaN, -NaN, Infinity - Infinity, 0 / 0]);
    for (const fmt of FLOAT_FORMATS) {
      for (const b of canonical(fi.tensor(x, undefined, { dtype: fmt, device: CPU }))) expect(isNaNPattern(Number(b), fmt)).toBe(true);
    }
    const f64 = fi.tensor(x, undefined, { dtype: "float64", device: CPU }).toArray() as Float64Array;
    for (const v of f64) expect(Number.isNaN(v)).toBe(true);
    // e4m3fn: exactly 0x7f and 0xff are NaN; 0x7e / 0xfe are +-448 and 0x78 is 256, not Inf.
    const e4 = fromCanonical("float8_e4m3fn", [0x7f, 0xff, 0x7e, 0xfe, 0x78, 0x80]).to({ dtype: "float64" }).toArray() as Float64Array;
    expect(Number.isNaN(e4[0]!) && Number.isNaN(e4[1]!)).toBe(true);
    expect(Array.from(e4.slice(2))).toEqual([448, -448, 256, -0]);
    expect(Object.is(e4[5], -0)).toBe(true);
    // e5m2: 0x7c / 0xfc are +-Inf, 0x7d..0x7f NaN.
    const e5 = fromCanonical("float8_e5m2", [0x7c, 0xfc, 0x7d, 0x7e, 0x7f, 0xff]).to({ dtype: "float64" }).toArray() as Float64Array;
    expect(e5[0]).toBe(Infinity);
    expect(e5[1]).toBe(-Infinity);
    for (const v of e5.slice(2)) expect(Number.isNaN(v)).toBe(true);
  });
});

// ------------------------------------------------------------------ every dtype pair

const EDGE_DOUBLES = [
  0, -0, 1, -1, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.9999999999999999, -0.9999999999999999,
  127, 127.9, 128, 255, 255.5, 255.99, 256, -255.5, -256, 2 ** 24 + 1, 2 ** 31 - 1, 2 ** 31 - 0.5, 2 ** 31, -(2 ** 31),
  -(2 ** 31) - 0.5, -(2 ** 31) - 1, 2 ** 32 + 5, 2 ** 53, -(2 ** 53), 2 ** 62, 2 ** 63 - 1024, 2 ** 63, -(2 ** 63),
  -(2 ** 63) - 2048, 2 ** 64, 1e19, -1e19, 1e300, -1e300, Infinity, -Infinity, NaN, 448, 464, 465, 480, 57344, 61440,
  65504, 65520, 65536, 3.4028234663852886e38, 3.4028235677973366e38, 1e-8, -1e-8, 2 ** -24, 2 ** -25, 2 ** -126,
  2 ** -149, 2 ** -150, 1.401298464324817e-45 * 1.5, 5e-324, -5e-324, 2.2250738585072014e-308, Math.PI, -Math.E,
];

const EDGE_INT64 = [
  0n, 1n, -1n, 2n, 127n, 128n, 255n, 256n, 257n, -128n, -129n, -255n, -256n, 2n ** 31n - 1n, 2n ** 31n, -(2n ** 31n),
  -(2n ** 31n) - 1n, 2n ** 32n, 2n ** 32n + 7n, 2n ** 40n, 2n ** 53n, -(2n ** 53n), 2n ** 53n - 1n, 65504n, 65520n, 2049n,
  2n ** 24n + 1n, 2n ** 24n + 3n,
];

describe("every dtype pair", () => {
  test("float64 source: edge values and fresh random values to every dtype", () => {
    const src = [...EDGE_DOUBLES];
    for (let i = 0; i < 3000; ++i) src.push(randomDouble(-30, 70), randomSign() * Math.random() * 300, Math.round(randomSign() * Math.random() * 2 ** 33) + 0.5);
    checkAllCasts("float64", src);
  });

  test("float32 source: edge values and fresh random values to every dtype", () => {
    const src = [...EDGE_DOUBLES.map((x) => roundToFormat(x, "float32").bits)];
    for (let i = 0; i < 5000; ++i) src.push(roundToFormat(randomDouble(-150, 128), "float32").bits, randomUint32());
    checkAllCasts("float32", src);
  });

  test("int32 source: edges (wrap, float rounding ties) and fresh random values", () => {
    const src = EDGE_INT64.map((v) => Number(BigInt.asIntN(32, v)));
    for (let i = 0; i < 5000; ++i) src.push(randomUint32() | 0, Math.floor(randomSign() * Math.random() * 70000));
    checkAllCasts("int32", src);
  });

  test("int64 source: edges and fresh random values (|v| <= 2^53 for float destinations)", () => {
    // Integer destinations: the full int64 range, wrapping.
    const wide = [...EDGE_INT64, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 62n + 2n ** 38n + 1n, -(2n ** 53n) - 1n];
    for (let i = 0; i < 5000; ++i) wide.push(randomInt64());
    const t = fromCanonical("int64", wide);
    for (const to of ["int32", "int64", "uint8", "bool"] as const) {
      const want = wide.map((v) => convertFromInt(v, to));
      expect(mismatches(to, castCanonical(t, to), want, (i) => `${wide[i]}n`)).toEqual([]);
    }
    // float64 is one correct rounding of any int64.
    expect(mismatches("float64", castCanonical(t, "float64"), wide.map((v) => Number(v)), (i) => `${wide[i]}n`)).toEqual([]);
    t.dispose();
    // Every destination, values exact in float64 (beyond 2^53: the next test).
    const narrow = [...EDGE_INT64];
    for (let i = 0; i < 5000; ++i) narrow.push(BigInt(Math.floor(randomSign() * Math.random() * 2 ** 53)), BigInt(Math.floor(randomSign() * Math.random() * 70000)));
    checkAllCasts("int64", narrow);
  });

  test("int64 beyond 2^53 rounds once to float32 and bfloat16 (no double rounding through float64)", () => {
    // Nearest-even rounding of a BigInt to `bits` significant bits, computed with BigInt only.
    const roundBig = (v: bigint, bits: number): number => {
      const neg = v < 0n, m = neg ? -v : v;
      const shift = Math.max(0, m.toString(2).length - bits);
      if (shift === 0) return Number(v);
      let q = m >> BigInt(shift);
      const rem = m & ((1n << BigInt(shift)) - 1n), half = 1n << BigInt(shift - 1);
      if (rem > half || (rem === half && (q & 1n) === 1n)) q += 1n;
      const r = Number(q) * 2 ** shift;
      return neg ? -r : r;
    };
    const values = [2n ** 62n + 2n ** 38n + 1n, 2n ** 62n + 2n ** 54n + 1n, -(2n ** 62n + 2n ** 38n + 1n), 2n ** 63n - 1n, -(2n ** 63n)];
    for (let i = 0; i < 2000; ++i) values.push(randomInt64());
    const t = fromCanonical("int64", values);
    for (const [to, bits] of [["float32", 24], ["bfloat16", 8], ["float16", 11]] as const) {
      using c = t.to({ dtype: to });
      const got = Array.from(c.toFloat32Array());
      const want = values.map((v) => {
        const r = roundBig(v, bits);
        return to === "float16" && Math.abs(r) > 65504 ? Math.sign(r) * Infinity : r;
      });
      expect(got).toEqual(want);
    }
    t.dispose();
  });

  test("uint8 source: all 256 values to every dtype", () => {
    checkAllCasts("uint8", Array.from({ length: 256 }, (_, i) => i));
  });

  test("bool source: 0 and 1, and any nonzero byte reads as true", () => {
    checkAllCasts("bool", [0, 1, 0, 1, 1, 0]);
    // A bool byte other than 0/1 (written raw) is true in every cast.
    const raw = Array.from({ length: 256 }, (_, i) => i);
    const t = fromCanonical("bool", raw);
    for (const to of fi.DTYPES) {
      if (to === "bool") continue; // same dtype: to() aliases the memory, bytes as they are
      const want = raw.map((b) => convertFromInt(b ? 1n : 0n, to));
      expect(mismatches(to, castCanonical(t, to), want, (i) => `bool byte ${i}`)).toEqual([]);
    }
    t.dispose();
  });

  test("toFloat32Array of every dtype is the float32 rounding of each value", () => {
    for (const from of fi.DTYPES) {
      const src: Canon[] = isIntegral(from)
        ? (from === "int64" ? EDGE_INT64 : EDGE_INT64.map((v) => Number(convertFromInt(v, from))))
        : EDGE_DOUBLES.map((x) => convertFromFloat(x, from));
      const t = fromCanonical(from, src);
      const got = t.toFloat32Array();
      expect(got).toBeInstanceOf(Float32Array);
      const want = src.map((c) => refConvert(c, from, "float32"));
      const gotBits = Array.from(new Uint32Array(got.buffer, got.byteOffset, got.length));
      expect(mismatches("float32", gotBits, want, (i) => `${from} ${show(from, src[i]!)}`)).toEqual([]);
      t.dispose();
    }
  });

  test("toArray returns each dtype's natural array", () => {
    const kinds: Record<DType, unknown> = {
      float32: Float32Array, float64: Float64Array, float16: Float16Array, bfloat16: Uint16Array, float8_e4m3fn: Uint8Array,
      float8_e5m2: Uint8Array, int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array, bool: Uint8Array,
    };
    for (const d of fi.DTYPES) {
      const t = fi.tensor([1.5, -2, 0], undefined, { dtype: d, device: CPU });
      const a = t.toArray();
      expect(a).toBeInstanceOf(kinds[d] as never);
      expect(a.length).toBe(3);
      const want = [1.5, -2, 0].map((x) => convertFromFloat(x, d));
      expect(mismatches(d, canonical(t), want, (i) => String([1.5, -2, 0][i]))).toEqual([]);
      t.dispose();
    }
  });

  test("casts follow strides: a transposed and a broadcast source", () => {
    const vals = Array.from({ length: 12 }, () => randomDouble(-10, 10));
    const base = fi.tensor(vals, [3, 4], { dtype: "float64", device: CPU });
    const tr = base.transpose(0, 1); // [4, 3], element (i, j) = vals[j * 4 + i]
    for (const to of fi.DTYPES) {
      const want: Canon[] = [];
      for (let i = 0; i < 4; ++i) for (let j = 0; j < 3; ++j) want.push(convertFromFloat(vals[j * 4 + i]!, to));
      const out = tr.to({ dtype: to });
      expect(out.shape).toEqual([4, 3]);
      expect(mismatches(to, canonical(out), want, (k) => `transposed[${k}]`)).toEqual([]);
      out.dispose();
      // copy_ of a [4] row broadcast to [3, 4], cast on the way.
      const row = base.select(0, 1);
      const dst = fi.empty([3, 4], { dtype: to, device: CPU }).copy_(row);
      const rowWant = vals.slice(4, 8).map((x) => convertFromFloat(x, to));
      expect(mismatches(to, canonical(dst), [...rowWant, ...rowWant, ...rowWant], (k) => `broadcast[${k}]`)).toEqual([]);
      dst.dispose();
      row.dispose();
    }
    tr.dispose();
    base.dispose();
  });

  test("fill_ rounds like a cast for every dtype (fresh random and edge values)", () => {
    const values = [...EDGE_DOUBLES, randomDouble(-20, 20), randomDouble(-20, 20), randomSign() * Math.random() * 500];
    const t = new Map(fi.DTYPES.map((d) => [d, fi.empty([3], { dtype: d, device: CPU })]));
    for (const x of values) {
      for (const [d, tt] of t) {
        tt.fill_(x);
        const w = convertFromFloat(x, d);
        expect(mismatches(d, canonical(tt), [w, w, w], () => `fill_(${showNumber(x)})`)).toEqual([]);
      }
    }
    for (const tt of t.values()) tt.dispose();
  });
});

// ------------------------------------------------------------------ integers and bool

describe("integer saturation, wrapping and bool", () => {
  const cast = (x: number[], to: DType) => canonical(fi.tensor(new Float64Array(x), undefined, { dtype: to, device: CPU }));

  test("float -> int32 truncates toward zero, saturates, NaN -> 0", () => {
    expect(cast([2.9, -2.9, -0.5, 0.5, 2147483647.9, 2 ** 31, 1e300, Infinity, -2147483648.9, -(2 ** 31) - 1, -Infinity, NaN], "int32"))
      .toEqual([2, -2, 0, 0, 2147483647, 2147483647, 2147483647, 2147483647, -2147483648, -2147483648, -2147483648, 0]);
  });

  test("float -> uint8 truncates toward zero, saturates, NaN -> 0", () => {
    expect(cast([0.99, 1.5, 254.999, 255.9, 256, 1e10, Infinity, -0.9, -1, -300, -Infinity, NaN], "uint8"))
      .toEqual([0, 1, 254, 255, 255, 255, 255, 0, 0, 0, 0, 0]);
  });

  test("float -> int64 truncates toward zero, saturates, NaN -> 0", () => {
    expect(cast([2.9, -2.9, 2 ** 53 + 2, -(2 ** 62), 2 ** 63 - 1024, -(2 ** 63), -1e30, -Infinity, NaN], "int64"))
      .toEqual([2n, -2n, 2n ** 53n + 2n, -(2n ** 62n), 2n ** 63n - 1024n, INT64_MIN, INT64_MIN, INT64_MIN, 0n]);
    // Above the range it saturates to INT64_MAX.
    expect(cast([2 ** 63, 1e30, Infinity], "int64")).toEqual([INT64_MAX, INT64_MAX, INT64_MAX]);
  });

  test("int -> int wraps like a C cast; bool is v != 0", () => {
    const src = [2n ** 32n + 7n, 2n ** 31n, -1n, 256n, 2n ** 40n, -(2n ** 63n), 2n ** 63n - 1n, 511n, 0n];
    const t = fi.tensor(new BigInt64Array(src), undefined, { device: CPU });
    expect(t.dtype).toBe("int64");
    expect(castCanonical(t, "int32")).toEqual([7, -(2 ** 31), -1, 256, 0, 0, -1, 511, 0]);
    expect(castCanonical(t, "uint8")).toEqual([7, 0, 255, 0, 0, 0, 255, 255, 0]);
    expect(castCanonical(t, "bool")).toEqual([1, 1, 1, 1, 1, 1, 1, 1, 0]); // 2^40 and 256 are true, not their low byte
    const i32 = fi.tensor(new Int32Array([-1, -(2 ** 31), 300]), undefined, { device: CPU });
    expect(castCanonical(i32, "int64")).toEqual([-1n, -(2n ** 31n), 300n]);
    expect(castCanonical(i32, "uint8")).toEqual([255, 0, 44]);
    const u8 = fi.tensor(new Uint8Array([255, 128, 0]), undefined, { device: CPU });
    expect(castCanonical(u8, "int32")).toEqual([255, 128, 0]);
    expect(castCanonical(u8, "int64")).toEqual([255n, 128n, 0n]);
    for (const x of [t, i32, u8]) x.dispose();
  });

  test("float -> bool is x != 0: NaN, subnormals and -Inf are true, -0 is false", () => {
    expect(cast([0, -0, NaN, 5e-324, -5e-324, 1e-300, -Infinity, Infinity, 0.1, -1], "bool")).toEqual([0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
    const back = fi.tensor([0, 1, NaN], undefined, { dtype: "bool", device: CPU }).to({ dtype: "float64" }).toArray();
    expect(Array.from(back as Float64Array)).toEqual([0, 1, 1]);
  });

  test("float8/bfloat16 sources saturate and truncate into integers", () => {
    // e4m3fn 448 / NaN, e5m2 -Inf, bf16 3e38 and -2.5.
    expect(castCanonical(fromCanonical("float8_e4m3fn", [0x7e, 0x7f, 0xfe]), "uint8")).toEqual([255, 0, 0]);
    expect(castCanonical(fromCanonical("float8_e5m2", [0xfc, 0x7c, 0xc1]), "int32")).toEqual([-(2 ** 31), 2 ** 31 - 1, -2]);
    expect(castCanonical(fromCanonical("bfloat16", [0x7f7f, 0xc020, 0x7fc0]), "int64")).toEqual([INT64_MAX, -2n, 0n]);
  });
});

// ------------------------------------------------------------------ CUDA vs CPU

describe("CUDA casts match the CPU bit for bit", () => {
  /** Casts cpu canonical elements of `from` to every dtype on cuda:0 and on the cpu; compares. */
  function compareDevices(from: DType, src: readonly Canon[]): void {
    const c = fromCanonical(from, src);
    const g = c.to(CUDA);
    expect(g.device).toBe(CUDA);
    try {
      for (const to of fi.DTYPES) {
        const onGpu = g.to({ dtype: to });
        expect(onGpu.device).toBe(CUDA);
        const got = canonical(onGpu);
        onGpu.dispose();
        const want = castCanonical(c, to);
        // Bit-identical, -0 included; a NaN only has to be a NaN pattern on both: decoding a
        // negative NaN of float16 / bfloat16 / float8 to float32 / float64 keeps the sign on the
        // CPU but not on the GPU (seen on an H100), and the library promises no NaN sign.
        const bad: string[] = [];
        for (let i = 0; i < want.length; ++i) if (!sameCanonical(to, got[i]!, want[i]!)) bad.push(`${from} ${show(from, src[i]!)} -> ${to}: gpu ${show(to, got[i]!)} cpu ${show(to, want[i]!)}`);
        expect(bad.slice(0, 12)).toEqual([]);
      }
    } finally {
      g.dispose();
      c.dispose();
    }
  }

  test.skipIf(!gpu)("every pattern of the 16- and 8-bit float formats, to every dtype", () => {
    for (const fmt of SMALL_FORMATS) compareDevices(fmt, Array.from({ length: FORMATS[fmt].patterns }, (_, b) => b));
  });

  test.skipIf(!gpu)("float64, float32 and integer sources (edges and fresh random) to every dtype", () => {
    const f64 = [...EDGE_DOUBLES];
    for (let i = 0; i < 20000; ++i) f64.push(i % 2 ? randomDoubleBits() : randomDouble(-40, 70));
    compareDevices("float64", f64);
    const f32: number[] = EDGE_DOUBLES.map((x) => roundToFormat(x, "float32").bits);
    for (let i = 0; i < 20000; ++i) f32.push(randomUint32());
    compareDevices("float32", f32);
    const i64 = [...EDGE_INT64, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 62n + 2n ** 38n + 1n];
    for (let i = 0; i < 5000; ++i) i64.push(randomInt64());
    compareDevices("int64", i64);
    compareDevices("int32", [...EDGE_INT64.map((v) => Number(BigInt.asIntN(32, v))), ...Array.from({ length: 5000 }, () => randomUint32() | 0)]);
    compareDevices("uint8", Array.from({ length: 256 }, (_, i) => i));
    compareDevices("bool", Array.from({ length: 256 }, (_, i) => i));
  });

  test.skipIf(!gpu)("fresh random values cast on the GPU match the reference", () => {
    const x = Array.from({ length: 50000 }, () => randomDouble(-30, 30));
    checkAllCasts("float64", x, CUDA);
  });

  test.skipIf(!gpu)("strided casts and fills on the GPU match the CPU", () => {
    const vals = Array.from({ length: 4 * 33 }, () => randomDouble(-20, 20));
    const cpuBase = fi.tensor(vals, [4, 33], { dtype: "float64", device: CPU });
    const gpuBase = cpuBase.to(CUDA);
    for (const to of fi.DTYPES) {
      const a = cpuBase.transpose(0, 1), b = gpuBase.transpose(0, 1);
      const ca = a.to({ dtype: to }), cb = b.to({ dtype: to });
      expect(cb.device).toBe(CUDA);
      expect(canonical(cb)).toEqual(canonical(ca));
      for (const x of [a, b, ca, cb]) x.dispose();
      for (const v of [...EDGE_DOUBLES.slice(0, 20), randomDouble(-20, 20), 464, 65520, NaN, -0]) {
        const fc = fi.full([5], v, { dtype: to, device: CPU }), fg = fi.full([5], v, { dtype: to, device: CUDA });
        const gc = canonical(fg), cc = canonical(fc);
        for (let i = 0; i < 5; ++i) expect(sameCanonical(to, gc[i]!, cc[i]!)).toBe(true);
        if (!Number.isNaN(v)) expect(gc).toEqual(cc);
        fc.dispose();
        fg.dispose();
      }
    }
    gpuBase.dispose();
    cpuBase.dispose();
  });
});

// fi.randn / fi.rand: determinism, agreement with the reference Philox4x32-10 + Box-Muller in
// reference/dtype.ts, every output dtype, statistics, the global generator, and CUDA == CPU.
//
// The reference uses Math.log / Math.cos / Math.sin, the library its own portable log and sincos,
// so the float64 values differ by ~1e-13 at most: float32 output is compared within 1e-6, and
// every output dtype must be the rounding of a value within TOL of the reference value. CUDA and
// CPU must agree bit for bit.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import {
  type Canon,
  canonicalView,
  canonicalValue,
  convertFromFloat,
  mulHiLo,
  philox4x32_10,
  philoxBlock,
  randomValue,
  randomValues,
  sameCanonical,
} from "./reference/dtype.ts";

type DType = fi.DType;
type Kind = "uniform" | "normal";

const gpu = fi.cudaAvailable();
const CPU = "cpu" as const;
const CUDA = "cuda:0";
/** Largest |reference - library| of a float64 sample allowed (seen: < 1e-13). */
const TOL = 1e-11;
/** Box-Muller's largest radius: sqrt(-2 ln 2^-24). */
const MAX_NORMAL = Math.sqrt(-2 * Math.log(2 ** -24));

const randomSeed = (): bigint => (BigInt(Math.floor(Math.random() * 2 ** 32)) << 32n) | BigInt(Math.floor(Math.random() * 2 ** 32));
const draw = (kind: Kind, shape: number[], opts: fi.RandomOptions) => (kind === "normal" ? fi.randn(shape, opts) : fi.rand(shape, opts));


/** The elements of a tensor (any device), row-major, in canonical form (bits for floats but float64). */
function canonical(t: fi.Tensor): Canon[] {
  const host = t.to(CPU);
  const packed = host.contiguous();
  try {
    const v = packed.hostView();
    return Array.from(canonicalView(t.dtype, new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice()));
  } finally {
    packed.dispose();
    host.dispose();
  }
}

/** Draws, reads back as float64 values (exact for every float dtype), disposes. */
function values(kind: Kind, shape: number[], opts: fi.RandomOptions): Float64Array {
  const t = draw(kind, shape, opts);
  try {
    expect(t.shape).toEqual(shape);
    const f = t.to({ dtype: "float64" });
    const out = f.toArray() as Float64Array;
    f.dispose();
    return out;
  } finally {
    t.dispose();
  }
}

/**
 * Whether a canonical element of `dtype` is the rounding of some value within TOL of `r`
 * (scaled by 1 + |r|): float64 keeps the value; the other conversions are monotone, so the
 * candidates are the roundings of r - tol, r and r + tol (and of +-0 when the interval holds
 * 0, for bool and signed zeros).
 */
function acceptable(dtype: DType, got: Canon, r: number): boolean {
  const tol = TOL * (1 + Math.abs(r));
  if (dtype === "float64") return Math.abs(Number(got) - r) <= tol; // NaN fails
  const cands = [r, r - tol, r + tol];
  if (r - tol <= 0 && 0 <= r + tol) cands.push(0, -0);
  return cands.some((x) => sameCanonical(dtype, got, convertFromFloat(x, dtype)));
}

function checkAgainstReference(kind: Kind, dtype: DType, seed: bigint, offset: bigint, got: readonly Canon[], what: string): void {
  const ref = randomValues(kind, seed, offset, got.length);
  const bad: string[] = [];
  for (let i = 0; i < got.length; ++i) {
    if (!acceptable(dtype, got[i]!, ref[i]!) && bad.push(`${what}[${i}]: got ${got[i]} (${canonicalValue(got[i]!, dtype)}), reference ${ref[i]}`) >= 10) break;
  }
  expect(bad).toEqual([]);
}

// ------------------------------------------------------------------ the reference itself

describe("reference Philox", () => {
  test("Random123 known-answer vectors for Philox4x32-10", () => {
    const hex = (w: number[]) => w.map((x) => x.toString(16).padStart(8, "0"));
    expect(hex(philoxBlock([0, 0, 0, 0], [0, 0]))).toEqual(["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]);
    expect(hex(philoxBlock([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff])))
      .toEqual(["408f276d", "41c83b0e", "a20bc7c6", "6d5451fd"]);
    expect(hex(philoxBlock([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0])))
      .toEqual(["d16cfe09", "94fdcceb", "5001e420", "24126ea1"]);
    // The library's counter layout: c0 = low word, c1 = high word, c2 = c3 = 0; key = seed.
    expect(philox4x32_10(0x1234567890abcdefn, 0xfedcba9876543210n))
      .toEqual(philoxBlock([0x90abcdef, 0x12345678, 0, 0], [0x76543210, 0xfedcba98]));
  });

  test("mulHiLo is the exact 64-bit product (checked with BigInt on fresh values)", () => {
    const pairs: [number, number][] = [[0, 0], [0xffffffff, 0xffffffff], [0xd2511f53, 0xffffffff], [0xcd9e8d57, 1], [0x10000, 0x10000], [0xffff, 0x10001]];
    for (let i = 0; i < 5000; ++i) pairs.push([Math.floor(Math.random() * 2 ** 32), Math.floor(Math.random() * 2 ** 32)]);
    for (const [a, b] of pairs) {
      const p = BigInt(a) * BigInt(b);
      expect(mulHiLo(a, b)).toEqual([Number(p >> 32n), Number(p & 0xffffffffn)]);
    }
  });
});

// ------------------------------------------------------------------ determinism and the reference

describe("seeded randn / rand", () => {
  test("the same seed gives identical arrays; different seeds (low word, high word) differ", () => {
    const s = randomSeed();
    for (const kind of ["normal", "uniform"] as Kind[]) {
      const a = canonical(draw(kind, [1001], { seed: s, device: CPU }));
      const b = canonical(draw(kind, [1001], { seed: s, device: CPU }));
      expect(b).toEqual(a);
      for (const other of [s ^ 1n, s ^ (1n << 40n), (s + 12345n) % 2n ** 64n]) {
        const c = canonical(draw(kind, [1001], { seed: other, device: CPU }));
        const same = c.filter((x, i) => x === a[i]).length;
        expect(same).toBeLessThan(10); // independent 24-bit-ish values collide very rarely
      }
    }
  });

  test("seed as number and as bigint agree; the extreme seeds work", () => {
    const n = Math.floor(Math.random() * 2 ** 52);
    expect(canonical(fi.randn([33], { seed: n, device: CPU }))).toEqual(canonical(fi.randn([33], { seed: BigInt(n), device: CPU })));
    for (const seed of [0, 0n, 2n ** 64n - 1n, 2n ** 32n, 2 ** 32 - 1]) {
      const t = fi.randn([13], { seed, dtype: "float64", device: CPU });
      checkAgainstReference("normal", "float64", BigInt(seed), 0n, canonical(t), `seed ${seed}`);
      t.dispose();
    }
  });

  test("invalid seeds are rejected", () => {
    for (const seed of [-1, 1.5, 2n ** 64n, -1n, Number.MAX_SAFE_INTEGER + 2, NaN]) {
      expect(() => fi.randn([4], { seed: seed as number, device: CPU })).toThrow(fi.FlashInferError);
    }
    expect(() => fi.manualSeed(-3)).toThrow(fi.FlashInferError);
  });

  test("float64 output matches the reference Philox + Box-Muller / uniform (fresh seeds)", () => {
    for (let rep = 0; rep < 3; ++rep) {
      const seed = randomSeed();
      for (const kind of ["normal", "uniform"] as Kind[]) {
        const got = values(kind, [20001], { seed, dtype: "float64", device: CPU });
        const ref = randomValues(kind, seed, 0n, got.length);
        let worst = 0;
        for (let i = 0; i < got.length; ++i) {
          const d = Math.abs(got[i]! - ref[i]!);
          if (!(d <= worst)) worst = d; // NaN makes worst NaN
        }
        if (kind === "uniform") expect(worst).toBe(0); // 24-bit uniform: exact
        else expect(worst).toBeLessThanOrEqual(TOL);
      }
    }
  });

  test("float32 output is within 1e-6 of the reference, and is its float32 rounding", () => {
    const seed = randomSeed();
    for (const kind of ["normal", "uniform"] as Kind[]) {
      const t = draw(kind, [50001], { seed, device: CPU });
      expect(t.dtype).toBe("float32");
      const got = t.toArray() as Float32Array;
      expect(got).toBeInstanceOf(Float32Array);
      const ref = randomValues(kind, seed, 0n, got.length);
      let worst = 0;
      for (let i = 0; i < got.length; ++i) {
        const d = Math.abs(got[i]! - ref[i]!);
        if (!(d <= worst)) worst = d;
      }
      expect(worst).toBeLessThanOrEqual(1e-6);
      checkAgainstReference(kind, "float32", seed, 0n, canonical(t), `${kind} float32`);
      t.dispose();
    }
  });

  for (const dtype of fi.DTYPES) {
    test(`${dtype} output is the ${dtype} rounding of the reference values`, () => {
      const seed = randomSeed();
      for (const kind of ["normal", "uniform"] as Kind[]) {
        const t = draw(kind, [4099], { seed, dtype, device: CPU });
        expect(t.dtype).toBe(dtype);
        const got = canonical(t);
        checkAgainstReference(kind, dtype, seed, 0n, got, `${kind} ${dtype}`);
        // And the same values as casting the float64 draw (rounding the same double).
        const f64 = draw(kind, [4099], { seed, dtype: "float64", device: CPU });
        const cast = f64.to({ dtype });
        const castC = canonical(cast);
        const bad = got.filter((g, i) => !sameCanonical(dtype, g, castC[i]!)).length;
        expect(bad).toBe(0);
        for (const x of [t, f64, cast]) x.dispose();
      }
    });
  }

  test("odd sizes (1, 7, 99, 1001) and shapes: element i depends only on (seed, i)", () => {
    const seed = randomSeed();
    for (const kind of ["normal", "uniform"] as Kind[]) {
      const long = canonical(draw(kind, [1001], { seed, device: CPU }));
      checkAgainstReference(kind, "float32", seed, 0n, long, `${kind} [1001]`);
      for (const n of [1, 7, 99]) expect(canonical(draw(kind, [n], { seed, device: CPU }))).toEqual(long.slice(0, n));
      // A multi-dimensional tensor is the flat sequence in row-major order.
      const t = draw(kind, [7, 11, 13], { seed, device: CPU });
      expect(t.shape).toEqual([7, 11, 13]);
      const flat = canonical(draw(kind, [1001], { seed, device: CPU }));
      expect(canonical(t)).toEqual(flat);
      expect(canonical(t.transpose(0, 2))[1]).toEqual(flat[11 * 13]); // element (0,0,1) of the transpose is (1,0,0)
      t.dispose();
    }
  });

  test("shape [0] (and [3, 0]) works", () => {
    for (const kind of ["normal", "uniform"] as Kind[]) {
      for (const shape of [[0], [3, 0]]) {
        const t = draw(kind, shape, { seed: 5, device: CPU });
        expect(t.shape).toEqual(shape);
        expect(t.numel).toBe(0);
        expect(t.toArray().length).toBe(0);
        const g = draw(kind, shape, { device: CPU }); // the global generator too
        expect(g.numel).toBe(0);
        t.dispose();
        g.dispose();
      }
    }
  });
});

// ------------------------------------------------------------------ statistics

describe("statistics over 1e6 samples (fresh seeds; bounds are 5+ standard errors)", () => {
  const N = 1_000_000;

  test("randn: mean 0, variance 1, 1- and 2-sigma fractions, skewness, kurtosis, bounded tails", () => {
    const x = draw("normal", [N], { seed: randomSeed(), device: CPU }).toArray() as Float32Array;
    expect(x.length).toBe(N);
    let s1 = 0, s2 = 0, s3 = 0, s4 = 0, in1 = 0, in2 = 0, maxAbs = 0, neg = 0, nonFinite = 0;
    for (let i = 0; i < N; ++i) {
      const v = x[i]!;
      if (!Number.isFinite(v)) nonFinite++;
      s1 += v;
      const v2 = v * v;
      s2 += v2; s3 += v2 * v; s4 += v2 * v2;
      const a = Math.abs(v);
      if (a < 1) in1++;
      if (a < 2) in2++;
      if (v < 0) neg++;
      if (a > maxAbs) maxAbs = a;
    }
    expect(nonFinite).toBe(0);
    const mean = s1 / N, variance = s2 / N - mean * mean;
    expect(Math.abs(mean)).toBeLessThan(5 / Math.sqrt(N));
    expect(Math.abs(variance - 1)).toBeLessThan(5 * Math.sqrt(2 / N));
    expect(Math.abs(in1 / N - 0.6826894921370859)).toBeLessThan(5 * Math.sqrt(0.2167 / N));
    expect(Math.abs(in2 / N - 0.9544997361036416)).toBeLessThan(5 * Math.sqrt(0.0434 / N));
    expect(Math.abs(neg / N - 0.5)).toBeLessThan(5 * Math.sqrt(0.25 / N));
    expect(Math.abs(s3 / N)).toBeLessThan(5 * Math.sqrt(15 / N)); // E[z^3] = 0, Var = 15
    expect(Math.abs(s4 / N - 3)).toBeLessThan(5 * Math.sqrt(96 / N)); // E[z^4] = 3, Var = 96
    expect(maxAbs).toBeLessThanOrEqual(MAX_NORMAL + 1e-6);
    expect(maxAbs).toBeGreaterThan(4); // P(max |z| < 4 over 1e6) ~ e^-63
  });

  test("randn: consecutive pairs are uncorrelated (lanes 0/1 and 2/3 share a radius)", () => {
    const x = draw("normal", [N], { seed: randomSeed(), device: CPU }).toArray() as Float32Array;
    for (const lag of [1, 2, 4]) {
      let c = 0;
      for (let i = 0; i + lag < N; ++i) c += x[i]! * x[i + lag]!;
      expect(Math.abs(c / (N - lag))).toBeLessThan(5 / Math.sqrt(N));
    }
    // The squared values of a Box-Muller pair are not independent of each other only through the
    // radius; their correlation must still be ~0 for a true normal pair.
    let c2 = 0;
    for (let i = 0; i < N; i += 2) c2 += (x[i]! * x[i]! - 1) * (x[i + 1]! * x[i + 1]! - 1);
    expect(Math.abs(c2 / (N / 2))).toBeLessThan(5 * Math.sqrt(4 / (N / 2)));
  });

  test("rand: in [0, 1), 24-bit grid, mean 1/2, variance 1/12, flat histogram", () => {
    const x = draw("uniform", [N], { seed: randomSeed(), device: CPU }).toArray() as Float32Array;
    let min = Infinity, max = -Infinity, s1 = 0, s2 = 0, offGrid = 0;
    const BINS = 100;
    const hist = new Array<number>(BINS).fill(0);
    for (let i = 0; i < N; ++i) {
      const v = x[i]!;
      if (!(v >= min)) min = v; // NaN poisons min
      if (!(v <= max)) max = v;
      s1 += v;
      s2 += v * v;
      if (!Number.isInteger(v * 2 ** 24)) offGrid++;
      hist[Math.floor(v * BINS)]!++;
    }
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1);
    expect(offGrid).toBe(0);
    const mean = s1 / N;
    expect(Math.abs(mean - 0.5)).toBeLessThan(5 * Math.sqrt(1 / 12 / N));
    expect(Math.abs(s2 / N - mean * mean - 1 / 12)).toBeLessThan(5 * Math.sqrt(1 / 180 / N));
    // Pearson chi-square with 99 degrees of freedom: mean 99, sd 14; 200 is > 7 sd.
    const e = N / BINS;
    const chi2 = hist.reduce((acc, h) => acc + (h - e) ** 2 / e, 0);
    expect(hist.reduce((a, b) => a + b, 0)).toBe(N);
    expect(chi2).toBeLessThan(200);
    expect(min).toBeLessThan(1e-4);
    expect(max).toBeGreaterThan(1 - 1e-4);
  });
});

// ------------------------------------------------------------------ global generator

describe("global generator", () => {
  test("successive unseeded calls differ", () => {
    for (const kind of ["normal", "uniform"] as Kind[]) {
      const a = canonical(draw(kind, [257], { device: CPU }));
      const b = canonical(draw(kind, [257], { device: CPU }));
      expect(a.filter((x, i) => x === b[i]).length).toBeLessThan(5);
    }
  });

  test("manualSeed makes the sequence reproducible and advances one Philox counter per 4 values", () => {
    const s = randomSeed();
    fi.manualSeed(s);
    const a1 = canonical(fi.randn([7], { dtype: "float64", device: CPU }));
    const a2 = canonical(fi.rand([5], { dtype: "float64", device: CPU }));
    const a3 = canonical(fi.randn([1], { dtype: "float64", device: CPU }));
    const a4 = canonical(fi.randn([0], { dtype: "float64", device: CPU })); // advances nothing
    const a5 = canonical(fi.randn([9], { dtype: "float64", device: CPU }));
    fi.manualSeed(s);
    expect(canonical(fi.randn([7], { dtype: "float64", device: CPU }))).toEqual(a1);
    expect(canonical(fi.rand([5], { dtype: "float64", device: CPU }))).toEqual(a2);
    expect(canonical(fi.randn([1], { dtype: "float64", device: CPU }))).toEqual(a3);
    expect(a4).toEqual([]);
    expect(canonical(fi.randn([9], { dtype: "float64", device: CPU }))).toEqual(a5);
    // Offsets: ceil(7/4) = 2, ceil(5/4) = 2, ceil(1/4) = 1, 0 -> counters 0, 2, 4, 5.
    checkAgainstReference("normal", "float64", s, 0n, a1, "call 1");
    checkAgainstReference("uniform", "float64", s, 2n, a2, "call 2");
    checkAgainstReference("normal", "float64", s, 4n, a3, "call 3");
    checkAgainstReference("normal", "float64", s, 5n, a5, "call 5");
    // The first call is the seeded draw; the second continues it at element 8.
    expect(a1).toEqual(canonical(fi.randn([7], { seed: s, dtype: "float64", device: CPU })));
    expect(a2).toEqual(canonical(fi.rand([13], { seed: s, dtype: "float64", device: CPU })).slice(8));
    // A seeded call does not touch the global generator.
    fi.manualSeed(s);
    fi.randn([100], { seed: 1, device: CPU });
    expect(canonical(fi.randn([7], { dtype: "float64", device: CPU }))).toEqual(a1);
  });

  test("a different manualSeed gives a different sequence", () => {
    const s = randomSeed();
    fi.manualSeed(s);
    const a = canonical(fi.rand([64], { device: CPU }));
    fi.manualSeed(s ^ 0x10000n);
    const b = canonical(fi.rand([64], { device: CPU }));
    expect(a.filter((x, i) => x === b[i]).length).toBeLessThan(3);
    expect(randomValue("uniform", s, 0n, 0)).toBe(canonicalValue(a[0]!, "float32"));
  });
});

// ------------------------------------------------------------------ CUDA vs CPU

describe("CUDA random fills match the CPU bit for bit", () => {
  test.skipIf(!gpu)("every dtype, both distributions, odd and large sizes", () => {
    const seed = randomSeed();
    for (const dtype of fi.DTYPES) {
      for (const kind of ["normal", "uniform"] as Kind[]) {
        for (const n of [1, 7, 99, 1001, 1 << 20 | 3]) {
          if (n > 5000 && dtype !== "float32" && dtype !== "float16") continue;
          const g = draw(kind, [n], { seed, dtype, device: CUDA });
          expect(g.device).toBe(CUDA);
          const c = draw(kind, [n], { seed, dtype, device: CPU });
          const gc = canonical(g), cc = canonical(c);
          let bad = 0;
          for (let i = 0; i < n; ++i) if (!Object.is(gc[i], cc[i])) bad++;
          expect(`${kind} ${dtype} [${n}]: ${bad} differ`).toBe(`${kind} ${dtype} [${n}]: 0 differ`);
          g.dispose();
          c.dispose();
        }
      }
    }
  });

  test.skipIf(!gpu)("CUDA float64 values match the reference; 1e6 CUDA samples have the right moments", () => {
    const seed = randomSeed();
    const n = 100_003;
    for (const kind of ["normal", "uniform"] as Kind[]) {
      checkAgainstReference(kind, "float64", seed, 0n, canonical(draw(kind, [n], { seed, dtype: "float64", device: CUDA })), `cuda ${kind}`);
    }
    const x = draw("normal", [1_000_000], { seed, device: CUDA }).toArray() as Float32Array;
    let s1 = 0, s2 = 0;
    for (const v of x) { s1 += v; s2 += v * v; }
    expect(Math.abs(s1 / x.length)).toBeLessThan(5e-3);
    expect(Math.abs(s2 / x.length - 1)).toBeLessThan(7.1e-3);
  });

  test.skipIf(!gpu)("the global generator gives the same stream on CUDA and CPU", () => {
    const s = randomSeed();
    fi.manualSeed(s);
    const g1 = canonical(fi.randn([1001], { device: CUDA }));
    const g2 = canonical(fi.rand([7], { device: CUDA }));
    fi.manualSeed(s);
    const c1 = canonical(fi.randn([1001], { device: CPU }));
    const c2 = canonical(fi.rand([7], { device: CPU }));
    expect(g1).toEqual(c1);
    expect(g2).toEqual(c2);
  });
});

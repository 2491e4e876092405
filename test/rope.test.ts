// Rope family (applyRope, applyRopePosIds, applyLlama31Rope, applyLlama31RopePosIds, their
// in-place forms, applyRopeWithCosSinCache) against float64 references on fresh random inputs:
// every dtype, head dims 64/128/256 and 80 with rotaryDim 32, partial rotaryDim, nnz 1/7/99,
// ragged batches with empty requests, positions up to 100000, interleave on and off, Llama 3.1
// parameters, strided token rows, int32 and int64 indices, poisoned outputs (NaN never passes),
// in place vs out of place, and bad input (FlashInferError naming the argument, nothing
// written). CUDA results are also compared with the CPU backend on the same inputs.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectFlashInferError, gpu, randomValues, testOnDevices } from "./helpers.ts";
import { raggedPositions, ropeFrequencies, ropeReference } from "./reference/rope.ts";

type RDType = "float32" | "float16" | "bfloat16";
const DTYPES: RDType[] = ["float32", "float16", "bfloat16"];
const ROUNDING: Record<RDType, number> = { float32: 2 ** -24, float16: 2 ** -11, bfloat16: 2 ** -8 };
const SUBNORMAL: Record<RDType, number> = { float32: 0, float16: 2 ** -25, bfloat16: 0 };
const SCALE = 4;

/** A [nnz, heads, headDim] tensor holding `values`; strided: token rows padded (NaN in the gaps). */
function placed(values: number[], shape: number[], dtype: RDType, device: fi.Device, strided: boolean): fi.Tensor {
  const src = fi.tensor(values, shape, { dtype, device });
  if (!strided) return src;
  const base = fi.full([shape[0]!, shape[1]! + 1, shape[2]! + 8], NaN, { dtype, device });
  const a = base.slice(1, 1, shape[1]! + 1);
  const view = a.slice(2, 0, shape[2]!);
  base.dispose();
  a.dispose();
  view.copy_(src);
  src.dispose();
  return view;
}

const valuesOf = (t: fi.Tensor): Float64Array => Float64Array.from(t.toFloat32Array());

/** |got - want| <= slack * (u |want| + atol) + subnormal; NaN never passes. */
function expectNear(got: fi.Tensor | Float32Array, want: ArrayLike<number>, dtype: RDType, what: string, slack = 1, atol = 0): void {
  const g = got instanceof fi.Tensor ? got.toFloat32Array() : got;
  expect(g.length).toBe(want.length);
  for (let i = 0; i < g.length; ++i) {
    const a = g[i]!, e = want[i]!;
    const tol = slack * ((ROUNDING[dtype] * (1 + 1e-9)) * Math.abs(e) + atol) + SUBNORMAL[dtype] + 1e-12;
    if (!(Number.isFinite(a) && Math.abs(a - e) <= tol)) throw new Error(`${what}: [${i}] = ${a}, expected ${e} (tolerance ${tol})`);
  }
}

function expectSame(a: fi.Tensor, b: fi.Tensor, what: string): void {
  const x = a.toFloat32Array(), y = b.toFloat32Array();
  expect(x.length).toBe(y.length);
  for (let i = 0; i < x.length; ++i) if (!(x[i] === y[i])) throw new Error(`${what}: [${i}] = ${x[i]} vs ${y[i]}`);
}

const randomPositions = (n: number, max = 100000) => Array.from({ length: n }, () => Math.floor(Math.random() * (max + 1)));

/** A ragged batch of nnz tokens in `batch` requests, some empty; offsets up to 1e5. */
function randomBatch(nnz: number, batch: number): { indptr: number[]; offsets: number[] } {
  const cuts = Array.from({ length: batch - 1 }, () => Math.floor(Math.random() * (nnz + 1))).sort((a, b) => a - b);
  const indptr = [0, ...cuts, nnz];
  if (batch >= 3) indptr[2] = indptr[1]!; // an empty request
  return { indptr, offsets: Array.from({ length: batch }, () => Math.floor(Math.random() * 100000)) };
}

interface Case {
  dtype: RDType;
  nnz: number;
  hq: number;
  hk: number;
  headDim: number;
  rotaryDim?: number;
  interleave?: boolean;
  llama31?: boolean;
  opts?: Record<string, number>;
  strided?: boolean;
  ragged?: boolean;
  int64?: boolean;
}

const LLAMA_DEFAULTS = { ropeScale: 8, ropeTheta: 5e5, lowFreqFactor: 1, highFreqFactor: 4, oldContextLen: 8192 };

/**
 * Runs one case: out-of-place result vs the float64 reference (and, on cuda, vs the CPU backend
 * on the same inputs), the in-place form vs the out-of-place one (same bits), inputs untouched
 * by the out-of-place form.
 */
function checkCase(device: fi.Device, c: Case): void {
  const { dtype, nnz, hq, hk, headDim } = c;
  const rotaryDim = c.rotaryDim ?? headDim, interleave = c.interleave ?? false;
  const what = `${c.llama31 ? "llama31 " : ""}${c.ragged ? "ragged" : "posIds"} ${dtype} nnz=${nnz} heads=${hq}/${hk} headDim=${headDim} rotaryDim=${rotaryDim} interleave=${interleave}${c.strided ? " strided" : ""}${c.int64 ? " int64" : ""} on ${device}`;
  const owned: fi.Tensor[] = [];
  try {
    const q = placed(randomValues(nnz * hq * headDim, SCALE), [nnz, hq, headDim], dtype, device, c.strided ?? false);
    const k = placed(randomValues(nnz * hk * headDim, SCALE), [nnz, hk, headDim], dtype, device, c.strided ?? false);
    owned.push(q, k);
    const qv = valuesOf(q), kv = valuesOf(k);
    const base = c.llama31 ? { ...LLAMA_DEFAULTS, ...c.opts } : { ropeScale: 1, ropeTheta: 1e4, ...c.opts };
    const opts = { ...(c.rotaryDim !== undefined ? { rotaryDim } : {}), ...(c.interleave !== undefined ? { interleave } : {}), ...c.opts };
    const freq = ropeFrequencies(rotaryDim, base.ropeScale, base.ropeTheta, c.llama31 ? base as typeof LLAMA_DEFAULTS : undefined);
    let positions: number[];
    let call: (qq: fi.Tensor, kk: fi.Tensor, inplace: boolean) => { q: fi.Tensor; k: fi.Tensor } | void;
    const idx = (v: number[]) => {
      const t = fi.tensor(c.int64 ? BigInt64Array.from(v.map(BigInt)) as unknown as number[] : Int32Array.from(v), [v.length], { dtype: c.int64 ? "int64" : "int32", device });
      owned.push(t);
      return t;
    };
    if (c.ragged) {
      const { indptr, offsets } = randomBatch(nnz, Math.min(nnz + 1, 5));
      positions = raggedPositions(indptr, offsets);
      const ip = idx(indptr), off = idx(offsets);
      call = (qq, kk, inplace) => c.llama31
        ? (inplace ? fi.applyLlama31RopeInplace(qq, kk, ip, off, opts) : fi.applyLlama31Rope(qq, kk, ip, off, opts))
        : (inplace ? fi.applyRopeInplace(qq, kk, ip, off, opts) : fi.applyRope(qq, kk, ip, off, opts));
    } else {
      positions = randomPositions(nnz);
      const pos = idx(positions);
      call = (qq, kk, inplace) => c.llama31
        ? (inplace ? fi.applyLlama31RopePosIdsInplace(qq, kk, pos, opts) : fi.applyLlama31RopePosIds(qq, kk, pos, opts))
        : (inplace ? fi.applyRopePosIdsInplace(qq, kk, pos, opts) : fi.applyRopePosIds(qq, kk, pos, opts));
    }
    const out = call(q, k, false) as { q: fi.Tensor; k: fi.Tensor };
    owned.push(out.q, out.k);
    expect(out.q.shape).toEqual([nnz, hq, headDim]);
    expect(out.k.shape).toEqual([nnz, hk, headDim]);
    expect(out.q.dtype).toBe(dtype);
    expect(out.q.device).toBe(device);
    const refQ = ropeReference(qv, nnz, hq, headDim, rotaryDim, interleave, positions, freq);
    const refK = ropeReference(kv, nnz, hk, headDim, rotaryDim, interleave, positions, freq);
    // cuda: float32 math with rounded angles; cpu: float64, one rounding
    const slack = device === "cpu" ? 1 : 2, atol = device === "cpu" ? 0 : 2e-5 * SCALE;
    expectNear(out.q, refQ, dtype, `${what} (q)`, slack, atol);
    expectNear(out.k, refK, dtype, `${what} (k)`, slack, atol);
    // inputs untouched by the out-of-place form
    expect(valuesOf(q)).toEqual(qv);
    expect(valuesOf(k)).toEqual(kv);
    if (device !== "cpu") {
      const qc = q.to("cpu"), kc = k.to("cpu");
      owned.push(qc, kc);
      // the CPU backend on the same inputs and positions
      const pos = fi.tensor(Int32Array.from(positions), [nnz], { dtype: "int32", device: "cpu" });
      owned.push(pos);
      const cpu = c.llama31 ? fi.applyLlama31RopePosIds(qc, kc, pos, opts) : fi.applyRopePosIds(qc, kc, pos, opts);
      owned.push(cpu.q, cpu.k);
      expectNear(out.q, cpu.q.toFloat32Array(), dtype, `${what} (q, cuda vs cpu)`, 2, 2e-5 * SCALE);
      expectNear(out.k, cpu.k.toFloat32Array(), dtype, `${what} (k, cuda vs cpu)`, 2, 2e-5 * SCALE);
    }
    // in place gives the same bits as out of place
    expect(call(q, k, true)).toBeUndefined();
    expectSame(q, out.q, `${what} (q, in place vs out of place)`);
    expectSame(k, out.k, `${what} (k, in place vs out of place)`);
  } finally {
    for (const t of owned) t.dispose();
  }
}

const HEADS: [number, number | undefined][] = [[64, undefined], [128, undefined], [256, undefined], [80, 32]];

describe("rope: sizes and dtypes", () => {
  for (const dtype of DTYPES) {
    for (const llama31 of [false, true]) {
      testOnDevices(`${llama31 ? "applyLlama31RopePosIds" : "applyRopePosIds"} ${dtype}: headDim 64/128/256/80(rotary 32) x nnz 1/7/99 x interleave`, (device) => {
        for (const [headDim, rotaryDim] of HEADS) {
          for (const nnz of [1, 7, 99]) {
            for (const interleave of [false, true]) checkCase(device, { dtype, nnz, hq: 4, hk: 2, headDim, rotaryDim, interleave, llama31 });
          }
        }
      });
      testOnDevices(`${llama31 ? "applyLlama31Rope" : "applyRope"} ${dtype}: ragged batches with empty requests`, (device) => {
        for (const [headDim, rotaryDim] of HEADS) {
          for (const nnz of [1, 7, 99]) {
            for (const interleave of [false, true]) checkCase(device, { dtype, nnz, hq: 3, hk: 1, headDim, rotaryDim, interleave, llama31, ragged: true });
          }
        }
      });
    }
  }
});

describe("rope: options and layouts", () => {
  testOnDevices("partial rotaryDim, ropeScale / ropeTheta, llama31 parameters", (device) => {
    for (const dtype of DTYPES) {
      for (const interleave of [false, true]) {
        checkCase(device, { dtype, nnz: 7, hq: 2, hk: 2, headDim: 128, rotaryDim: 64, interleave });
        checkCase(device, { dtype, nnz: 7, hq: 2, hk: 1, headDim: 128, rotaryDim: 96, interleave, opts: { ropeScale: 2.5, ropeTheta: 5e5 } });
        checkCase(device, { dtype, nnz: 9, hq: 2, hk: 1, headDim: 64, rotaryDim: 2, interleave, ragged: true });
        checkCase(device, { dtype, nnz: 7, hq: 2, hk: 1, headDim: 128, rotaryDim: 64, interleave, llama31: true,
          opts: { ropeScale: 32, ropeTheta: 1e4, lowFreqFactor: 2, highFreqFactor: 8, oldContextLen: 4096 } });
        checkCase(device, { dtype, nnz: 7, hq: 2, hk: 1, headDim: 256, interleave, llama31: true, ragged: true, opts: { ropeScale: 4 } });
      }
    }
  });
  testOnDevices("strided token rows and int64 indices", (device) => {
    for (const dtype of DTYPES) {
      for (const ragged of [false, true]) {
        checkCase(device, { dtype, nnz: 7, hq: 4, hk: 2, headDim: 128, strided: true, ragged });
        checkCase(device, { dtype, nnz: 99, hq: 2, hk: 1, headDim: 80, rotaryDim: 32, strided: true, ragged, interleave: true, llama31: true });
        checkCase(device, { dtype, nnz: 7, hq: 4, hk: 2, headDim: 64, int64: true, ragged });
      }
    }
  });
  testOnDevices("host index arrays and position 0 (identity)", (device) => {
    using q = fi.tensor(randomValues(3 * 2 * 64), [3, 2, 64], { dtype: "bfloat16", device });
    using k = fi.tensor(randomValues(3 * 64), [3, 1, 64], { dtype: "bfloat16", device });
    const r = fi.applyRopePosIds(q, k, [0, 0, 0]);
    expectSame(r.q, q, "position 0 keeps q");
    expectSame(r.k, k, "position 0 keeps k");
    const s = fi.applyRope(q, k, [0, 2, 3], [0, 0]);
    const t = fi.applyRopePosIds(q, k, new Int32Array([0, 1, 0]));
    expectSame(s.q, t.q, "ragged vs posIds (q)");
    expectSame(s.k, t.k, "ragged vs posIds (k)");
    for (const x of [r.q, r.k, s.q, s.k, t.q, t.k]) x.dispose();
  });
  testOnDevices("in place on a strided view writes nothing outside it", (device) => {
    for (const dtype of DTYPES) {
      const nnz = 7, h = 3, dim = 64;
      using base = fi.full([nnz, h + 1, dim + 8], NaN, { dtype, device });
      using view = base.slice(1, 1, h + 1).slice(2, 4, dim + 4);
      using src = fi.tensor(randomValues(nnz * h * dim), [nnz, h, dim], { dtype, device });
      view.copy_(src);
      using k = fi.tensor(randomValues(nnz * dim), [nnz, 1, dim], { dtype, device });
      fi.applyLlama31RopePosIdsInplace(view, k, randomPositions(nnz), { rotaryDim: 48, interleave: true });
      const all = base.toFloat32Array();
      for (let t = 0; t < nnz; ++t) {
        for (let hh = 0; hh < h + 1; ++hh) {
          for (let d = 0; d < dim + 8; ++d) {
            const v = all[(t * (h + 1) + hh) * (dim + 8) + d]!;
            const inside = hh >= 1 && d >= 4 && d < dim + 4;
            if (inside ? !Number.isFinite(v) : !Number.isNaN(v)) throw new Error(`${dtype} on ${device}: [${t}, ${hh}, ${d}] = ${v} (inside the view: ${inside})`);
          }
        }
      }
    }
  });
  testOnDevices("llama31 with ropeScale 1 equals plain rope with the same theta", (device) => {
    using q = fi.tensor(randomValues(9 * 4 * 128), [9, 4, 128], { dtype: "float32", device });
    using k = fi.tensor(randomValues(9 * 2 * 128), [9, 2, 128], { dtype: "float32", device });
    const pos = randomPositions(9);
    const a = fi.applyLlama31RopePosIds(q, k, pos, { ropeScale: 1, ropeTheta: 5e5 });
    const b = fi.applyRopePosIds(q, k, pos, { ropeTheta: 5e5 });
    expectNear(a.q, b.q.toFloat32Array(), "float32", "llama31 scale 1 vs rope (q)", 2, 1e-5);
    expectNear(a.k, b.k.toFloat32Array(), "float32", "llama31 scale 1 vs rope (k)", 2, 1e-5);
    for (const x of [a.q, a.k, b.q, b.k]) x.dispose();
  });
  test("the Llama 3.1 reference frequencies cover all three bands", () => {
    const plain = ropeFrequencies(128, 1, 5e5), scaled = ropeFrequencies(128, 8, 5e5);
    const f = ropeFrequencies(128, 8, 5e5, LLAMA_DEFAULTS);
    let kept = 0, divided = 0, smoothed = 0;
    for (let i = 0; i < 64; ++i) {
      expect(plain[i]).toBeCloseTo(5e5 ** (-i / 64), 15);
      if (f[i] === plain[i]) kept++;
      else if (Math.abs(f[i]! - scaled[i]!) <= 1e-18) divided++;
      else if (f[i]! < plain[i]! && f[i]! > scaled[i]!) smoothed++;
    }
    expect(kept).toBeGreaterThan(0);
    expect(divided).toBeGreaterThan(0);
    expect(smoothed).toBeGreaterThan(0);
    expect(kept + divided + smoothed).toBe(64);
  });
  testOnDevices("empty batches do nothing", (device) => {
    using q = fi.empty([0, 4, 64], { dtype: "bfloat16", device });
    using k = fi.empty([0, 2, 64], { dtype: "bfloat16", device });
    const r = fi.applyRope(q, k, [0, 0, 0], [5, 7]);
    expect(r.q.shape).toEqual([0, 4, 64]);
    r.q.dispose();
    r.k.dispose();
    fi.applyRopePosIdsInplace(q, k, []);
  });
});

describe("rope: applyRopeWithCosSinCache", () => {
  testOnDevices("vLLM cos/sin cache vs the reference, 2-D and 3-D query, isNeox on and off", (device) => {
    for (const dtype of DTYPES) {
      for (const [headSize, rotaryDim] of [[128, 128], [64, 32], [80, 32], [256, 256]] as [number, number][]) {
        for (const isNeox of [true, false]) {
          for (const nnz of [1, 7, 99]) {
            for (const threeD of [false, true]) {
              const maxPos = 5000, hq = 3, hk = 2;
              const freq = ropeFrequencies(rotaryDim, 1, 1e4);
              const cache = new Float32Array(maxPos * rotaryDim);
              for (let p = 0; p < maxPos; ++p) {
                for (let i = 0; i < rotaryDim / 2; ++i) {
                  cache[p * rotaryDim + i] = Math.cos(p * freq[i]!);
                  cache[p * rotaryDim + rotaryDim / 2 + i] = Math.sin(p * freq[i]!);
                }
              }
              const positions = randomPositions(nnz, maxPos - 1);
              using cs = fi.tensor(cache, [maxPos, rotaryDim], { dtype: "float32", device });
              using q = fi.tensor(randomValues(nnz * hq * headSize), threeD ? [nnz, hq, headSize] : [nnz, hq * headSize], { dtype, device });
              using k = fi.tensor(randomValues(nnz * hk * headSize), threeD ? [nnz, hk, headSize] : [nnz, hk * headSize], { dtype, device });
              using pos = fi.tensor(BigInt64Array.from(positions.map(BigInt)) as unknown as number[], [nnz], { dtype: "int64", device });
              const what = `cosSinCache ${dtype} headSize=${headSize} rotaryDim=${rotaryDim} isNeox=${isNeox} nnz=${nnz} ${threeD ? "3-D" : "2-D"} on ${device}`;
              const r = fi.applyRopeWithCosSinCache(pos, q, k, headSize, cs, { isNeox });
              try {
                expect(r.query.shape).toEqual(q.shape);
                expect(r.key.shape).toEqual(k.shape);
                const cosSin = (t: number, i: number): [number, number] => [cache[positions[t]! * rotaryDim + i]!, cache[positions[t]! * rotaryDim + rotaryDim / 2 + i]!];
                const refQ = ropeReference(valuesOf(q), nnz, hq, headSize, rotaryDim, !isNeox, positions, null, cosSin);
                const refK = ropeReference(valuesOf(k), nnz, hk, headSize, rotaryDim, !isNeox, positions, null, cosSin);
                const slack = device === "cpu" ? 1 : 2, atol = device === "cpu" ? 0 : 1e-5 * 4;
                expectNear(r.query, refQ, dtype, `${what} (query)`, slack, atol);
                expectNear(r.key, refK, dtype, `${what} (key)`, slack, atol);
                if (device !== "cpu") {
                  const [pc, qc, kc, cc] = [pos, q, k, cs].map((t) => t.to("cpu")) as [fi.Tensor, fi.Tensor, fi.Tensor, fi.Tensor];
                  const cpu = fi.applyRopeWithCosSinCache(pc, qc, kc, headSize, cc, { isNeox });
                  expectNear(r.query, cpu.query.toFloat32Array(), dtype, `${what} (query, cuda vs cpu)`, 2, 4e-5);
                  expectNear(r.key, cpu.key.toFloat32Array(), dtype, `${what} (key, cuda vs cpu)`, 2, 4e-5);
                  for (const t of [pc, qc, kc, cc, cpu.query, cpu.key]) t.dispose();
                }
              } finally {
                r.query.dispose();
                r.key.dispose();
              }
            }
          }
        }
      }
    }
  });
});

describe("rope: bad input", () => {
  testOnDevices("throws naming the argument and writes nothing", (device) => {
    using q = fi.tensor(randomValues(4 * 2 * 16), [4, 2, 16], { dtype: "bfloat16", device });
    using k = fi.tensor(randomValues(4 * 16), [4, 1, 16], { dtype: "bfloat16", device });
    const q0 = q.toFloat32Array(), k0 = k.toFloat32Array();
    using kF16 = fi.zeros([4, 1, 16], { dtype: "float16", device });
    using k5 = fi.zeros([5, 1, 16], { dtype: "bfloat16", device });
    using k8 = fi.zeros([4, 1, 8], { dtype: "bfloat16", device });
    using qi = fi.zeros([4, 2, 16], { dtype: "int32", device });
    using q2 = fi.zeros([4, 32], { dtype: "bfloat16", device });
    using posF = fi.zeros([4], { dtype: "float32", device });
    using pos64 = fi.zeros([4], { dtype: "int64", device });
    using ip64 = fi.tensor(BigInt64Array.from([0n, 4n]) as unknown as number[], [2], { dtype: "int64", device });
    using cs = fi.zeros([10, 16], { dtype: "float32", device });
    using csOdd = fi.zeros([10, 15], { dtype: "float32", device });
    using csF16 = fi.zeros([10, 16], { dtype: "float16", device });
    using colBase = fi.zeros([16, 2, 4], { dtype: "bfloat16", device });
    const qT = colBase.permute([2, 1, 0]); // last dimension not contiguous
    const pos = [0, 1, 2, 3];
    const cases: [string, () => unknown, RegExp][] = [
      ["posIds length", () => fi.applyRopePosIds(q, k, [0, 1, 2]), /posIds/],
      ["posIds dtype", () => fi.applyRopePosIdsInplace(q, k, posF), /posIds/],
      ["indptr/offsets length mismatch", () => fi.applyRope(q, k, [0, 2, 4], [0]), /offsets/],
      ["indptr last entry", () => fi.applyRopeInplace(q, k, [0, 2, 3], [0, 0]), /indptr/],
      ["indptr start", () => fi.applyRope(q, k, [1, 4], [0]), /indptr/],
      ["indptr decreasing", () => fi.applyLlama31Rope(q, k, [0, 3, 2, 4], [0, 0, 0]), /indptr/],
      ["indptr / offsets dtype", () => fi.applyRope(q, k, ip64, [0]), /offsets.*dtype/],
      ["rotaryDim odd", () => fi.applyRopePosIds(q, k, pos, { rotaryDim: 7 }), /rotaryDim/],
      ["rotaryDim > headDim", () => fi.applyRopePosIds(q, k, pos, { rotaryDim: 18 }), /rotaryDim/],
      ["rotaryDim 0", () => fi.applyLlama31RopePosIds(q, k, pos, { rotaryDim: 0 }), /rotaryDim/],
      ["k dtype", () => fi.applyRopePosIds(q, kF16, pos), /k: dtype/],
      ["k tokens", () => fi.applyRopePosIds(q, k5, pos), /k:/],
      ["k headDim", () => fi.applyRopePosIds(q, k8, pos), /k:/],
      ["integer q", () => fi.applyRopePosIds(qi, k, pos), /q/],
      ["q 2-D", () => fi.applyRopePosIds(q2, k, pos), /q/],
      ["q last dimension strided", () => fi.applyRopePosIdsInplace(qT, k, pos64), /q.*contiguous/],
      ["ropeScale 0", () => fi.applyRopePosIdsInplace(q, k, pos, { ropeScale: 0 }), /rope_scale|ropeScale/],
      ["ropeTheta NaN", () => fi.applyRopePosIdsInplace(q, k, pos, { ropeTheta: NaN }), /ropeTheta/],
      ["interleave not a boolean", () => fi.applyRopePosIdsInplace(q, k, pos, { interleave: 1 as unknown as boolean }), /interleave/],
      ["llama31 factors", () => fi.applyLlama31RopePosIdsInplace(q, k, pos, { lowFreqFactor: 4, highFreqFactor: 4 }), /high_freq_factor/],
      ["llama31 oldContextLen", () => fi.applyLlama31RopeInplace(q, k, [0, 4], [0], { oldContextLen: -1 }), /old_context_len/],
      ["not a tensor", () => fi.applyRopePosIds(q, null as unknown as fi.Tensor, pos), /k/],
      ["cache position out of range", () => fi.applyRopeWithCosSinCache([0, 1, 2, 10], q, k, 16, cs), /positions/],
      ["cache rotary dim odd", () => fi.applyRopeWithCosSinCache(pos, q, k, 16, csOdd), /cos_sin_cache/],
      ["cache dtype", () => fi.applyRopeWithCosSinCache(pos, q, k, 16, csF16), /cos_sin_cache.*dtype/],
      ["headSize", () => fi.applyRopeWithCosSinCache(pos, q2, k, 12, cs), /query/],
      ["positions length", () => fi.applyRopeWithCosSinCache([0, 1], q, k, 16, cs), /positions/],
    ];
    for (const [name, fn, pattern] of cases) {
      try {
        expectFlashInferError(fn, "invalid_argument", pattern);
      } catch (e) {
        throw new Error(`${name}: ${(e as Error).message}`);
      }
    }
    expect(q.toFloat32Array()).toEqual(q0);
    expect(k.toFloat32Array()).toEqual(k0);
    qT.dispose();
  });
  test("cpu checks cache positions held in a tensor", () => {
    using q = fi.zeros([2, 1, 16], { dtype: "float32", device: "cpu" });
    using cs = fi.zeros([10, 16], { dtype: "float32", device: "cpu" });
    using p = fi.tensor(Int32Array.from([3, 10]), [2], { dtype: "int32", device: "cpu" });
    expectFlashInferError(() => fi.applyRopeWithCosSinCache(p, q, q, 16, cs), "invalid_argument", /positions\[1\] = 10/);
    using ip = fi.tensor(Int32Array.from([0, 1]), [2], { dtype: "int32", device: "cpu" });
    using off = fi.tensor(Int32Array.from([0]), [1], { dtype: "int32", device: "cpu" });
    expectFlashInferError(() => fi.applyRope(q, q, ip, off), "invalid_argument", /indptr: last entry/);
  });
  test.skipIf(!gpu)("device mismatch names the argument", () => {
    using q = fi.zeros([2, 1, 16], { dtype: "float32", device: "cuda:0" });
    using kc = fi.zeros([2, 1, 16], { dtype: "float32", device: "cpu" });
    using posc = fi.zeros([2], { dtype: "int32", device: "cpu" });
    expectFlashInferError(() => fi.applyRopePosIds(q, kc, [0, 1]), "invalid_argument", /k: on cpu/);
    expectFlashInferError(() => fi.applyRopePosIds(q, q, posc), "invalid_argument", /posIds: on cpu/);
  });
});

// Sampling family against float64 references. Samplers are tested statistically: many draws of
// one row (through `indices`) against the exact filtered-and-renormalized distribution, by a
// chi-square test at significance 1e-6 with fixed seeds, and no draw ever outside the kept set
// (probability-0 tokens included). Renorm, mask and softmax outputs match float64 references.
// Also: seeds reproduce, per-request parameters, vocab sizes 1 / 111 / 32000 / 128256 and batch
// 1 / 99 / 989 (a few draws at the large sizes), chain speculative sampling, and bad input.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { draws, expectClose, expectFlashInferError, gpu, testOnDevices, withContext } from "./helpers.ts";
import {
  type FilterSpec, chiSquare, chiSquareCritical, filteredDistribution, keptMask, renormReference, softmaxReference, topKMaskReference,
} from "./reference/sampling.ts";

/** A probability row of `n` distinct-ish values with `zeros` zero entries, normalized in float32. */
function randomProbs(n: number, zeros = 0, sharp = 1): Float32Array {
  const w = Array.from({ length: n }, () => Math.exp(sharp * 2 * (Math.random() * 2 - 1)));
  for (let z = 0; z < zeros && z < n - 1; ++z) w[(z * 7 + 3) % n] = 0;
  const s = w.reduce((a, b) => a + b, 0);
  return Float32Array.from(w, (x) => x / s);
}

/** Rows of float32 probabilities on `device`; the returned values are what the tensor holds. */
function probsTensor(rows: Float32Array[], device: fi.Device): fi.Tensor {
  const flat = new Float32Array(rows.length * rows[0]!.length);
  rows.forEach((r, i) => flat.set(r, i * r.length));
  return fi.tensor(flat, [rows.length, rows[0]!.length], { device });
}

/** The int32 elements of a tensor as numbers. */
const ints = (t: fi.Tensor): number[] => Array.from(t.toArray() as Int32Array);

type Sampler = (probs: fi.Tensor, opts: fi.SamplingOptions) => fi.Tensor;

/** The sampler a top-k / top-p filter spec names, and a label for it. */
function samplerFor(spec: FilterSpec): [string, FilterSpec, Sampler] {
  const { topK: k, topP: p, topKFirst } = spec;
  if (k !== undefined && p !== undefined)
    return [`${topKFirst ? "top_k_first" : "joint"} ${k} ${p}`, spec,
      (probs, o) => fi.topKTopPSamplingFromProbs(probs, k, p, { ...o, filterApplyOrder: topKFirst ? "top_k_first" : "joint" })];
  if (k !== undefined) return [`topK ${k}`, spec, (probs, o) => fi.topKSamplingFromProbs(probs, k, o)];
  return [`topP ${p}`, spec, (probs, o) => fi.topPSamplingFromProbs(probs, p!, o)];
}

/** Draws `count` tokens from one row (via indices) and checks them against `dist`. */
function checkStatistics(device: fi.Device, what: string, row: Float32Array, sampler: Sampler, dist: number[], count = draws(20000), seed = 7): void {
  withContext(`${what} on ${device}`, () => {
    using probs = probsTensor([row], device);
    using tokens = sampler(probs, { seed, indices: new Int32Array(count) });
    const ids = tokens.toArray() as Int32Array;
    const counts = new Array<number>(row.length).fill(0);
    for (const t of ids) {
      if (!(t >= 0 && t < row.length)) throw new Error(`token ${t} outside [0, ${row.length})`);
      if (!(dist[t]! > 0)) throw new Error(`token ${t} drawn, but its filtered probability is 0 (p = ${row[t]})`);
      ++counts[t]!;
    }
    const { stat, df } = chiSquare(counts, dist);
    const crit = chiSquareCritical(df);
    if (!(stat <= crit)) throw new Error(`chi-square ${stat.toFixed(1)} > ${crit.toFixed(1)} (df ${df})`);
  });
}

const FILTERS: [string, FilterSpec, Sampler][] = [
  ["samplingFromProbs", {}, (p, o) => fi.samplingFromProbs(p, o)],
  ["topPSamplingFromProbs 0.7", { topP: 0.7 }, (p, o) => fi.topPSamplingFromProbs(p, 0.7, o)],
  ["topPSamplingFromProbs 1", { topP: 1 }, (p, o) => fi.topPSamplingFromProbs(p, 1, o)],
  ["topKSamplingFromProbs 5", { topK: 5 }, (p, o) => fi.topKSamplingFromProbs(p, 5, o)],
  ["topKSamplingFromProbs 1", { topK: 1 }, (p, o) => fi.topKSamplingFromProbs(p, 1, o)],
  ["minPSamplingFromProbs 0.3", { minP: 0.3 }, (p, o) => fi.minPSamplingFromProbs(p, 0.3, o)],
  ["topKTopPSamplingFromProbs 8 0.6 joint", { topK: 8, topP: 0.6 }, (p, o) => fi.topKTopPSamplingFromProbs(p, 8, 0.6, { ...o, filterApplyOrder: "joint" })],
  ["topKTopPSamplingFromProbs 8 0.6 top_k_first", { topK: 8, topP: 0.6, topKFirst: true }, (p, o) => fi.topKTopPSamplingFromProbs(p, 8, 0.6, o)],
  ["topKTopPSamplingFromProbs 3 0.99 joint", { topK: 3, topP: 0.99 }, (p, o) => fi.topKTopPSamplingFromProbs(p, 3, 0.99, { ...o, filterApplyOrder: "joint" })],
];

describe("sampling: statistics of filtered samplers", () => {
  for (const [name, spec, sampler] of FILTERS) {
    testOnDevices(name, (device) => {
      for (const [n, zeros] of [[23, 4], [111, 10]] as const) {
        const row = randomProbs(n, zeros);
        checkStatistics(device, `${name} vocab ${n}`, row, sampler, filteredDistribution(row, spec));
      }
    });
  }

  testOnDevices("samplingFromLogits and topKTopPSamplingFromLogits", (device) => {
    const logits = Float32Array.from({ length: 37 }, () => 3 * (Math.random() * 2 - 1));
    logits[5] = -Infinity;
    const p = softmaxReference(logits);
    const cases: [string, FilterSpec, Sampler][] = [
      ["samplingFromLogits", {}, (x, o) => fi.samplingFromLogits(x, o)],
      ["topKTopPSamplingFromLogits top_k_first", { topK: 10, topP: 0.5, topKFirst: true }, (x, o) => fi.topKTopPSamplingFromLogits(x, 10, 0.5, o)],
      ["topKTopPSamplingFromLogits joint", { topK: 10, topP: 0.5 }, (x, o) => fi.topKTopPSamplingFromLogits(x, 10, 0.5, { ...o, filterApplyOrder: "joint" })],
    ];
    for (const [name, spec, sampler] of cases) checkStatistics(device, name, logits, sampler, filteredDistribution(p, spec));
  });

  testOnDevices("per-request parameters (typed arrays and tensors)", (device) => {
    const row = randomProbs(31, 3);
    const n = draws(12000);
    const ks = Int32Array.from({ length: n }, (_, i) => (i % 2 ? 3 : 9));
    const ps = Float32Array.from({ length: n }, (_, i) => (i % 2 ? 0.3 : 0.8));
    using probs = probsTensor([row], device);
    using kT = fi.tensor(ks, [n], { device });
    for (const [name, run, specs] of [
      ["topK array", () => fi.topKSamplingFromProbs(probs, ks, { seed: 3, indices: new Int32Array(n) }), [{ topK: 9 }, { topK: 3 }]],
      ["topK tensor", () => fi.topKSamplingFromProbs(probs, kT, { seed: 4, indices: new Int32Array(n) }), [{ topK: 9 }, { topK: 3 }]],
      ["topP array", () => fi.topPSamplingFromProbs(probs, ps, { seed: 5, indices: new Int32Array(n) }), [{ topP: 0.8 }, { topP: 0.3 }]],
    ] as [string, () => fi.Tensor, FilterSpec[]][]) {
      withContext(`${name} on ${device}`, () => {
        using out = run();
        const ids = out.toArray() as Int32Array;
        for (const parity of [0, 1]) {
          const dist = filteredDistribution(row, specs[parity]!);
          const counts = new Array<number>(row.length).fill(0);
          for (let i = parity; i < n; i += 2) {
            if (!(dist[ids[i]!]! > 0)) throw new Error(`request ${i}: token ${ids[i]} outside the kept set`);
            ++counts[ids[i]!]!;
          }
          const { stat, df } = chiSquare(counts, dist);
          expect(stat).toBeLessThanOrEqual(chiSquareCritical(df));
        }
      });
    }
  });
});

describe("sampling: ties at the threshold are kept", () => {
  testOnDevices("top-k and top-p keep every token tied with the threshold", (device) => {
    const row = Float32Array.from([0.125, 0.25, 0, 0.25, 0.125, 0.25]);
    for (const [spec, run] of [
      [{ topK: 2 }, (p: fi.Tensor, o: fi.SamplingOptions) => fi.topKSamplingFromProbs(p, 2, o)],
      [{ topP: 0.3 }, (p: fi.Tensor, o: fi.SamplingOptions) => fi.topPSamplingFromProbs(p, 0.3, o)],
    ] as [FilterSpec, Sampler][]) {
      const dist = filteredDistribution(row, spec);
      expect(dist.map((x) => (x > 0 ? 1 : 0))).toEqual([0, 1, 0, 1, 0, 1]);
      checkStatistics(device, `ties ${JSON.stringify(spec)}`, row, run, dist, 6000);
    }
    using probs = fi.tensor(row, [1, 6], { device });
    expectClose(fi.topPRenormProbs(probs, 0.3).toFloat32Array(), [0, 1 / 3, 0, 1 / 3, 0, 1 / 3], 1e-7, 1e-6);
    expectClose(fi.topKRenormProbs(probs, 2).toFloat32Array(), [0, 1 / 3, 0, 1 / 3, 0, 1 / 3], 1e-7, 1e-6);
  });
});

describe("sampling: sizes, seeds, validity", () => {
  testOnDevices("vocab 1, 111, 32000, 128256 x batch 1, 99, 989: every token kept", (device) => {
    const sizes: [number, number][] = [[1, 1], [99, 1], [989, 1], [1, 111], [99, 111], [989, 111], [1, 32000], [99, 32000], [1, 128256], [989, 128256]];
    for (const [batch, vocab] of sizes) {
      withContext(`batch ${batch} vocab ${vocab} on ${device}`, () => {
        using logits = fi.randn([batch, vocab], { device, seed: batch * 7 + vocab });
        using scaled = fi.softmax(logits, { temperature: 0.5 });
        const check = Math.min(batch, 3); // rows checked against the reference (sorting is slow in JS)
        const host = scaled.toFloat32Array();
        const rowsOf = (i: number) => host.subarray(i * vocab, (i + 1) * vocab);
        const ops: [FilterSpec, () => fi.Tensor][] = [
          [{ topP: 0.9 }, () => fi.topPSamplingFromProbs(scaled, 0.9, { seed: 1 })],
          [{ topK: 40 }, () => fi.topKSamplingFromProbs(scaled, 40, { seed: 2 })],
        ];
        if (batch * vocab <= 4e6) {
          ops.push([{ minP: 0.1 }, () => fi.minPSamplingFromProbs(scaled, 0.1, { seed: 3 })]);
          ops.push([{ topK: 50, topP: 0.8 }, () => fi.topKTopPSamplingFromProbs(scaled, 50, 0.8, { seed: 4, filterApplyOrder: "joint" })]);
          ops.push([{ topK: 50, topP: 0.8, topKFirst: true }, () => fi.topKTopPSamplingFromProbs(scaled, 50, 0.8, { seed: 4 })]);
          ops.push([{}, () => fi.samplingFromLogits(logits, { seed: 5 })]);
        }
        for (const [spec, run] of ops) {
          using out = run();
          const ids = out.toArray() as Int32Array;
          expect(ids.length).toBe(batch);
          for (let b = 0; b < batch; ++b) {
            if (!(ids[b]! >= 0 && ids[b]! < vocab)) throw new Error(`${JSON.stringify(spec)}: request ${b} got ${ids[b]}`);
          }
          for (let b = 0; b < check; ++b) {
            const keep = keptMask(rowsOf(b), spec);
            if (!keep[ids[b]!]) throw new Error(`${JSON.stringify(spec)}: request ${b} drew ${ids[b]} outside the kept set`);
          }
        }
      });
    }
  });

  testOnDevices("the same seed and offset give the same tokens; other offsets differ", (device) => {
    using probs = fi.softmax(fi.randn([64, 1000], { device, seed: 11 }));
    const run = (seed: number, offset: number) => ints(fi.topPSamplingFromProbs(probs, 0.95, { seed, offset }));
    expect(run(5, 0)).toEqual(run(5, 0));
    expect(run(5, 32)).toEqual(run(5, 32));
    expect(run(5, 0)).not.toEqual(run(5, 4096));
    expect(run(5, 0)).not.toEqual(run(6, 0));
    // without a seed the generator advances
    expect(ints(fi.samplingFromProbs(probs))).not.toEqual(ints(fi.samplingFromProbs(probs)));
  });

  testOnDevices("per-request seeds and offsets: a request draws the same token whatever its row and batch", (device) => {
    const batch = 37, vocab = 4099;
    using logits = fi.randn([batch, vocab], { device, seed: 23 });
    using probs = fi.softmax(logits);
    // Keys above 2^53 and above 2^63 (an int64 tensor holds those as negative numbers).
    const seeds = Array.from({ length: batch }, (_, b) => (b % 3 === 0 ? 2n ** 63n + BigInt(b) * 977n : BigInt(b * 131 + 5)));
    const offsets = Array.from({ length: batch }, (_, b) => BigInt(b % 5) * 4096n + (b % 2 ? 2n ** 60n : 0n));
    const order = Array.from({ length: batch }, (_, b) => (b * 11) % batch); // a permutation: 11 and 37 are coprime
    const ops: [string, (opts: fi.SamplingOptions) => fi.Tensor][] = [
      ["samplingFromLogits", (o) => fi.samplingFromLogits(logits, o)],
      ["topKTopPSamplingFromProbs", (o) => fi.topKTopPSamplingFromProbs(probs, 40, 0.9, o)],
      ["topPSamplingFromProbs", (o) => fi.topPSamplingFromProbs(probs, 0.5, o)],
      ["minPSamplingFromProbs", (o) => fi.minPSamplingFromProbs(probs, 0.2, o)],
    ];
    for (const [name, op] of ops) {
      withContext(`${name} on ${device}`, () => {
        const together = ints(op({ seed: BigUint64Array.from(seeds), offset: offsets }));
        // Each request alone (batch 1, its key as the call's scalar), and all of them permuted, keys as a tensor.
        const alone = seeds.map((s, b) => ints(op({ seed: s, offset: offsets[b]!, indices: [b] }))[0]!);
        using seedT = fi.tensor(BigInt64Array.from(order.map((b) => BigInt.asIntN(64, seeds[b]!))), [batch], { device });
        const permuted = ints(op({ seed: seedT, offset: order.map((b) => offsets[b]!), indices: order }));
        expect(together).toEqual(alone);
        expect(permuted).toEqual(order.map((b) => together[b]!));
        // Per-request seeds with the call's offset: request b starts at offset + 16 b, as with one seed.
        const sameSeed = ints(op({ seed: new Array(batch).fill(9), offset: 64 }));
        expect(sameSeed).toEqual(ints(op({ seed: 9, offset: 64 })));
      });
    }
    // Bad keys: named, nothing sampled.
    expectFlashInferError(() => fi.samplingFromProbs(probs, { seed: [1, 2] }), "invalid_argument", /seed: expected 37 values/);
    expectFlashInferError(() => fi.samplingFromProbs(probs, { seed: 1, offset: new Array(batch).fill(-1) }), "invalid_argument", /offset\[0\]/);
    using wrong = fi.zeros([batch], { dtype: "int32", device });
    expectFlashInferError(() => fi.samplingFromProbs(probs, { seed: wrong }), "invalid_argument", /seeds: dtype must be int64/);
    using d = fi.softmax(fi.randn([2, 3, 10], { device, seed: 1 }).view([6, 10])).view([2, 3, 10]);
    using t = fi.softmax(fi.randn([2, 4, 10], { device, seed: 2 }).view([8, 10])).view([2, 4, 10]);
    expectFlashInferError(() => fi.chainSpeculativeSampling(d, [1, 2, 3, 4, 5, 6], t, { seed: [1, 2] }), "invalid_argument", /seed: expected a non-negative integer/);
  });
});

describe("sampling: softmax, renorm and mask against float64", () => {
  testOnDevices("softmax with scalar and per-row temperature", (device) => {
    for (const [rows, vocab] of [[1, 1], [7, 111], [99, 32000]] as const) {
      const x = Float32Array.from({ length: rows * vocab }, () => 8 * (Math.random() * 2 - 1));
      if (vocab > 1) x[3] = -Infinity;
      using logits = fi.tensor(x, [rows, vocab], { device });
      const temps = Float32Array.from({ length: rows }, (_, i) => 0.5 + i / rows);
      for (const t of [1, 0.7, temps] as const) {
        using out = fi.softmax(logits, { temperature: t });
        const want: number[] = [];
        for (let r = 0; r < rows; ++r) want.push(...softmaxReference(x.subarray(r * vocab, (r + 1) * vocab), typeof t === "number" ? t : t[r]!));
        withContext(`softmax [${rows}, ${vocab}] T=${typeof t === "number" ? t : "per-row"} on ${device}`, () => expectClose(out.toFloat32Array(), want, 1e-9, 2e-5));
      }
    }
  });

  testOnDevices("topPRenormProbs, topKRenormProbs and topKMaskLogits", (device) => {
    for (const [rows, vocab] of [[1, 1], [99, 111], [7, 32000], [1, 128256]] as const) {
      const host = Array.from({ length: rows }, () => randomProbs(vocab, vocab > 10 ? 5 : 0, 2));
      using probs = probsTensor(host, device);
      const flat = (f: (r: Float32Array, i: number) => number[]) => host.flatMap((r, i) => f(r, i));
      for (const p of [0.1, 0.5, 0.9, 1]) {
        using out = fi.topPRenormProbs(probs, p);
        withContext(`topPRenormProbs ${p} [${rows}, ${vocab}] on ${device}`, () =>
          expectClose(out.toFloat32Array(), flat((r) => renormReference(r, { topP: p })), 1e-9, 2e-5));
      }
      for (const k of [1, 5, 100, vocab + 3]) {
        using out = fi.topKRenormProbs(probs, k);
        withContext(`topKRenormProbs ${k} [${rows}, ${vocab}] on ${device}`, () =>
          expectClose(out.toFloat32Array(), flat((r) => renormReference(r, { topK: k })), 1e-9, 2e-5));
      }
      const ks = Int32Array.from({ length: rows }, (_, i) => 1 + ((i * 37) % Math.max(vocab, 1)));
      const x = Float32Array.from({ length: rows * vocab }, () => Math.round(8 * (Math.random() * 2 - 1) * 64) / 64); // ties
      using logits = fi.tensor(x, [rows, vocab], { device });
      for (const k of [3, ks] as const) {
        using out = fi.topKMaskLogits(logits, k);
        const want: number[] = [];
        for (let r = 0; r < rows; ++r) want.push(...topKMaskReference(x.subarray(r * vocab, (r + 1) * vocab), typeof k === "number" ? k : k[r]!));
        withContext(`topKMaskLogits [${rows}, ${vocab}] on ${device}`, () => expectClose(out.toFloat32Array(), want, 0, 0));
      }
    }
  });

  test.skipIf(!gpu)("cuda renorm equals the cpu backend (same kept set, but for a boundary element now and then)", () => {
    const rows = 33, V = 5000;
    const host = Array.from({ length: rows }, () => randomProbs(V, 20, 2));
    using c = probsTensor(host, "cpu");
    using g = probsTensor(host, "cuda:0");
    // The CUDA radix select sums exact bucket masses in float64, the CPU backend sums the row in
    // float64 in index order: an element whose cumulative mass sits within rounding of the
    // threshold may still be kept by one and not the other. Rows with the same kept set must
    // agree to rtol 2e-5; at most two rows may differ, each by one element.
    const compare = (got: Float32Array, want: Float32Array) => {
      let differing = 0;
      for (let r = 0; r < rows; ++r) {
        const gr = got.subarray(r * V, (r + 1) * V), wr = want.subarray(r * V, (r + 1) * V);
        let symdiff = 0;
        for (let i = 0; i < V; ++i) if ((gr[i] !== 0) !== (wr[i] !== 0)) ++symdiff;
        if (symdiff === 0) withContext(`row ${r}`, () => expectClose(gr, wr, 1e-9, 2e-5));
        else {
          expect(symdiff).toBe(1);
          ++differing;
        }
      }
      expect(differing).toBeLessThanOrEqual(2);
    };
    for (const p of [0.3, 0.95]) compare(fi.topPRenormProbs(g, p).toFloat32Array(), fi.topPRenormProbs(c, p).toFloat32Array());
    for (const k of [1, 20, 700]) compare(fi.topKRenormProbs(g, k).toFloat32Array(), fi.topKRenormProbs(c, k).toFloat32Array());
  });
});

describe("sampling: chain speculative sampling", () => {
  testOnDevices("accepts when draft equals target; rejects impossible drafts; -1 padding", (device) => {
    const V = 6, n = 3;
    const row = randomProbs(V);
    const same = new Float32Array(n * V), target = new Float32Array((n + 1) * V);
    for (let i = 0; i < n; ++i) same.set(row, i * V);
    for (let i = 0; i <= n; ++i) target.set(row, i * V);
    using d = fi.tensor(same, [1, n, V], { device });
    using t = fi.tensor(target, [1, n + 1, V], { device });
    const r = fi.chainSpeculativeSampling(d, [1, 2, 3], t, { seed: 1 });
    expect(ints(r.acceptedNum)).toEqual([n]);
    expect(ints(r.emittedNum)).toEqual([n]);
    const ids = r.outputTokenIds.toArray() as Int32Array;
    expect(Array.from(ids.subarray(0, n))).toEqual([1, 2, 3]);
    expect(ids[n]! >= 0 && ids[n]! < V).toBe(true);
    // draft puts all mass on token 3, target none: rejected at 0, replacement from the target
    const dd = new Float32Array(n * V), tt = new Float32Array((n + 1) * V);
    for (let i = 0; i < n; ++i) dd[i * V + 3] = 1;
    for (let i = 0; i <= n; ++i) tt[i * V + 0] = 1;
    using d2 = fi.tensor(dd, [1, n, V], { device });
    using t2 = fi.tensor(tt, [1, n + 1, V], { device });
    const r2 = fi.chainSpeculativeSampling(d2, [3, 3, 3], t2, { seed: 2 });
    expect(ints(r2.outputTokenIds)).toEqual([0, -1, -1, -1]);
    expect(ints(r2.acceptedNum)).toEqual([0]);
    expect(ints(r2.emittedNum)).toEqual([0]);
  });

  testOnDevices("the first output token follows the target distribution; first acceptance rate sum(min(p, q))", (device) => {
    const V = 12, n = 2, batch = 12000;
    const q = randomProbs(V), p = randomProbs(V);
    const dRows = new Float32Array(batch * n * V), tRows = new Float32Array(batch * (n + 1) * V);
    for (let b = 0; b < batch; ++b) {
      for (let i = 0; i < n; ++i) dRows.set(q, (b * n + i) * V);
      for (let i = 0; i <= n; ++i) tRows.set(p, (b * (n + 1) + i) * V);
    }
    // Draft tokens drawn from q (as a draft model would), so the output follows p exactly.
    const cdf = (u: number) => { let a = 0; for (let v = 0; v < V; ++v) { a += q[v]!; if (u < a) return v; } return V - 1; };
    const ids = Int32Array.from({ length: batch * n }, () => cdf(Math.random()));
    using d = fi.tensor(dRows, [batch, n, V], { device });
    using t = fi.tensor(tRows, [batch, n + 1, V], { device });
    const r = fi.chainSpeculativeSampling(d, ids, t, { seed: 9 });
    const out = r.outputTokenIds.toArray() as Int32Array;
    const acc = r.acceptedNum.toArray() as Int32Array, em = r.emittedNum.toArray() as Int32Array;
    const counts = new Array<number>(V).fill(0);
    for (let b = 0; b < batch; ++b) {
      expect(em[b]! <= acc[b]! && acc[b]! <= n).toBe(true);
      for (let i = 0; i <= n; ++i) {
        const x = out[b * (n + 1) + i]!;
        if (i < em[b]!) expect(x).toBe(ids[b * n + i]!);
        else if (i === em[b]!) expect(x >= 0 && x < V).toBe(true);
        else expect(x).toBe(-1);
      }
      ++counts[out[b * (n + 1)]!]!;
    }
    const { stat, df } = chiSquare(counts, Array.from(p));
    expect(stat).toBeLessThanOrEqual(chiSquareCritical(df));
    // A draft token drawn from q passes u < p/q with probability sum_v min(p_v, q_v).
    let want = 0;
    for (let v = 0; v < V; ++v) want += Math.min(p[v]!, q[v]!);
    const got = Array.from(em).filter((e) => e >= 1).length / batch;
    expect(Math.abs(got - want)).toBeLessThanOrEqual(4.5 * Math.sqrt((want * (1 - want)) / batch));
  });
});

describe("sampling: bad input", () => {
  testOnDevices("throws FlashInferError naming the argument", (device) => {
    using probs = probsTensor([randomProbs(10), randomProbs(10)], device);
    expectFlashInferError(() => fi.topKSamplingFromProbs(probs, 0), "invalid_argument", /topK/);
    expectFlashInferError(() => fi.topKSamplingFromProbs(probs, [1, 0]), "invalid_argument", /topK\[1\]/);
    expectFlashInferError(() => fi.topPSamplingFromProbs(probs, 0), "invalid_argument", /topP/);
    expectFlashInferError(() => fi.topPSamplingFromProbs(probs, 1.01), "invalid_argument", /topP/);
    expectFlashInferError(() => fi.topPSamplingFromProbs(probs, NaN), "invalid_argument", /topP/);
    expectFlashInferError(() => fi.minPSamplingFromProbs(probs, -0.1), "invalid_argument", /minP/);
    expectFlashInferError(() => fi.topPSamplingFromProbs(probs, [0.5, 0.5, 0.5]), "invalid_argument", /topP: expected 2/);
    using k3 = fi.tensor(new Int32Array([1, 2, 3]), [3], { device });
    expectFlashInferError(() => fi.topKSamplingFromProbs(probs, k3), "invalid_argument", /top_k: shape/);
    expectFlashInferError(() => fi.samplingFromProbs(probs, { indices: [0, 2] }), "invalid_argument", /indices/);
    expectFlashInferError(() => fi.topKTopPSamplingFromProbs(probs, 2, 0.5, { filterApplyOrder: "bogus" as never }), "invalid_argument", /filterApplyOrder/);
    expectFlashInferError(() => fi.softmax(probs, { temperature: 0 }), "invalid_argument", /temperature/);
    // a missing or null filter value is refused (it once sampled as k = 1, or threw a TypeError)
    for (const v of [undefined, null] as never[]) {
      expectFlashInferError(() => fi.topKSamplingFromProbs(probs, v), "invalid_argument", /topK: expected a number/);
      expectFlashInferError(() => fi.topKTopPSamplingFromProbs(probs, 2, v), "invalid_argument", /topP: expected a number/);
      expectFlashInferError(() => fi.minPSamplingFromProbs(probs, v), "invalid_argument", /minP: expected a number/);
      expectFlashInferError(() => fi.topKRenormProbs(probs, v), "invalid_argument", /topK: expected a number/);
      expectFlashInferError(() => fi.topPRenormProbs(probs, v), "invalid_argument", /topP: expected a number/);
      expectFlashInferError(() => fi.topKMaskLogits(probs, v), "invalid_argument", /topK: expected a number/);
    }
    using flat = fi.tensor(randomProbs(10), [10], { device });
    expectFlashInferError(() => fi.samplingFromProbs(flat), "invalid_argument", /probs: expected shape/);
    using half = fi.tensor(randomProbs(10), [1, 10], { device, dtype: "float16" });
    expectFlashInferError(() => fi.samplingFromProbs(half), "invalid_argument", /float32/);
    using d = fi.tensor(randomProbs(10), [1, 1, 10], { device });
    using t = fi.tensor(randomProbs(20), [1, 2, 10], { device });
    using tBad = fi.tensor(randomProbs(10), [1, 1, 10], { device });
    expectFlashInferError(() => fi.chainSpeculativeSampling(d, [10], t), "invalid_argument", /draftTokenIds/);
    expectFlashInferError(() => fi.chainSpeculativeSampling(d, [1], tBad), "invalid_argument", /targetProbs/);
  });

  test("cpu: negative, NaN and unnormalized probabilities, NaN logits, out-of-range index tensors", () => {
    const bad = (values: number[]) => fi.tensor(values, [1, values.length], { device: "cpu" });
    expectFlashInferError(() => fi.samplingFromProbs(bad([0.5, 0.6, -0.1])), "invalid_argument", /finite and >= 0/);
    expectFlashInferError(() => fi.topPSamplingFromProbs(bad([0.5, NaN, 0.5]), 0.5), "invalid_argument", /finite and >= 0/);
    expectFlashInferError(() => fi.topKSamplingFromProbs(bad([0.5, 0.6]), 1), "invalid_argument", /sum to 1/);
    expectFlashInferError(() => fi.topPRenormProbs(bad([0.2, 0.2]), 0.5), "invalid_argument", /sum to 1/);
    expectFlashInferError(() => fi.samplingFromLogits(bad([0, NaN])), "invalid_argument", /NaN/);
    expectFlashInferError(() => fi.samplingFromLogits(bad([-Infinity, -Infinity])), "invalid_argument", /no finite logit/);
    using ix = fi.tensor(new Int32Array([0, 5]), [2], { device: "cpu" });
    expectFlashInferError(() => fi.samplingFromProbs(bad([0.5, 0.5]), { indices: ix }), "invalid_argument", /indices/);
    using kt = fi.tensor(new Int32Array([0]), [1], { device: "cpu" });
    expectFlashInferError(() => fi.topKSamplingFromProbs(bad([0.5, 0.5]), kt), "invalid_argument", /top_k/);
    // Issue 16: the whole input is checked, also rows that indices do not sample, and
    // topKMaskLogits rejects what softmax rejects (+inf, NaN).
    using twoRows = fi.tensor([0.5, 0.5, 0.5, NaN], [2, 2], { device: "cpu" });
    expectFlashInferError(() => fi.samplingFromProbs(twoRows, { indices: [0, 0] }), "invalid_argument", /probs: row 1 holds nan/);
    expectFlashInferError(() => fi.topKMaskLogits(bad([0, Infinity, 1]), 1), "invalid_argument", /logits must not be NaN or \+inf/);
    expectFlashInferError(() => fi.topKMaskLogits(bad([0, NaN, 1]), 1), "invalid_argument", /NaN/);
    using masked = fi.topKMaskLogits(bad([0, -Infinity, 1]), 1);
    expect(Array.from(masked.toFloat32Array())).toEqual([-Infinity, -Infinity, 1]);
  });

  test.skipIf(!gpu)("cuda: bad values are not checked (no sync) but every token is valid", () => {
    const rows = [[0.5, NaN, 0.5, 0], [-1, -2, 0, 0], [NaN, NaN, NaN, NaN], [Infinity, 0.2, 0.1, 0], [0.1, 0.1, 0.1, 0.1]];
    using probs = fi.tensor(rows.flat(), [rows.length, 4], { device: "cuda:0" });
    using ix = fi.tensor(new Int32Array([0, 1, 2, 3, 4, 99, -3]), [7], { device: "cuda:0" });
    using kBad = fi.tensor(new Int32Array([0, -5, 1, 2, 3, 4, 5]), [7], { device: "cuda:0" });
    using pBad = fi.tensor(new Float32Array([0, -1, NaN, 2, 0.5, 1, 1]), [7], { device: "cuda:0" });
    for (const run of [
      () => fi.samplingFromProbs(probs, { indices: ix }),
      () => fi.topKSamplingFromProbs(probs, kBad, { indices: ix }),
      () => fi.topPSamplingFromProbs(probs, pBad, { indices: ix }),
      () => fi.minPSamplingFromProbs(probs, pBad, { indices: ix }),
      () => fi.topKTopPSamplingFromProbs(probs, kBad, pBad, { indices: ix }),
      () => fi.samplingFromLogits(probs, { indices: ix }),
    ]) {
      for (const t of run().toArray() as Int32Array) expect(t >= 0 && t < 4).toBe(true);
    }
  });
});

describe("sampling: cuda candidates in shared memory", () => {
  // The cuda kernels copy the entries of the histogram bucket that holds the threshold into shared
  // memory, each warp into its own share. These rows put every large entry where warp 0 reads
  // (elements 0..width-1 of each `period`; 16-byte and 4-byte loads), so such a copy overflows
  // warp 0's share and the kernel must go on reading the row (finer histograms, then a drawing pass).
  test.skipIf(!gpu)("crowded candidates: exact distributions, renorm and mask", () => {
    for (const [vocab, period, width] of [[40960, 2048, 128], [40961, 512, 32]] as const) {
      const w = Array.from({ length: vocab }, (_, i) => (i % period < width ? 9 + 2 * Math.random() : 0.5 + Math.random()));
      const s = w.reduce((a, b) => a + b, 0);
      const row = Float32Array.from(w, (x) => x / s);
      const cases: [string, FilterSpec, Sampler][] = [
        ["topK 20", { topK: 20 }, (p, o) => fi.topKSamplingFromProbs(p, 20, o)],
        ["topP 0.05", { topP: 0.05 }, (p, o) => fi.topPSamplingFromProbs(p, 0.05, o)],
        ["joint 200 0.05", { topK: 200, topP: 0.05 }, (p, o) => fi.topKTopPSamplingFromProbs(p, 200, 0.05, { ...o, filterApplyOrder: "joint" })],
        ["top_k_first 200 0.05", { topK: 200, topP: 0.05, topKFirst: true }, (p, o) => fi.topKTopPSamplingFromProbs(p, 200, 0.05, o)],
      ];
      for (const [name, spec, sampler] of cases) checkStatistics("cuda:0", `${name} vocab ${vocab}`, row, sampler, filteredDistribution(row, spec));
      using probs = probsTensor([row], "cuda:0");
      for (const k of [20, 300]) {
        using out = fi.topKRenormProbs(probs, k);
        withContext(`topKRenormProbs ${k} vocab ${vocab}`, () => expectClose(out.toFloat32Array(), renormReference(row, { topK: k }), 1e-9, 2e-5));
      }
      using outP = fi.topPRenormProbs(probs, 0.05);
      withContext(`topPRenormProbs 0.05 vocab ${vocab}`, () => expectClose(outP.toFloat32Array(), renormReference(row, { topP: 0.05 }), 1e-9, 2e-5));
      const x = Float32Array.from(w, (v) => Math.log(v));
      using logits = fi.tensor(x, [1, vocab], { device: "cuda:0" });
      using masked = fi.topKMaskLogits(logits, 20);
      withContext(`topKMaskLogits 20 vocab ${vocab}`, () => expectClose(masked.toFloat32Array(), topKMaskReference(x, 20), 0, 0));
    }
  });

  // The radix select keeps at most 8192 candidates in shared memory. These rows hold more kept
  // entries than that (the draw splits between the entries above the candidates and the
  // candidates), a level-0 bucket larger than the buffer (one more pass over the row refines it),
  // all-equal rows (the threshold is one key: no candidates, a drawing pass), one positive entry,
  // and k above the number of positive entries (everything kept after the first pass).
  test.skipIf(!gpu)("radix select: wide nuclei, refinement, ties, single entries", () => {
    /** 16 heavy tokens of 0.02 each, the rest of the mass on `vocab - 16` light tokens of weight light(). */
    const heavyLight = (vocab: number, light: () => number): Float32Array => {
      const heavy = (i: number) => i % Math.floor(vocab / 16) === 7;
      const w = Array.from({ length: vocab }, (_, i) => (heavy(i) ? 0 : light()));
      const s = w.reduce((a, b) => a + b, 0);
      return Float32Array.from(w, (x, i) => (heavy(i) ? 0.02 : (0.68 * x) / s));
    };
    // Light weights spread over many level-0 buckets (vocab 32000, 16-byte loads), and light
    // weights inside one bucket ([1, 1.125) times a power of two; vocab 30001, 4-byte loads).
    const wide = heavyLight(32000, () => Math.exp(Math.random() * 2 - 1));
    const narrow = Float32Array.from({ length: 30001 }, (_, i) => (i % 1875 === 7 ? 0.02 : 2 ** -16 * (1.04 + 0.04 * Math.random())));
    const samplers = [{ topP: 0.9 }, { topP: 0.5 }, { topK: 9000 }, { topK: 20000, topP: 0.8 }, { topK: 12000, topP: 0.8, topKFirst: true }].map(samplerFor);
    for (const [rowName, row] of [["wide", wide], ["narrow", narrow]] as const) {
      for (const [name, spec, sampler] of samplers) checkStatistics("cuda:0", `${name} ${rowName}`, row, sampler, filteredDistribution(row, spec));
      using probs = probsTensor([row], "cuda:0");
      for (const spec of [{ topP: 0.9 }, { topP: 0.5 }, { topK: 9000 }] as FilterSpec[]) {
        using out = spec.topK ? fi.topKRenormProbs(probs, spec.topK) : fi.topPRenormProbs(probs, spec.topP!);
        withContext(`renorm ${JSON.stringify(spec)} ${rowName}`, () => expectClose(out.toFloat32Array(), renormReference(row, spec), 1e-12, 2e-5));
      }
      const x = Float32Array.from(row, (v) => Math.log(v));
      using logits = fi.tensor(x, [1, row.length], { device: "cuda:0" });
      for (const k of [50, 9000]) {
        using masked = fi.topKMaskLogits(logits, k);
        withContext(`topKMaskLogits ${k} ${rowName}`, () => expectClose(masked.toFloat32Array(), topKMaskReference(x, k), 0, 0));
      }
    }
    // A bucket whose low key bits sum past 2^32 (the carry into the histogram's high word): 40
    // heavy tokens and 2^20 equal light ones in one level-0 bucket.
    {
      const vocab = (1 << 20) + 5;
      const long = new Float32Array(vocab).fill(0.2 / vocab);
      for (let i = 0; i < 40; ++i) long[(i * 26177 + 11) % vocab] = 0.02 * (1 + (i % 3) * 0.001);
      for (const [name, spec, sampler] of [{ topK: 20 }, { topP: 0.5 }, { topK: 30, topP: 0.9 }].map(samplerFor))
        checkStatistics("cuda:0", `${name} vocab ${vocab}`, long, sampler, filteredDistribution(long, spec), draws(4000));
      using probs = probsTensor([long], "cuda:0");
      using out = fi.topKRenormProbs(probs, 20);
      withContext(`topKRenormProbs 20 vocab ${vocab}`, () => expectClose(out.toFloat32Array(), renormReference(long, { topK: 20 }), 1e-12, 2e-5));
      using outP = fi.topPRenormProbs(probs, 0.95);
      withContext(`topPRenormProbs 0.95 vocab ${vocab}`, () => expectClose(outP.toFloat32Array(), renormReference(long, { topP: 0.95 }), 1e-12, 2e-5));
    }
    // All equal (every filter keeps every token: ties), one positive entry, k > positives.
    const equal = new Float32Array(10007).fill(1 / 10007);
    const single = new Float32Array(1001);
    single[617] = 1;
    const few = Float32Array.from({ length: 1000 }, (_, i) => (i % 25 === 3 ? 1 + (i % 7) : 0));
    for (const [rowName, row] of [["all equal", equal], ["one positive", single], ["40 positive", few]] as const) {
      const cases = [{ topK: 5 }, { topK: 100 }, { topP: 0.3 }, { topK: 5, topP: 0.3 }, { topK: 100, topP: 0.5, topKFirst: true }].map(samplerFor);
      for (const [name, spec, sampler] of cases) checkStatistics("cuda:0", `${name} ${rowName}`, row, sampler, filteredDistribution(row, spec), draws(6000));
      using probs = probsTensor([row], "cuda:0");
      for (const spec of [{ topP: 0.3 }, { topK: 5 }] as FilterSpec[]) {
        using out = spec.topK ? fi.topKRenormProbs(probs, spec.topK) : fi.topPRenormProbs(probs, spec.topP!);
        withContext(`renorm ${JSON.stringify(spec)} ${rowName}`, () => expectClose(out.toFloat32Array(), renormReference(row, spec), 1e-12, 2e-5));
      }
      using logits = fi.tensor(Float32Array.from(row, (v) => Math.log(v)), [1, row.length], { device: "cuda:0" });
      using masked = fi.topKMaskLogits(logits, 5);
      withContext(`topKMaskLogits 5 ${rowName}`, () => expectClose(masked.toFloat32Array(), topKMaskReference(Float32Array.from(row, (v) => Math.log(v)), 5), 0, 0));
    }
  });
});

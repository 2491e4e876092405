// Prefill attention: singlePrefillWithKVCache, BatchPrefillWithRaggedKVCacheWrapper and
// BatchPrefillWithPagedKVCacheWrapper against the float64 reference (test/reference/prefill.ts)
// on fresh random inputs: every mask kind (none, causal, custom bool array / tensor, packed),
// odd lengths, qoLen < kvLen and qoLen > kvLen, mixed batches with empty and one-row requests,
// batch vs single, ragged and paged, NHD and HND, fp8 paged with scales, soft cap, window,
// ALiBi, RoPE, returnLse, plan reuse, head dims 64/128/256 and 192/128, the scheduler's tile
// choice and KV splitting, the plan itself (tiles, visible keys, order) read from a cpu workspace,
// CUDA-graph mode, and bad input. Outputs are poisoned with NaN before each run.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { attentionAtol, expectClose, expectFlashInferError, gpu, shuffle, testOnDevices, withContext } from "./helpers.ts";
import { type KvLayout, gatherPagedKV, singleDecodeReference } from "./reference/attention.ts";
import { type PrefillReferenceOptions, type PrefillReferenceResult, causalMask, packBitsLittle, prefillVisible, singlePrefillReference } from "./reference/prefill.ts";

// ------------------------------------------------------------------ reference self-checks

describe("float64 reference", () => {
  test("hand-computed: causal bottom-right alignment, window, custom mask", () => {
    // qoLen 2, kvLen 3: d = 1; row 0 sees keys 0..1, row 1 sees 0..2
    const o = { causal: true };
    expect([0, 1, 2].map((j) => prefillVisible(0, j, 2, 3, o))).toEqual([true, true, false]);
    expect([0, 1, 2].map((j) => prefillVisible(1, j, 2, 3, o))).toEqual([true, true, true]);
    // qoLen 3 > kvLen 2: d = -1, row 0 sees nothing
    expect([0, 1].map((j) => prefillVisible(0, j, 3, 2, o))).toEqual([false, false]);
    // window 0 with causal: only the diagonal key i + d
    expect([0, 1, 2].map((j) => prefillVisible(1, j, 2, 3, { causal: true, windowLeft: 0 }))).toEqual([false, false, true]);
    // custom replaces causal
    expect(prefillVisible(0, 2, 2, 3, { causal: true, customMask: [0, 0, 1, 0, 0, 0] })).toBe(true);
    expect(Array.from(packBitsLittle([1, 0, 0, 0, 0, 0, 0, 0, 1, 1]))).toEqual([1, 3]);
    // headDim 2, one head: q = [1, 0], keys [1, 0], [0, 1]; row 0 (causal, qoLen 1 kvLen 2) sees both
    const r = singlePrefillReference([1, 0], [1, 0, 0, 1], [1, 2, 3, 4], { numQoHeads: 1, numKvHeads: 1, headDimQk: 2, headDimVo: 2 }, { smScale: 1 });
    expectClose(r.out, [1.5378828427399902, 2.5378828427399902], 1e-15, 1e-15);
    expectClose(r.lse, [1.3132616875182228], 1e-15, 0);
    // no visible key: out 0, lse -inf
    const e = singlePrefillReference([1, 0, 1, 0], [1, 0], [5, 6], { numQoHeads: 1, numKvHeads: 1, headDimQk: 2, headDimVo: 2 }, { causal: true });
    expect(Array.from(e.out.slice(0, 2))).toEqual([0, 0]);
    expect(e.lse[0]).toBe(-Infinity);
  });

  test("one query row equals the decode reference (RoPE, ALiBi, window, soft cap, scales)", () => {
    const dims = { numQoHeads: 6, numKvHeads: 2, headDim: 8 };
    const kvLen = 13;
    const rnd = (n: number) => Array.from({ length: n }, () => Math.random() * 2 - 1);
    const q = rnd(6 * 8), k = rnd(kvLen * 16), v = rnd(kvLen * 16);
    const variants = [
      {},
      { posEncodingMode: "ROPE_LLAMA" as const, ropeScale: 2, ropeTheta: 500 },
      { posEncodingMode: "ALIBI" as const, logitsSoftCap: 3 },
      { windowLeft: 4, smScale: 0.7, kScale: 0.5, vScale: 2 },
    ];
    for (const opts of variants) {
      const a = singlePrefillReference(q, k, v, { numQoHeads: 6, numKvHeads: 2, headDimQk: 8, headDimVo: 8 }, { ...opts, causal: true });
      const b = singleDecodeReference(q, k, v, dims, opts);
      expectClose(a.out, b.out, 1e-13, 1e-13);
      expectClose(a.lse, b.lse, 1e-13, 0);
    }
  });

  test("the custom mask of the causal pattern equals causal", () => {
    const dims = { numQoHeads: 2, numKvHeads: 1, headDimQk: 4, headDimVo: 6 };
    const rnd = (n: number) => Array.from({ length: n }, () => Math.random() * 2 - 1);
    const q = rnd(5 * 8), k = rnd(7 * 4), v = rnd(7 * 6);
    const a = singlePrefillReference(q, k, v, dims, { causal: true });
    const b = singlePrefillReference(q, k, v, dims, { customMask: causalMask(5, 7) });
    expect(Array.from(a.out)).toEqual(Array.from(b.out));
  });
});

// ------------------------------------------------------------------ shared machinery

type Half = "float16" | "bfloat16";
type KvDType = Half | "float8_e4m3fn" | "float8_e5m2";
type MaskKind = "none" | "causal" | "custom" | "customTensor" | "packed";

type AttnOptions = fi.AttentionVariantOptions;

interface Case {
  qoLens: number[];
  kvLens: number[];
  numQoHeads: number;
  numKvHeads: number;
  headDimQk: number;
  headDimVo?: number;
  qDtype?: Half;
  kvDtype?: KvDType;
  layout?: KvLayout;
  /** 0 (default): ragged; else the page size of a paged cache. */
  pageSize?: number;
  /** Paged: one [pages, 2, ...] tensor instead of a [k, v] pair (needs headDimQk = headDimVo). */
  oneTensor?: boolean;
  mask?: MaskKind;
  attn?: AttnOptions;
  kScale?: number;
  vScale?: number;
  /** The scheduler's split options (default: its own choice). */
  split?: fi.SplitOptions;
}

const f64 = (t: fi.Tensor) => Float64Array.from(t.toFloat32Array());
const randInt = (lo: number, hi: number) => lo + Math.floor(Math.random() * (hi - lo + 1));
const dvOf = (c: Case) => c.headDimVo ?? c.headDimQk;
const qDtypeOf = (c: Case): Half => c.qDtype ?? "float16";
const kvDtypeOf = (c: Case): KvDType => c.kvDtype ?? qDtypeOf(c);

// The backend a test pins (testOnBackends): each case runs on the CPU backend and, on a GPU, on
// "fa2" and (on Hopper) on "fa3" wherever fa3 serves the case (elsewhere on fa2 again), so no
// kernel is left to the dispatch thresholds of "auto" (no test request is long enough for them).
let pinned: fi.PrefillBackend = "auto";
const hopper = gpu && fi.deviceProperties("cuda:0").computeCapability[0] === 9;
type Served = Pick<Case, "headDimQk" | "headDimVo" | "qDtype" | "kvDtype" | "attn">;
function fa3Serves(c: Served): boolean {
  const dv = c.headDimVo ?? c.headDimQk;
  return (c.kvDtype ?? c.qDtype ?? "float16") === (c.qDtype ?? "float16") && dv === c.headDimQk && (dv === 64 || dv === 128) &&
    c.attn?.posEncodingMode !== "ROPE_LLAMA";
}
const backendFor = (c: Served): fi.PrefillBackend => (pinned === "fa3" && !fa3Serves(c) ? "fa2" : pinned);
function expectBackend(got: fi.PrefillBackend, device: fi.Device, c: Served): void {
  if (device === "cpu") expect(got).toBe("cpu");
  else if (pinned === "auto") expect(["fa2", "fa3"]).toContain(got);
  else expect(got).toBe(backendFor(c));
}
function testOnBackends(name: string, fn: (device: fi.Device) => void): void {
  const on = (backend: fi.PrefillBackend, device: fi.Device) => () => {
    pinned = backend;
    try {
      fn(device);
    } finally {
      pinned = "auto";
    }
  };
  test(`${name} [cpu]`, on("auto", "cpu"));
  test.skipIf(!gpu)(`${name} [cuda fa2]`, on("fa2", "cuda:0"));
  test.skipIf(!hopper)(`${name} [cuda fa3]`, on("fa3", "cuda:0"));
}
const tolerance = (c: Case) => ({ atol: 3e-3, rtol: qDtypeOf(c) === "bfloat16" ? 1.6e-2 : 4e-3 });
const LSE_ATOL = 2e-3;
const workspace = (device: fi.Device) => fi.empty([64 << 20], { dtype: "uint8", device });

/** A random float tensor rounded to `dtype`, and its float64 values (row-major in `shape`). */
function randomTensor(device: fi.Device, shape: number[], dtype: fi.DType): { t: fi.Tensor; x: Float64Array } {
  using f = fi.randn(shape, { device, seed: Math.floor(Math.random() * 2 ** 32) });
  const t = f.to({ dtype });
  return { t, x: f64(t) };
}

function cumsum(lens: number[]): Int32Array {
  const a = new Int32Array(lens.length + 1);
  lens.forEach((n, i) => (a[i + 1] = a[i]! + n));
  return a;
}

const pagesFor = (kvLens: number[], pageSize: number) => kvLens.reduce((a, l) => a + Math.ceil(l / pageSize), 0);

/** A page table for requests of kvLens keys over a cache of `pages` pages, drawn in random order. */
function randomPageTable(kvLens: number[], pageSize: number, pages: number): { indptr: Int32Array; indices: Int32Array; lastPageLen: Int32Array } {
  const indices = Int32Array.from(shuffle(Array.from({ length: pages }, (_, i) => i)).slice(0, pagesFor(kvLens, pageSize)));
  const lastPageLen = Int32Array.from(kvLens, (l) => (l === 0 ? 0 : l - (Math.ceil(l / pageSize) - 1) * pageSize));
  return { indptr: cumsum(kvLens.map((l) => Math.ceil(l / pageSize))), indices, lastPageLen };
}

/** Per-request random masks (about 70% visible); a row may end up fully masked. */
function randomMasks(c: Case): boolean[][] {
  return c.qoLens.map((q, r) => Array.from({ length: q * c.kvLens[r]! }, () => Math.random() < 0.7));
}

interface Inputs {
  q: fi.Tensor;
  q64: Float64Array;
  /** Per request k [kvLen, numKvHeads, headDimQk] and v [kvLen, numKvHeads, headDimVo] (float64, NHD). */
  kv: { k: Float64Array; v: Float64Array }[];
  masks: boolean[][] | null;
  qoIndptr: Int32Array;
  dispose(): void;
}

/** Builds q and the per-request float64 KV of a case; `layout` tensors come from `make`. */
function makeQ(device: fi.Device, c: Case): { q: fi.Tensor; q64: Float64Array; qoIndptr: Int32Array } {
  const qoIndptr = cumsum(c.qoLens);
  const { t, x } = randomTensor(device, [qoIndptr[c.qoLens.length]!, c.numQoHeads, c.headDimQk], qDtypeOf(c));
  return { q: t, q64: x, qoIndptr };
}

function maskOptions(c: Case, masks: boolean[][] | null, device: fi.Device): { causal?: boolean; customMask?: fi.PrefillMask; packedCustomMask?: fi.Tensor | Uint8Array } {
  const kind = c.mask ?? "none";
  if (kind === "causal") return { causal: true };
  if (!masks) return {};
  const flat = masks.flat();
  if (kind === "custom") return { customMask: flat, causal: true }; // causal is ignored beside a custom mask
  if (kind === "customTensor") return { customMask: fi.tensor(flat.map(Number), [flat.length], { dtype: "bool", device }) };
  const packed: number[] = [];
  for (const m of masks) packed.push(...packBitsLittle(m));
  return { packedCustomMask: fi.tensor(packed, [packed.length], { dtype: "uint8", device }) };
}

function referenceOf(c: Case, inp: Inputs, r: number): PrefillReferenceResult {
  const Hq = c.numQoHeads, D = c.headDimQk;
  const q = inp.q64.subarray(inp.qoIndptr[r]! * Hq * D, inp.qoIndptr[r + 1]! * Hq * D);
  const opts: PrefillReferenceOptions = { ...c.attn, kScale: c.kScale, vScale: c.vScale };
  if (c.mask === "causal") opts.causal = true;
  if (inp.masks) opts.customMask = inp.masks[r]!;
  return singlePrefillReference(q, inp.kv[r]!.k, inp.kv[r]!.v, { numQoHeads: Hq, numKvHeads: c.numKvHeads, headDimQk: D, headDimVo: dvOf(c) }, opts);
}

/** Checks out/lse of the whole batch against the reference, request by request. */
function checkBatch(c: Case, inp: Inputs, out: fi.Tensor, lse: fi.Tensor | null): void {
  const o = f64(out), l = lse ? f64(lse) : null;
  const Hq = c.numQoHeads, Dv = dvOf(c), { atol, rtol } = tolerance(c);
  for (let r = 0; r < c.qoLens.length; ++r) {
    withContext(`request ${r} (qoLen ${c.qoLens[r]}, kvLen ${c.kvLens[r]})`, () => {
      const ref = referenceOf(c, inp, r);
      const a = inp.qoIndptr[r]!, b = inp.qoIndptr[r + 1]!;
      expectClose(o.subarray(a * Hq * Dv, b * Hq * Dv), ref.out, attentionAtol(atol, ref.magnitude, qDtypeOf(c)), rtol);
      if (l) expectClose(l.subarray(a * Hq, b * Hq), ref.lse, LSE_ATOL, 1e-4);
    });
  }
}

function poisoned(shape: number[], dtype: fi.DType, device: fi.Device): fi.Tensor {
  return fi.full(shape, NaN, { dtype, device });
}

interface RunResult {
  out: fi.Tensor;
  lse: fi.Tensor;
  info: NonNullable<fi.BatchPrefillWithRaggedKVCacheWrapper["planInfo"]>;
  inputs: Inputs;
  dispose(): void;
}

/** Plans and runs a case through the ragged or paged wrapper; out and lse start poisoned. */
function runBatch(device: fi.Device, c: Case): RunResult {
  const layout = c.layout ?? "NHD", Hkv = c.numKvHeads, Dq = c.headDimQk, Dv = dvOf(c);
  const { q, q64, qoIndptr } = makeQ(device, c);
  const masks = c.mask === "custom" || c.mask === "customTensor" || c.mask === "packed" ? randomMasks(c) : null;
  const owned: fi.Tensor[] = [q];
  const inputs: Inputs = { q, q64, kv: [], masks, qoIndptr, dispose: () => owned.forEach((t) => t.dispose()) };
  const common = {
    qoIndptr, numQoHeads: c.numQoHeads, numKvHeads: Hkv, headDimQk: Dq, headDimVo: Dv,
    qDataType: qDtypeOf(c), kvDataType: kvDtypeOf(c), ...c.attn, ...c.split, ...maskOptions(c, masks, device),
  };
  const ws = workspace(device);
  const out = poisoned([qoIndptr[c.qoLens.length]!, c.numQoHeads, Dv], qDtypeOf(c), device);
  const lse = poisoned([qoIndptr[c.qoLens.length]!, c.numQoHeads], "float32", device);
  const runOpts = { out, lse, kScale: c.kScale, vScale: c.vScale };
  let info;
  try {
    if (!c.pageSize) {
      const kvIndptr = cumsum(c.kvLens), total = kvIndptr[c.kvLens.length]!;
      const shape = (d: number) => (layout === "NHD" ? [total, Hkv, d] : [Hkv, total, d]);
      const k = randomTensor(device, shape(Dq), kvDtypeOf(c)), v = randomTensor(device, shape(Dv), kvDtypeOf(c));
      owned.push(k.t, v.t);
      // float64 NHD values per request
      const toNhd = (x: Float64Array, d: number) => (layout === "NHD" ? x : hndToNhd(x, Hkv, d));
      const kN = toNhd(k.x, Dq), vN = toNhd(v.x, Dv);
      for (let r = 0; r < c.kvLens.length; ++r)
        inputs.kv.push({ k: kN.slice(kvIndptr[r]! * Hkv * Dq, kvIndptr[r + 1]! * Hkv * Dq), v: vN.slice(kvIndptr[r]! * Hkv * Dv, kvIndptr[r + 1]! * Hkv * Dv) });
      const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, layout, { backend: backendFor(c) });
      try {
        w.plan({ ...common, kvIndptr });
        w.run(q, k.t, v.t, runOpts);
        info = w.planInfo!;
        expectBackend(info.backend, device, c);
      } finally {
        w.dispose();
      }
    } else {
      const P = c.pageSize;
      const pages = pagesFor(c.kvLens, P) + randInt(1, 3);
      const { indptr, indices, lastPageLen: last } = randomPageTable(c.kvLens, P, pages);
      const page = (d: number) => (layout === "NHD" ? [P, Hkv, d] : [Hkv, P, d]);
      let cache: fi.Tensor | [fi.Tensor, fi.Tensor], k64: Float64Array, v64: Float64Array;
      if (c.oneTensor) {
        const all = randomTensor(device, [pages, 2, ...page(Dq)], kvDtypeOf(c));
        owned.push(all.t);
        cache = all.t;
        using kt = all.t.select(1, 0);
        using vt = all.t.select(1, 1);
        k64 = f64(kt);
        v64 = f64(vt);
      } else {
        const k = randomTensor(device, [pages, ...page(Dq)], kvDtypeOf(c)), v = randomTensor(device, [pages, ...page(Dv)], kvDtypeOf(c));
        owned.push(k.t, v.t);
        cache = [k.t, v.t];
        k64 = k.x;
        v64 = v.x;
      }
      const table = { indptr, indices, lastPageLen: last };
      const gk = gatherPagedKV(table, { k: k64, v: k64 }, { pageSize: P, numKvHeads: Hkv, headDim: Dq, layout });
      const gv = gatherPagedKV(table, { k: v64, v: v64 }, { pageSize: P, numKvHeads: Hkv, headDim: Dv, layout });
      gk.forEach((g, r) => inputs.kv.push({ k: g.k, v: gv[r]!.k }));
      const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws, layout, { backend: backendFor(c) });
      try {
        w.plan({ ...common, pagedKvIndptr: indptr, pagedKvIndices: indices, pagedKvLastPageLen: last, pageSize: P });
        w.run(q, cache, runOpts);
        info = w.planInfo!;
        expectBackend(info.backend, device, c);
      } finally {
        w.dispose();
      }
    }
  } finally {
    ws.dispose();
    const m = common as { customMask?: unknown; packedCustomMask?: unknown };
    for (const t of [m.customMask, m.packedCustomMask]) if (t instanceof fi.Tensor) t.dispose();
  }
  return { out, lse, info, inputs, dispose: () => (out.dispose(), lse.dispose(), inputs.dispose()) };
}

function hndToNhd(x: Float64Array, Hkv: number, D: number): Float64Array {
  const n = x.length / (Hkv * D), y = new Float64Array(x.length);
  for (let h = 0; h < Hkv; ++h) for (let t = 0; t < n; ++t) for (let d = 0; d < D; ++d) y[(t * Hkv + h) * D + d] = x[(h * n + t) * D + d]!;
  return y;
}

function checkCase(device: fi.Device, c: Case): RunResult["info"] {
  const r = runBatch(device, c);
  try {
    checkBatch(c, r.inputs, r.out, r.lse);
    return r.info;
  } finally {
    r.dispose();
  }
}

const label = (c: Case) =>
  `${c.pageSize ? `paged ${c.pageSize}` : "ragged"} ${c.layout ?? "NHD"} qo [${c.qoLens}] kv [${c.kvLens}] heads ${c.numQoHeads}/${c.numKvHeads} d ${c.headDimQk}/${dvOf(c)} ${qDtypeOf(c)}/${kvDtypeOf(c)} mask ${c.mask ?? "none"}${c.attn ? ` ${JSON.stringify(c.attn)}` : ""}${c.split ? ` ${JSON.stringify(c.split)}` : ""}`;

function checkCases(device: fi.Device, cases: Case[]): void {
  for (const c of cases) withContext(label(c), () => checkCase(device, c));
}

// ------------------------------------------------------------------ single prefill

describe("singlePrefillWithKVCache", () => {
  testOnBackends("mask kinds x odd lengths (1, 15, 16, 17), qoLen < kvLen and > kvLen", (device) => {
    const lens: [number, number][] = [[1, 1], [15, 15], [16, 17], [17, 16], [15, 40], [5, 3]];
    for (const [qoLen, kvLen] of lens) {
      for (const mask of ["none", "causal", "custom"] as const) {
        const c: Case = { qoLens: [qoLen], kvLens: [kvLen], numQoHeads: 4, numKvHeads: 2, headDimQk: 64, mask };
        withContext(label(c), () => {
          const { q, q64, qoIndptr } = makeQ(device, c);
          const k = randomTensor(device, [kvLen, 2, 64], "float16"), v = randomTensor(device, [kvLen, 2, 64], "float16");
          const masks = mask === "custom" ? randomMasks(c) : null;
          try {
            const r = fi.singlePrefillWithKVCache(q, k.t, v.t, { returnLse: true, causal: mask === "causal", customMask: masks ? masks[0] : undefined, backend: backendFor(c) }) as { out: fi.Tensor; lse: fi.Tensor };
            expect(r.out.shape).toEqual([qoLen, 4, 64]);
            expect(r.lse.shape).toEqual([qoLen, 4]);
            checkBatch(c, { q, q64, qoIndptr, kv: [{ k: k.x, v: v.x }], masks, dispose() {} }, r.out, r.lse);
            r.out.dispose();
            r.lse.dispose();
          } finally {
            q.dispose();
            k.t.dispose();
            v.t.dispose();
          }
        });
      }
    }
  });

  // Issue 10: the kernels tested the mask bit of rows past qoLen (padding of the last row tile)
  // before discarding them, reading past the mask. Here each mask is its own allocation of exactly
  // ceil(qoLen * kvLen / 8) bytes; scripts/gpu-run.sh runs this under compute-sanitizer memcheck,
  // which flags any read past it.
  testOnBackends("packed custom mask in an allocation of exactly its bytes: rows past qoLen read none of it", (device) => {
    for (const [qoLen, kvLen] of [[1, 1], [1, 7], [5, 3], [17, 33], [63, 9], [65, 130]] as [number, number][]) {
      const c: Case = { qoLens: [qoLen], kvLens: [kvLen], numQoHeads: 6, numKvHeads: 2, headDimQk: 64, mask: "custom" };
      withContext(label(c), () => {
        const { q, q64, qoIndptr } = makeQ(device, c);
        const k = randomTensor(device, [kvLen, 2, 64], "float16"), v = randomTensor(device, [kvLen, 2, 64], "float16");
        const masks = randomMasks(c);
        const bytes = Uint8Array.from(packBitsLittle(masks[0]!));
        expect(bytes.length).toBe(Math.ceil((qoLen * kvLen) / 8));
        const packed = fi.tensor(bytes, [bytes.length], { dtype: "uint8", device });
        try {
          const r = fi.singlePrefillWithKVCache(q, k.t, v.t, { returnLse: true, packedCustomMask: packed, backend: backendFor(c) }) as { out: fi.Tensor; lse: fi.Tensor };
          checkBatch(c, { q, q64, qoIndptr, kv: [{ k: k.x, v: v.x }], masks, dispose() {} }, r.out, r.lse);
          r.out.dispose();
          r.lse.dispose();
        } finally {
          for (const t of [q, k.t, v.t, packed]) t.dispose();
        }
      });
    }
  });

  testOnBackends("long: qoLen 1000 causal over kvLen 1000, qoLen 17 over kvLen 4097 (HND, window, bfloat16)", (device) => {
    for (const [qoLen, kvLen, layout, attn, dtype] of [
      [1000, 1000, "NHD", {}, "float16"],
      [17, 4097, "HND", { windowLeft: 700 }, "bfloat16"],
    ] as const) {
      const c: Case = { qoLens: [qoLen], kvLens: [kvLen], numQoHeads: 2, numKvHeads: 1, headDimQk: 64, mask: "causal", layout, attn, qDtype: dtype };
      withContext(label(c), () => {
        const { q, q64, qoIndptr } = makeQ(device, c);
        const shape = layout === "NHD" ? [kvLen, 1, 64] : [1, kvLen, 64];
        const k = randomTensor(device, shape, dtype), v = randomTensor(device, shape, dtype);
        try {
          const out = fi.singlePrefillWithKVCache(q, k.t, v.t, { causal: true, kvLayout: layout, ...attn, backend: backendFor(c) }) as fi.Tensor;
          checkBatch(c, { q, q64, qoIndptr, kv: [{ k: k.x, v: v.x }], masks: null, dispose() {} }, out, null);
          out.dispose();
        } finally {
          q.dispose();
          k.t.dispose();
          v.t.dispose();
        }
      });
    }
  });

  testOnBackends("kvLen 0 gives out 0 and lse -inf; qoLen 0 gives empty results", (device) => {
    using q = fi.randn([3, 2, 64], { dtype: "float16", device });
    using k = fi.empty([0, 2, 64], { dtype: "float16", device });
    const r = fi.singlePrefillWithKVCache(q, k, k, { returnLse: true, backend: backendFor({ headDimQk: 64 }) }) as { out: fi.Tensor; lse: fi.Tensor };
    expect(Array.from(r.out.toFloat32Array())).toEqual(new Array(3 * 2 * 64).fill(0));
    expect(Array.from(r.lse.toFloat32Array())).toEqual(new Array(6).fill(-Infinity));
    r.out.dispose();
    r.lse.dispose();
    using q0 = fi.empty([0, 2, 64], { dtype: "float16", device });
    using k5 = fi.randn([5, 2, 64], { dtype: "float16", device });
    using o0 = fi.singlePrefillWithKVCache(q0, k5, k5, { causal: true, backend: backendFor({ headDimQk: 64 }) }) as fi.Tensor;
    expect(o0.shape).toEqual([0, 2, 64]);
  });
});

// ------------------------------------------------------------------ batch wrappers

describe("batch prefill", () => {
  testOnBackends("ragged mixed batch (lengths 0 and 1 included), every mask kind, NHD and HND", (device) => {
    for (const mask of ["none", "causal", "custom", "customTensor", "packed"] as const) {
      for (const layout of ["NHD", "HND"] as const) {
        const qoLens = shuffle([0, 1, 17, 16, 5, 33, 1]);
        const kvLens = qoLens.map((q, i) => (i === 2 ? 0 : q + randInt(0, 20)));
        checkCases(device, [{ qoLens, kvLens, numQoHeads: 6, numKvHeads: 2, headDimQk: 64, mask, layout, qDtype: layout === "NHD" ? "float16" : "bfloat16" }]);
      }
    }
  });

  testOnBackends("many items per CTA: 400 requests (empty, one-row and two-tile ones), so the Hopper kernel's persistent CTAs cycle their Q buffers and K/V rings several times", (device) => {
    // 8 / 2 heads: packed rows 0, 4, 12, 160 or 256 a request, about 960 work items x heads on fa3
    // (7 a CTA on 132 SMs); 5% of the requests have no keys.
    const qoLens = shuffle(Array.from({ length: 400 }, (_, i) => [0, 1, 3, 40, 64][i % 5]!));
    const kvLens = qoLens.map((q) => (Math.random() < 0.05 ? 0 : q + randInt(0, 300)));
    checkCases(device, [{ qoLens, kvLens, numQoHeads: 8, numKvHeads: 2, headDimQk: 64, mask: "causal", pageSize: 16, qDtype: "bfloat16" }]);
    // Head dim 256 (one Q buffer on fa3, key tiles of 64): 3 / 1 heads, about 480 items.
    const kvLens256 = qoLens.map((q) => (Math.random() < 0.05 ? 0 : q + randInt(0, 200)));
    checkCases(device, [{ qoLens, kvLens: kvLens256, numQoHeads: 3, numKvHeads: 1, headDimQk: 256, mask: "causal", qDtype: "float16" }]);
  });

  testOnBackends("random configurations: lengths, heads, page size, layout, mask, window, soft cap, ALiBi and split options drawn together", (device) => {
    // Features that each test above takes one at a time, combined at random (fresh draws every
    // run; the failing case is printed whole): what the scheduler's tiling, clipping, splitting
    // and merging do with them together.
    const pick = <T>(xs: readonly T[]): T => xs[randInt(0, xs.length - 1)]!;
    const cases = Array.from({ length: 12 }, (): Case => {
      const batch = randInt(1, 5), numKvHeads = randInt(1, 3), group = pick([1, 2, 4, 5]);
      const qoLens = Array.from({ length: batch }, () => pick([0, 1, randInt(2, 20), randInt(20, 70)]));
      const kvLens = qoLens.map((q) => (Math.random() < 0.1 ? 0 : q + pick([0, randInt(1, 16), randInt(16, 150)])));
      const headDimQk = pick([64, 128]), attn: AttnOptions = {};
      if (Math.random() < 0.4) attn.windowLeft = randInt(0, 40);
      if (Math.random() < 0.3) attn.logitsSoftCap = pick([5, 30]);
      if (Math.random() < 0.2) attn.posEncodingMode = "ALIBI";
      const split: fi.SplitOptions = pick([{}, {}, { disableSplitKv: true }, { fixedSplitSize: pick([16, 32, 64]) }]);
      return {
        qoLens, kvLens, numKvHeads, numQoHeads: numKvHeads * group, headDimQk, qDtype: pick(["float16", "bfloat16"] as const),
        layout: pick(["NHD", "HND"] as const), pageSize: pick([0, 0, 1, 3, 16]), mask: pick(["none", "causal", "causal", "custom"] as const), attn, split,
      };
    });
    checkCases(device, cases);
  });

  testOnBackends("paged mixed batch: page sizes 1, 5, 16; every mask kind; NHD/HND; one tensor or a pair", (device) => {
    const cases: Case[] = [];
    for (const [pageSize, mask, layout, oneTensor] of [
      [16, "causal", "NHD", true], [16, "none", "HND", false], [5, "custom", "NHD", false], [1, "packed", "HND", true], [5, "customTensor", "HND", false],
    ] as const) {
      const qoLens = shuffle([0, 1, 16, 17, 7]);
      const kvLens = qoLens.map((q) => q + randInt(0, 40));
      kvLens[qoLens.indexOf(7)] = 0; // a request with queries but no keys
      cases.push({ qoLens, kvLens, numQoHeads: 4, numKvHeads: 4, headDimQk: 64, pageSize, mask, layout, oneTensor, qDtype: "bfloat16" });
    }
    checkCases(device, cases);
  });

  testOnBackends("fp8 paged caches (e4m3fn, e5m2) with kScale and vScale", (device) => {
    checkCases(device, [
      { qoLens: [17, 3], kvLens: [40, 3], numQoHeads: 8, numKvHeads: 2, headDimQk: 128, pageSize: 16, kvDtype: "float8_e4m3fn", qDtype: "bfloat16", mask: "causal", kScale: 0.75, vScale: 1.5 },
      { qoLens: [9, 1], kvLens: [9, 30], numQoHeads: 4, numKvHeads: 1, headDimQk: 64, pageSize: 8, kvDtype: "float8_e5m2", mask: "none", kScale: 1.25, vScale: 0.5, layout: "HND" },
    ]);
  });

  testOnBackends("soft cap, window, ALiBi, RoPE (scale and theta), smScale", (device) => {
    const base = { qoLens: [17, 1, 30], kvLens: [33, 20, 30], numQoHeads: 4, numKvHeads: 2, headDimQk: 64 };
    checkCases(device, [
      { ...base, mask: "causal", attn: { logitsSoftCap: 2.5, smScale: 0.4 } },
      { ...base, mask: "causal", attn: { windowLeft: 7 } },
      { ...base, mask: "none", attn: { windowLeft: 0 }, pageSize: 4 },
      { ...base, mask: "causal", attn: { posEncodingMode: "ALIBI" } },
      { ...base, mask: "custom", attn: { posEncodingMode: "ALIBI", logitsSoftCap: 4 }, pageSize: 3 },
      { ...base, mask: "causal", attn: { posEncodingMode: "ROPE_LLAMA", ropeScale: 2, ropeTheta: 5e4 } },
      { ...base, mask: "none", attn: { posEncodingMode: "ROPE_LLAMA" }, pageSize: 16, layout: "HND" },
    ]);
  });

  testOnBackends("head dims 64, 128, 256 and 192/128; GQA groups 1, 3, 8", (device) => {
    checkCases(device, [
      { qoLens: [17, 4], kvLens: [20, 9], numQoHeads: 3, numKvHeads: 3, headDimQk: 128, mask: "causal", qDtype: "bfloat16" },
      { qoLens: [17, 4], kvLens: [20, 9], numQoHeads: 8, numKvHeads: 1, headDimQk: 256, mask: "causal", pageSize: 16 },
      { qoLens: [17, 4], kvLens: [20, 9], numQoHeads: 6, numKvHeads: 2, headDimQk: 192, headDimVo: 128, mask: "causal", qDtype: "bfloat16" },
      { qoLens: [16, 1], kvLens: [31, 1], numQoHeads: 6, numKvHeads: 2, headDimQk: 192, headDimVo: 128, mask: "custom", pageSize: 16, layout: "HND" },
    ]);
  });

  test("any head dims on cpu (24 / 40, 10 / 6)", () => {
    checkCases("cpu", [
      { qoLens: [5, 3], kvLens: [9, 3], numQoHeads: 2, numKvHeads: 1, headDimQk: 24, headDimVo: 40, mask: "causal", attn: { posEncodingMode: "ROPE_LLAMA" } },
      { qoLens: [5], kvLens: [7], numQoHeads: 3, numKvHeads: 3, headDimQk: 10, headDimVo: 6, mask: "none", pageSize: 2 },
    ]);
  });

  testOnBackends("batch equals single, request by request (ragged and paged)", (device) => {
    for (const pageSize of [0, 16]) {
      const c: Case = { qoLens: [17, 0, 1, 40], kvLens: [17, 5, 9, 64], numQoHeads: 4, numKvHeads: 2, headDimQk: 64, mask: "causal", attn: { logitsSoftCap: 5 }, pageSize };
      const r = runBatch(device, c);
      try {
        const batch = f64(r.out);
        const { atol, rtol } = tolerance(c);
        for (let i = 0; i < c.qoLens.length; ++i) {
          const kvLen = c.kvLens[i]!, a = r.inputs.qoIndptr[i]!, b = r.inputs.qoIndptr[i + 1]!;
          using q = r.inputs.q.slice(0, a, b);
          using k = fi.tensor(r.inputs.kv[i]!.k, [kvLen, 2, 64], { dtype: "float16", device });
          using v = fi.tensor(r.inputs.kv[i]!.v, [kvLen, 2, 64], { dtype: "float16", device });
          using single = fi.singlePrefillWithKVCache(q, k, v, { causal: true, logitsSoftCap: 5, backend: backendFor(c) }) as fi.Tensor;
          withContext(`page size ${pageSize}, request ${i}`, () => expectClose(batch.subarray(a * 4 * 64, b * 4 * 64), f64(single), atol / 4, rtol / 4));
        }
      } finally {
        r.dispose();
      }
    }
  });

  testOnBackends("strided out and lse views: only the view is written", (device) => {
    using ws = workspace(device);
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { backend: backendFor({ headDimQk: 64 }) });
    try {
      const c: Case = { qoLens: [9, 4], kvLens: [12, 4], numQoHeads: 2, numKvHeads: 1, headDimQk: 64, mask: "causal" };
      const { q, q64, qoIndptr } = makeQ(device, c);
      const kvIndptr = cumsum(c.kvLens);
      const k = randomTensor(device, [16, 1, 64], "float16"), v = randomTensor(device, [16, 1, 64], "float16");
      using big = poisoned([13, 4, 64], "float16", device);
      using bigLse = poisoned([13, 3], "float32", device);
      using out = big.slice(1, 1, 3); // heads 1..2 of 4: strides [256, 64, 1]
      using lse = bigLse.slice(1, 0, 2);
      try {
        w.plan({ qoIndptr, kvIndptr, numQoHeads: 2, numKvHeads: 1, headDimQk: 64, causal: true });
        w.run(q, k.t, v.t, { out, lse });
        const kv = c.kvLens.map((_, r) => ({ k: k.x.slice(kvIndptr[r]! * 64, kvIndptr[r + 1]! * 64), v: v.x.slice(kvIndptr[r]! * 64, kvIndptr[r + 1]! * 64) }));
        checkBatch(c, { q, q64, qoIndptr, kv, masks: null, dispose() {} }, out, lse);
        const all = f64(big), allLse = f64(bigLse);
        for (let n = 0; n < 13; ++n) {
          for (const h of [0, 3]) expect(all.subarray((n * 4 + h) * 64, (n * 4 + h + 1) * 64).every(Number.isNaN)).toBe(true);
          expect(Number.isNaN(allLse[n * 3 + 2]!)).toBe(true);
        }
      } finally {
        q.dispose();
        k.t.dispose();
        v.t.dispose();
      }
    } finally {
      w.dispose();
    }
  });

  testOnBackends("plan reuse across runs, re-plan, returnLse and default outputs", (device) => {
    using ws = workspace(device);
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { backend: backendFor({ headDimQk: 64 }) });
    try {
      const dims = { numQoHeads: 2, numKvHeads: 1, headDimQk: 64 };
      const plans = [
        { qoLens: [3, 9], kvLens: [10, 9] },
        { qoLens: [1, 1, 20], kvLens: [4, 0, 25] },
      ];
      for (const p of plans) {
        const qoIndptr = cumsum(p.qoLens), kvIndptr = cumsum(p.kvLens);
        w.plan({ qoIndptr, kvIndptr, ...dims, causal: true });
        const total = kvIndptr[p.kvLens.length]!;
        for (let run = 0; run < 2; ++run) {
          const c: Case = { ...p, ...dims, mask: "causal" };
          const { q, q64 } = makeQ(device, c);
          const k = randomTensor(device, [total, 1, 64], "float16"), v = randomTensor(device, [total, 1, 64], "float16");
          try {
            const kv = p.kvLens.map((_, r) => ({ k: k.x.slice(kvIndptr[r]! * 64, kvIndptr[r + 1]! * 64), v: v.x.slice(kvIndptr[r]! * 64, kvIndptr[r + 1]! * 64) }));
            const inp: Inputs = { q, q64, kv, masks: null, qoIndptr, dispose() {} };
            const res = w.run(q, k.t, v.t, { returnLse: run === 1 });
            if (run === 0) {
              expect(res).toBeInstanceOf(fi.Tensor);
              checkBatch(c, inp, res as fi.Tensor, null);
              (res as fi.Tensor).dispose();
            } else {
              const { out, lse } = res as { out: fi.Tensor; lse: fi.Tensor };
              checkBatch(c, inp, out, lse);
              out.dispose();
              lse.dispose();
            }
          } finally {
            q.dispose();
            k.t.dispose();
            v.t.dispose();
          }
        }
      }
    } finally {
      w.dispose();
    }
  });
});

// ------------------------------------------------------------------ scheduler

describe("scheduler", () => {
  testOnDevices("backend option: recorded in the plan; fa3 refuses what it cannot serve; cpu and CUDA kernels stay on their devices", (device) => {
    using ws = workspace(device);
    const base = { numQoHeads: 4, numKvHeads: 2, headDimQk: 128, qDataType: "bfloat16" as const, kvDataType: "bfloat16" as const, causal: true };
    const planned = (backend: fi.PrefillBackend, qoLen: number, extra: object = {}) => {
      const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { backend });
      try {
        w.plan({ ...base, qoIndptr: [0, qoLen], kvIndptr: [0, qoLen], ...extra });
        return w.planInfo!;
      } finally {
        w.dispose();
      }
    };
    expectFlashInferError(() => new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { backend: "fa4" as fi.PrefillBackend }), "invalid_argument", /backend/);
    if (device === "cpu") {
      expect(planned("auto", 100).backend).toBe("cpu");
      expect(planned("cpu", 100).backend).toBe("cpu");
      for (const b of ["fa2", "fa3"] as const) expectFlashInferError(() => planned(b, 100), "invalid_argument", new RegExp(`backend: ${b} runs on CUDA`));
      return;
    }
    expectFlashInferError(() => planned("cpu", 100), "invalid_argument", /backend: cpu needs a cpu workspace/);
    expect(planned("fa2", 2048).backend).toBe("fa2");
    expect(planned("auto", 20).backend).toBe("fa2"); // 40 packed rows: a 64-row tile, which fa3 does not have
    expect(planned("auto", 100).backend).toBe(hopper ? "fa3" : "fa2"); // 200 packed rows fill fa3's 128-row tile
    expect(planned("auto", 2048).backend).toBe(hopper ? "fa3" : "fa2");
    expect(planned("auto", 2048, { posEncodingMode: "ROPE_LLAMA" }).backend).toBe("fa2");
    if (hopper) {
      const info = planned("fa3", 20); // a short request, pinned: the tile becomes fa3's 128 rows
      expect(info.backend).toBe("fa3");
      expect(info.ctaTileQ).toBe(128);
    }
    expectFlashInferError(() => planned("fa3", 20, { posEncodingMode: "ROPE_LLAMA" }), "unsupported", /fa3 cannot serve this plan: it has no ROPE_LLAMA/);
    expectFlashInferError(() => planned("fa3", 20, { headDimQk: 192, headDimVo: 128 }), "unsupported", /fa3 cannot serve this plan: head dims \(192, 128\)/);
    expectFlashInferError(() => planned("fa3", 20, { kvDataType: "float8_e4m3fn" }), "unsupported", /fa3 cannot serve this plan: kvDataType float8_e4m3fn/);
  });

  testOnDevices("query tile from the average packed query length (16, 64, 128; at head dim 256, 128 only on fa3)", (device) => {
    using ws = workspace(device);
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws);
    try {
      const tile = (qoLens: number[], group: number, headDim = 128) => {
        w.plan({ qoIndptr: cumsum(qoLens), kvIndptr: cumsum(qoLens.map(() => 50)), numQoHeads: group, numKvHeads: 1, headDimQk: headDim, qDataType: "bfloat16" });
        return w.planInfo!.ctaTileQ;
      };
      expect(tile([16], 1)).toBe(16);
      expect(tile([5, 27], 1)).toBe(16); // average 16
      expect(tile([17], 1)).toBe(64);
      expect(tile([5], 4)).toBe(64); // packed 20
      expect(tile([64], 1)).toBe(64);
      expect(tile([65], 1)).toBe(128);
      expect(tile([100, 0], 2)).toBe(128);
      expect(tile([200], 1, 256)).toBe(device !== "cpu" && hopper ? 128 : 64); // the mma.sync kernel's 128-row tile does not fit
    } finally {
      w.dispose();
    }
  });

  test("small batches split KV into chunks and merge them (cpu)", () => {
    // cpu schedules for 8 concurrent work items: one tile of 15 rows over 1000 keys is split.
    const info = checkCase("cpu", { qoLens: [15], kvLens: [1000], numQoHeads: 1, numKvHeads: 1, headDimQk: 64, mask: "none" });
    expect(info.kvChunksMax).toBe(8); // as many pieces as slots, the shortest that fit (125 keys -> 128)
    expect(info.chunkTokens).toBe(128);
    expect(info.numPartials).toBe(15 * info.kvChunksMax);
    // causal + window: chunks of tiles clipped to what they can see (request 1's keys 999..1999);
    // GQA packing over 2 tiles. The scheduler splits as far as the pieces fit the 8 slots at
    // once (3 tiles x 2 KV heads: 4 items per head): request 1 into 2 pieces, request 0 not.
    const info2 = checkCase("cpu", { qoLens: [7, 1], kvLens: [300, 2000], numQoHeads: 6, numKvHeads: 2, headDimQk: 64, mask: "causal", attn: { windowLeft: 1000 } });
    expect(info2.kvChunksMax).toBe(2);
    expect(info2.numWork).toBe(4);
    // enough tiles: no split
    const info3 = checkCase("cpu", { qoLens: [80, 80, 80, 80], kvLens: [90, 80, 100, 80], numQoHeads: 2, numKvHeads: 2, headDimQk: 64, mask: "causal" });
    expect(info3.numPartials).toBe(0);
  });

  // The plan itself, read out of a cpu workspace (layout: native/src/attention/prefill.h, a
  // header of 8 ints then work_request, work_qo_begin, work_kv_begin, work_kv_end, work_chunk of
  // numWork ints each): every query tile of every request appears once, its keys are exactly those
  // its mask lets it see (bottom-right causal, window), cut into in-order pieces of a multiple of
  // 16 keys when split; and items come in ascending keys per item (the CUDA kernels walk the list
  // in reverse, longest first), up to the scheduler's bucket width.
  test("random batches: the plan covers every tile once with exactly its visible keys, in ascending cost (cpu)", () => {
    // Room for the largest partial states (6 rows of 130 x 40 pieces x 16 heads x 64 dims: 128 MB);
    // untouched by the plans.
    using ws = fi.empty([256 << 20], { dtype: "uint8", device: "cpu" });
    for (let trial = 0; trial < 60; ++trial) {
      const batch = randInt(1, trial % 3 === 0 ? 60 : 6), Hkv = [1, 2][randInt(0, 1)]!, group = [1, 3, 4, 8][randInt(0, 3)]!;
      const qoLens = Array.from({ length: batch }, () => (Math.random() < 0.15 ? 0 : randInt(1, trial % 4 === 0 ? 600 : 130)));
      const kvLens = qoLens.map((q) => (Math.random() < 0.2 ? randInt(0, 40) : q + randInt(0, 500)));
      const causal = Math.random() < 0.7, windowLeft = Math.random() < 0.3 ? randInt(0, 300) : -1;
      // (Fixed pieces only on small batches of short prompts: every split row keeps a partial state per piece.)
      const small = batch <= 6 && Math.max(...qoLens) <= 130;
      const split = randInt(0, 4), fixedSplitSize = split === 0 && small ? 16 * randInt(1, 12) : undefined, disableSplitKv = split === 1 ? true : undefined;
      const label = `batch ${batch}, group ${group}, qo ${qoLens}, kv ${kvLens}, causal ${causal}, window ${windowLeft}, split ${fixedSplitSize ?? disableSplitKv ?? "auto"}`;
      withContext(label, () => {
        using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD");
        w.plan({ qoIndptr: cumsum(qoLens), kvIndptr: cumsum(kvLens), numQoHeads: Hkv * group, numKvHeads: Hkv, headDimQk: 64, causal, windowLeft,
          fixedSplitSize, disableSplitKv });
        const info = w.planInfo!, tile = info.ctaTileQ, n = info.numWork;
        using planBytes = ws.slice(0, 0, 4 * (8 + 5 * n));
        const ints = new Int32Array((planBytes.toArray() as Uint8Array).buffer);
        expect(Array.from(ints.subarray(0, 3))).toEqual([n, batch, tile]);
        const at = (k: number, i: number) => ints[8 + k * n + i]!;
        // Expected tiles and keys, from the mask's definition.
        const expected = new Map<string, [number, number]>();
        qoLens.forEach((q, r) => {
          const packed = q * group, d = kvLens[r]! - q;
          for (let p = 0; p < packed; p += tile) {
            const firstRow = Math.floor(p / group), lastRow = Math.floor((Math.min(p + tile, packed) - 1) / group);
            const hi = causal ? Math.max(0, Math.min(kvLens[r]!, lastRow + d + 1)) : kvLens[r]!;
            const lo = windowLeft >= 0 ? Math.min(hi, Math.max(0, firstRow + d - windowLeft)) : 0;
            expected.set(`${r}:${p}`, [lo, hi]);
          }
        });
        // Group the items by tile: pieces in order, chunk numbers 0..k-1 (or -1 alone).
        const pieces = new Map<string, number[]>();
        for (let i = 0; i < n; ++i) {
          const key = `${at(0, i)}:${at(1, i)}`;
          if (!pieces.has(key)) pieces.set(key, []);
          pieces.get(key)!.push(i);
        }
        expect([...pieces.keys()].sort()).toEqual([...expected.keys()].sort());
        const costOf: number[] = new Array(n);
        for (const [key, items] of pieces) {
          const [lo, hi] = expected.get(key)!;
          items.sort((a, b) => at(4, a) - at(4, b));
          if (items.length === 1) {
            expect([at(2, items[0]!), at(3, items[0]!), at(4, items[0]!)]).toEqual([lo, hi, -1]);
          } else {
            let next = lo;
            items.forEach((i, c) => {
              expect(at(4, i)).toBe(c);
              expect(at(2, i)).toBe(next);
              if (at(3, i) < hi) expect((at(3, i) - at(2, i)) % 16).toBe(0);
              next = at(3, i);
            });
            expect(next).toBe(hi);
            if (fixedSplitSize) for (const i of items) expect(at(3, i) - at(2, i)).toBeLessThanOrEqual(fixedSplitSize);
          }
          for (const i of items) costOf[i] = Math.ceil((hi - lo) / items.length);
        }
        if (disableSplitKv) expect(info.kvChunksMax).toBe(1);
        const maxCost = Math.max(0, ...costOf), width = maxCost / Math.max(1, Math.min(expected.size, 4096) - 1);
        for (let i = 1; i < n; ++i) expect(costOf[i]!).toBeGreaterThanOrEqual(costOf[i - 1]! - width - 1);
      });
    }
  });
});

// ------------------------------------------------------------------ bad input

describe("bad input throws FlashInferError naming the argument; nothing is written", () => {
  const dims = { numQoHeads: 4, numKvHeads: 2, headDimQk: 64 };
  const qoIndptr = [0, 3, 5], kvIndptr = [0, 4, 10];

  testOnDevices("plan: index arrays, heads, dtypes, masks", (device) => {
    using ws = workspace(device);
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws);
    const p = new fi.BatchPrefillWithPagedKVCacheWrapper(ws);
    try {
      const bad = (fn: () => unknown, code: fi.ErrorCode, re: RegExp) => expectFlashInferError(fn, code, re);
      bad(() => w.plan({ qoIndptr: [0, 3, 2], kvIndptr, ...dims }), "invalid_argument", /qoIndptr: must be non-decreasing/);
      bad(() => w.plan({ qoIndptr: [1, 3, 5], kvIndptr, ...dims }), "invalid_argument", /qoIndptr\[0\]: expected 0/);
      bad(() => w.plan({ qoIndptr, kvIndptr: [0, 4, 3], ...dims }), "invalid_argument", /kvIndptr: must be non-decreasing/);
      bad(() => w.plan({ qoIndptr, kvIndptr: [0, 4], ...dims }), "invalid_argument", /kvIndptr: expected 3 entries/);
      bad(() => w.plan({ qoIndptr: [0], kvIndptr: [0], ...dims }), "invalid_argument", /qoIndptr: expected batch \+ 1 >= 2/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, numQoHeads: 3 }), "invalid_argument", /numQoHeads: 3 is not a multiple of numKvHeads/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, numKvHeads: 0 }), "invalid_argument", /numKvHeads: expected a positive integer/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, qDataType: "float32" }), "unsupported", /qDataType: expected float16 or bfloat16/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, kvDataType: "bfloat16" }), "unsupported", /kvDataType: expected q's dtype/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, oDataType: "bfloat16" }), "unsupported", /oDataType/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, windowLeft: -2 }), "invalid_argument", /windowLeft/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, customMask: new Array(3 * 4 + 2 * 6 - 1).fill(true) }), "invalid_argument", /customMask: expected 24 entries/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, packedCustomMask: new Uint8Array(5) }), "invalid_argument", /packedCustomMask: expected 4 bytes/);
      bad(() => w.plan({ qoIndptr, kvIndptr, ...dims, customMask: [true], packedCustomMask: new Uint8Array(4) }), "invalid_argument", /customMask, packedCustomMask/);
      const paged = { qoIndptr, pagedKvIndptr: [0, 1, 3], pagedKvIndices: [0, 1, 2], pagedKvLastPageLen: [4, 2], pageSize: 4, ...dims };
      bad(() => p.plan({ ...paged, pagedKvLastPageLen: [4, 5] }), "invalid_argument", /pagedKvLastPageLen\[1\]: expected 1\.\.4/);
      bad(() => p.plan({ ...paged, pagedKvLastPageLen: [0, 2] }), "invalid_argument", /pagedKvLastPageLen\[0\]: expected 1\.\.4/);
      // with a custom mask too, the page table fault is what is reported
      bad(() => p.plan({ ...paged, pagedKvLastPageLen: [4, 9], customMask: new Array(3 * 4 + 2 * 6).fill(true) }), "invalid_argument", /pagedKvLastPageLen\[1\]/);
      bad(() => p.plan({ ...paged, pagedKvIndices: [0, -1, 2] }), "invalid_argument", /pagedKvIndices\[1\]: page index must be >= 0/);
      bad(() => p.plan({ ...paged, pagedKvIndices: [0, 1] }), "invalid_argument", /pagedKvIndices: pagedKvIndptr\[2\] = 3 exceeds/);
      // outside int32: not wrapped into a valid-looking index (2^32 + 1 would become page 1)
      bad(() => p.plan({ ...paged, pagedKvIndices: [0, 2 ** 32 + 1, 2] }), "invalid_argument", /pagedKvIndices\[1\]: expected an int32 integer, got 4294967297/);
      bad(() => w.plan({ qoIndptr, kvIndptr: [0, 4, 2 ** 31], ...dims }), "invalid_argument", /kvIndptr\[2\]: expected an int32 integer/);
      bad(() => p.plan({ ...paged, pagedKvIndptr: [0, 2, 1] }), "invalid_argument", /pagedKvIndptr: must be non-decreasing/);
      bad(() => p.plan({ ...paged, pageSize: 0 }), "invalid_argument", /pageSize: expected a positive integer/);
      bad(() => p.run(fi.empty([5, 4, 64], { dtype: "float16", device }), fi.empty([3, 2, 4, 2, 64], { dtype: "float16", device })), "invalid_argument", /run: call plan\(\) first/);
    } finally {
      w.dispose();
      p.dispose();
    }
  });

  testOnDevices("run: shapes, dtypes, devices, page range; out stays untouched", (device) => {
    using ws = workspace(device);
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws);
    const p = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0, 32 << 20));
    try {
      using q = fi.randn([5, 4, 64], { dtype: "float16", device });
      using k = fi.randn([10, 2, 64], { dtype: "float16", device });
      using out = poisoned([5, 4, 64], "float16", device);
      const bad = (fn: () => unknown, re: RegExp) => expectFlashInferError(fn, "invalid_argument", re);
      bad(() => w.run(q, k, k, { out }), /run: call plan\(\) first/);
      w.plan({ qoIndptr, kvIndptr, ...dims, causal: true });
      // out / lse that are not tensors (falsy ones too) are named, not disposed as if made here
      for (const x of [0, false, "", {}]) {
        bad(() => w.run(q, k, k, { out: x as unknown as fi.Tensor }), /out: expected a live Tensor/);
        bad(() => w.run(q, k, k, { out, lse: x as unknown as fi.Tensor }), /lse: expected a live Tensor/);
      }
      using q6 = fi.randn([6, 4, 64], { dtype: "float16", device });
      bad(() => w.run(q6, k, k, { out }), /q: expected shape \[5, 4, 64\]/);
      using qb = fi.randn([5, 4, 64], { dtype: "bfloat16", device });
      bad(() => w.run(qb, k, k, { out }), /q: dtype bfloat16 differs/);
      using q2 = fi.randn([5, 4], { dtype: "float16", device });
      bad(() => w.run(q2, k, k, { out }), /q: expected \[totalQo, numQoHeads, headDimQk\]/);
      using k9 = fi.randn([9, 2, 64], { dtype: "float16", device });
      bad(() => w.run(q, k9, k9, { out }), /k: expected shape \[10, 2, 64\]/);
      using v32 = fi.randn([10, 2, 32], { dtype: "float16", device });
      bad(() => w.run(q, k, v32, { out }), /v: expected shape \[10, 2, 64\]/);
      using lse16 = fi.empty([5, 4], { dtype: "float16", device });
      bad(() => w.run(q, k, k, { out, lse: lse16 }), /lse: expected float32/);
      using outBad = poisoned([5, 4, 32], "float16", device);
      bad(() => w.run(q, k, k, { out: outBad }), /out: expected shape/);
      bad(() => w.run(q, k, k, { out, kScale: NaN }), /kScale/);
      if (device !== "cpu") {
        using qc = fi.randn([5, 4, 64], { dtype: "float16", device: "cpu" });
        bad(() => w.run(qc, k, k, { out }), /q: is on cpu/);
      }
      // paged: a page index beyond the cache
      p.plan({ qoIndptr, pagedKvIndptr: [0, 1, 3], pagedKvIndices: [0, 1, 7], pagedKvLastPageLen: [4, 2], pageSize: 4, ...dims });
      using cache = fi.randn([3, 2, 4, 2, 64], { dtype: "float16", device });
      bad(() => p.run(q, cache, { out }), /pagedKvIndices: page index 7 is out of range for a cache of 3 pages/);
      using cache2 = fi.randn([8, 2, 2, 4, 64], { dtype: "float16", device }); // HND-shaped for an NHD wrapper
      bad(() => p.run(q, cache2, { out }), /k: expected a cache of shape \[pages, 4, 2, 64\]/);
      expect(f64(out).every(Number.isNaN)).toBe(true);
    } finally {
      w.dispose();
      p.dispose();
    }
  });

  test.skipIf(!gpu)("cuda: a mask given on another device is moved to the wrapper's device", () => {
    using ws = workspace("cuda:0");
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws);
    try {
      using mask = fi.tensor(causalMask(3, 4).map(Number), [12], { dtype: "bool", device: "cpu" });
      w.plan({ qoIndptr: [0, 3], kvIndptr: [0, 4], ...dims, customMask: mask });
      using q = fi.randn([3, 4, 64], { dtype: "float16", device: "cuda:0" });
      using k = fi.randn([4, 2, 64], { dtype: "float16", device: "cuda:0" });
      using a = w.run(q, k, k) as fi.Tensor;
      using b = fi.singlePrefillWithKVCache(q, k, k, { causal: true }) as fi.Tensor;
      expectClose(f64(a), f64(b), 1e-3, 4e-3);
    } finally {
      w.dispose();
    }
  });
});


// ------------------------------------------------------------------ CUDA-graph mode

describe("useCudaGraph (paged prefill captured in a CUDA graph)", () => {
  test("options: a cpu workspace is refused, and maxTotalQo without useCudaGraph; nothing is kept [cpu]", () => {
    using ws = workspace("cpu");
    expectFlashInferError(() => new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { useCudaGraph: true, maxTotalQo: 64 }), "invalid_argument",
      /useCudaGraph: needs a CUDA workspace/);
    expectFlashInferError(() => new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { maxTotalQo: 64 }), "invalid_argument", /maxTotalQo: only with useCudaGraph/);
    expectFlashInferError(() => new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { useCudaGraph: "yes" as unknown as boolean }), "invalid_argument",
      /useCudaGraph: expected a boolean/);
    using w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD"); // the workspace is still free to take
    expect(w.useCudaGraph).toBe(false);
    expect(w.maxTotalQo).toBe(0);
  });

  const backends = [...(gpu ? ["fa2" as const] : []), ...(hopper ? ["fa3" as const] : [])];
  test.skipIf(!gpu)("a captured run replays with a new plan of the same batch size (other lengths), matching the reference; rows past the plan stay untouched", () => {
    const device = "cuda:0", P = 16, Hq = 8, Hkv = 2, D = 128, maxTotalQo = 512;
    for (const backend of backends) {
      const qoA = [37, 1, 200, 0, 64], qoB = [120, 17, 3, 90, 250];
      const kvOf = (qo: number[]) => qo.map((n) => n + randInt(0, 300));
      const kvA = kvOf(qoA), kvB = kvOf(qoB);
      const pages = Math.max(pagesFor(kvA, P), pagesFor(kvB, P)) + 2;
      const k = randomTensor(device, [pages, P, Hkv, D], "float16"), v = randomTensor(device, [pages, P, Hkv, D], "float16");
      const q = randomTensor(device, [maxTotalQo, Hq, D], "float16"), q2 = randomTensor(device, [maxTotalQo, Hq, D], "float16");
      using out = poisoned([maxTotalQo, Hq, D], "float16", device);
      using lse = poisoned([maxTotalQo, Hq], "float32", device);
      using ws = workspace(device);
      using graph = new fi.CudaGraph({ device });
      const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { useCudaGraph: true, maxTotalQo, backend });
      const tableOf = (kv: number[]) => randomPageTable(kv, P, pages);
      const dims = { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, pageSize: P, qDataType: "float16" as const, causal: true };
      const planOf = (qo: number[], table: ReturnType<typeof tableOf>) =>
        w.plan({ ...dims, qoIndptr: cumsum(qo), pagedKvIndptr: table.indptr, pagedKvIndices: table.indices, pagedKvLastPageLen: table.lastPageLen });
      const check = (qo: number[], kv: number[], table: ReturnType<typeof tableOf>, q64: Float64Array) => {
        const c: Case = { qoLens: qo, kvLens: kv, numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, pageSize: P, mask: "causal" };
        const gk = gatherPagedKV(table, { k: k.x, v: v.x }, { pageSize: P, numKvHeads: Hkv, headDim: D, layout: "NHD" });
        const inputs: Inputs = { q: q.t, q64, kv: gk, masks: null, qoIndptr: cumsum(qo), dispose: () => {} };
        const total = inputs.qoIndptr[qo.length]!;
        using o = out.slice(0, 0, total);
        using l = lse.slice(0, 0, total);
        checkBatch(c, inputs, o, l);
        using rest = out.slice(0, total, maxTotalQo);
        expect(f64(rest).every(Number.isNaN)).toBe(true); // rows past the plan: neither read nor written
      };
      try {
        withContext(`backend ${backend}, qo ${qoA} / ${qoB}, kv ${kvA} / ${kvB}`, () => {
          const tA = tableOf(kvA), tB = tableOf(kvB);
          planOf(qoA, tA);
          const info = w.planInfo!;
          expect(info).toMatchObject({ backend, totalQo: maxTotalQo, kvChunksMax: 1, numPartials: 0 });
          graph.capture(() => {
            w.run(q.t, [k.t, v.t], { out, lse });
          });
          graph.replay();
          fi.synchronize(device);
          check(qoA, kvA, tA, q.x);

          planOf(qoB, tB);
          expect(w.planInfo!.numWork).toBe(info.numWork); // the grid the graph launches
          q.t.copy_(q2.t);
          out.fill_(NaN);
          lse.fill_(NaN);
          graph.replay();
          fi.synchronize(device);
          check(qoB, kvB, tB, q2.x);

          // Refused plans leave the captured one in place.
          expectFlashInferError(() => planOf([300, 300, 0, 0, 0], tB), "invalid_argument", /qoIndptr: 600 query rows exceed .*bound of 512 \(maxTotalQo\)/);
          expectFlashInferError(() => planOf([1, 1, 1, 1], tableOf(kvB.slice(0, 4))), "invalid_argument", /keeps its batch size \(5\)/);
          expectFlashInferError(() => w.plan({ ...dims, qoIndptr: cumsum(qoB), pagedKvIndptr: tB.indptr, pagedKvIndices: tB.indices,
            pagedKvLastPageLen: tB.lastPageLen, customMask: new Array(qoB.reduce((a, n, r) => a + n * kvB[r]!, 0)).fill(true) }), "invalid_argument",
            /useCudaGraph: CUDA-graph mode takes no custom mask/);
          out.fill_(NaN);
          graph.replay();
          fi.synchronize(device);
          check(qoB, kvB, tB, q2.x);
        });
      } finally {
        w.dispose();
        for (const t of [k.t, v.t, q.t, q2.t]) t.dispose();
      }
    }
  }, 120_000);

  test.skipIf(!gpu)("maxTotalQo is required and positive on CUDA", () => {
    using ws = workspace("cuda:0");
    expectFlashInferError(() => new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { useCudaGraph: true }), "invalid_argument", /maxTotalQo: expected a positive integer/);
    expectFlashInferError(() => new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { useCudaGraph: true, maxTotalQo: 0 }), "invalid_argument", /maxTotalQo/);
  });
});

// The library under Deno (`npm run test:deno`; named without .test.ts so that bun test skips it): one test per family, on the CPU backend, against
// the same float64 references as the Bun suite (test/reference/), through the Deno.dlopen side
// of lib/ffi/backend.ts. Run by scripts/test.ts after the Bun suite; counts join its closing line.
import * as fi from "../../lib/index.ts";
import { ffi } from "../../lib/ffi/backend.ts";
import { singleDecodeReference } from "../reference/attention.ts";
import { actAndMulReference } from "../reference/activation.ts";
import { mergeStateReference } from "../reference/cascade.ts";
import { rmsnormReference } from "../reference/norm.ts";
import { singlePrefillReference, variantPrefillReference } from "../reference/prefill.ts";
import { blockSparseReference } from "../reference/sparse.ts";

// Typed locally: the project type-checks against Bun's types.
const Deno = (globalThis as unknown as { Deno: { test(name: string, fn: () => void): void } }).Deno;
const cpu = { device: "cpu" as const };

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol = 0): void {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length}, expected ${expected.length}`);
  for (let i = 0; i < expected.length; ++i) {
    const a = actual[i]!, e = expected[i]!;
    const ok = Number.isFinite(a) && Number.isFinite(e) ? Math.abs(a - e) <= atol + rtol * Math.abs(e) : Object.is(a, e);
    if (!ok) throw new Error(`element ${i}: got ${a}, expected ${e}`);
  }
}
function equal<T>(actual: T, expected: T): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) throw new Error(`got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}
const f64 = (t: fi.Tensor) => Float64Array.from(t.toFloat32Array());
const seed = () => Math.floor(Math.random() * 2 ** 31);

Deno.test("runtime: the library loads through Deno.dlopen; bad input is a FlashInferError", () => {
  equal(ffi.runtime, "deno");
  equal(typeof fi.version(), "string");
  let error: unknown;
  try {
    fi.rmsnorm(fi.zeros([2, 4], cpu), fi.zeros([5], cpu));
  } catch (e) {
    error = e;
  }
  if (!(error instanceof fi.FlashInferError) || error.code !== "invalid_argument") throw new Error(`expected an invalid_argument FlashInferError, got ${String(error)}`);
});

Deno.test("tensor: create, convert, view and copy", () => {
  using t = fi.tensor([1, 2, 3, 4, 5, 6], [2, 3], cpu);
  using h = t.to({ dtype: "float16" });
  using back = h.to({ dtype: "float32" });
  equal(Array.from(back.toFloat32Array()), [1, 2, 3, 4, 5, 6]);
  using tt = t.transpose(0, 1).contiguous();
  equal(Array.from(tt.toFloat32Array()), [1, 4, 2, 5, 3, 6]);
  using z = fi.zeros([2, 3], cpu);
  z.copy_(t);
  equal(Array.from(z.toFloat32Array()), [1, 2, 3, 4, 5, 6]);
});

Deno.test("norm: rmsnorm against the reference", () => {
  using x = fi.randn([3, 64], { ...cpu, seed: seed() });
  using w = fi.randn([64], { ...cpu, seed: seed() });
  using y = fi.rmsnorm(x, w);
  close(f64(y), rmsnormReference(f64(x), f64(w), 3, 64, 1e-6), 1e-5, 1e-5);
});

Deno.test("gemm: x @ w^T against the definition", () => {
  using x = fi.randn([3, 8], { ...cpu, seed: seed() });
  using w = fi.randn([5, 8], { ...cpu, seed: seed() });
  using y = fi.gemm(x, w, { transB: true });
  const x64 = f64(x), w64 = f64(w);
  const expected = Array.from({ length: 15 }, (_, k) => {
    const i = Math.floor(k / 5), j = k % 5;
    let s = 0;
    for (let p = 0; p < 8; ++p) s += x64[i * 8 + p]! * w64[j * 8 + p]!;
    return s;
  });
  close(y.toFloat32Array(), expected, 1e-5, 1e-6);
});

Deno.test("activation: siluAndMul against the reference", () => {
  using x = fi.randn([4, 32], { ...cpu, seed: seed() });
  using y = fi.siluAndMul(x);
  close(f64(y), actAndMulReference((v) => v / (1 + Math.exp(-v)), f64(x), 4, 16), 1e-5, 1e-5);
});

Deno.test("rope: position 0 leaves q unchanged, position 7 rotates it and keeps each pair's norm", () => {
  using q = fi.randn([2, 2, 64], { ...cpu, seed: seed() });
  using k = fi.randn([2, 2, 64], { ...cpu, seed: seed() });
  const { q: q0 } = fi.applyRopePosIds(q, k, [0, 0]);
  close(f64(q0), f64(q), 1e-6);
  const { q: q7 } = fi.applyRopePosIds(q, k, [7, 7]);
  const a = f64(q), b = f64(q7);
  for (let i = 0; i < 32; ++i) close([Math.hypot(b[i]!, b[i + 32]!)], [Math.hypot(a[i]!, a[i + 32]!)], 1e-5, 1e-5);
  if (a.every((v, i) => Math.abs(v - b[i]!) < 1e-6)) throw new Error("position 7 changed nothing");
});

Deno.test("page: getSeqLens and packbits", () => {
  equal(Array.from(fi.getSeqLens([0, 2, 3, 3], [3, 1, 0], 4).toArray() as Int32Array), [7, 1, 0]);
  using bits = fi.tensor([1, 0, 1, 1, 0, 0, 0, 1], [8], { ...cpu, dtype: "bool" });
  equal(Array.from(fi.packbits(bits, "big").toArray() as Uint8Array), [0b10110001]);
});

Deno.test("cascade: mergeState against the reference", () => {
  using vA = fi.randn([5, 2, 16], { ...cpu, seed: seed() });
  using vB = fi.randn([5, 2, 16], { ...cpu, seed: seed() });
  using sA = fi.randn([5, 2], { ...cpu, seed: seed() });
  using sB = fi.randn([5, 2], { ...cpu, seed: seed() });
  const m = fi.mergeState(vA, sA, vB, sB);
  const r = mergeStateReference(5, 2, 16, f64(vA), f64(sA), f64(vB), f64(sB));
  close(f64(m.v), r.v, 1e-5, 1e-5);
  close(f64(m.s), r.s, 1e-5, 1e-5);
});

Deno.test("decode: singleDecodeWithKVCache against the reference", () => {
  const dims = { numQoHeads: 4, numKvHeads: 2, headDim: 64 };
  using q = fi.randn([4, 64], { ...cpu, dtype: "float16", seed: seed() });
  using k = fi.randn([37, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using v = fi.randn([37, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using out = fi.singleDecodeWithKVCache(q, k, v) as fi.Tensor;
  close(f64(out), singleDecodeReference(f64(q), f64(k), f64(v), dims).out, 2e-3, 1e-2);
});

Deno.test("prefill: causal singlePrefillWithKVCache against the reference", () => {
  const dims = { numQoHeads: 4, numKvHeads: 2, headDimQk: 64, headDimVo: 64 };
  using q = fi.randn([9, 4, 64], { ...cpu, dtype: "float16", seed: seed() });
  using k = fi.randn([21, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using v = fi.randn([21, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using out = fi.singlePrefillWithKVCache(q, k, v, { causal: true }) as fi.Tensor;
  close(f64(out), singlePrefillReference(f64(q), f64(k), f64(v), dims, { causal: true }).out, 2e-3, 1e-2);
});

Deno.test("sampling: softmax, and sampling a one-hot distribution", () => {
  using logits = fi.tensor([0, 1, 2, 3], [1, 4], cpu);
  using p = fi.softmax(logits);
  const e = [0, 1, 2, 3].map(Math.exp), s = e.reduce((a, b) => a + b, 0);
  close(p.toFloat32Array(), e.map((x) => x / s), 1e-6);
  using oneHot = fi.tensor([0, 0, 1, 0, 0, 0, 0, 1], [2, 4], cpu);
  equal(Array.from(fi.samplingFromProbs(oneHot, { seed: 3 }).toArray() as Int32Array), [2, 3]);
});

Deno.test("sparse: BlockSparseAttentionWrapper against the reference", () => {
  const indptr = [0, 2, 2, 3], indices = [1, 0, 2];
  using q = fi.randn([48, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using k = fi.randn([48, 1, 64], { ...cpu, dtype: "float16", seed: seed() });
  using ws = fi.empty([16 << 20], { ...cpu, dtype: "uint8" });
  using w = new fi.BlockSparseAttentionWrapper(ws);
  w.plan({ indptr, indices, M: 48, N: 48, R: 16, C: 16, numQoHeads: 2, numKvHeads: 1, headDim: 64, qDataType: "float16" });
  using out = w.run(q, k, k) as fi.Tensor;
  const ref = blockSparseReference(f64(q), f64(k), f64(k), { M: 48, N: 48, R: 16, C: 16, indptr, indices, numQoHeads: 2, numKvHeads: 1, headDim: 64, headDimVo: 64 });
  close(f64(out), ref.out, 2e-3, 1e-2);
});

Deno.test("jit: a generated variant compiles (host C++ compiler, through node:child_process) and runs", () => {
  const v = fi.jit.attentionVariant({ name: "deno_scaled", params: { scale: "float" }, logitsTransform: "return logits * params.scale;" });
  using q = fi.randn([5, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using k = fi.randn([11, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using out = fi.singlePrefillWithKVCache(q, k, k, { variant: v, variantParams: { scale: 0.5 } }) as fi.Tensor;
  const ref = variantPrefillReference(f64(q), f64(k), f64(k), { numQoHeads: 2, numKvHeads: 2, headDimQk: 64, headDimVo: 64 }, { transform: (x) => x * 0.5 });
  close(f64(out), ref, 2e-3, 1e-2);
});

Deno.test("cascade: a 2-level MultiLevelCascadeAttentionWrapper equals the flat paged decode over the same pages", () => {
  const n = 3, P = 4, shared = [0, 1], own = [[2], [3], [4]];
  using cache = fi.randn([5, 2, P, 1, 64], { ...cpu, dtype: "float16", seed: seed() });
  using q = fi.randn([n, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using ws = fi.empty([16 << 20], { ...cpu, dtype: "uint8" });
  using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, ws, "NHD");
  cascade.plan({ qoIndptrArr: [[0, n], [0, 1, 2, 3]], pagedKvIndptrArr: [[0, 2], [0, 1, 2, 3]], pagedKvIndicesArr: [shared, own.flat()],
    pagedKvLastPageLenArr: [[P], [3, 1, 4]], numQoHeads: 2, numKvHeads: 1, headDim: 64, pageSize: P, qDataType: "float16" });
  using a = cascade.run(q, cache) as fi.Tensor;
  using ws2 = fi.empty([16 << 20], { ...cpu, dtype: "uint8" });
  using flat = new fi.BatchDecodeWithPagedKVCacheWrapper(ws2, "NHD");
  flat.plan({ indptr: [0, 3, 6, 9], indices: own.flatMap((o) => [...shared, ...o]), lastPageLen: [3, 1, 4], numQoHeads: 2, numKvHeads: 1, headDim: 64,
    pageSize: P, qDataType: "float16" });
  using b = flat.run(q, cache) as fi.Tensor;
  close(f64(a), f64(b), 2e-3, 4e-3);
});

Deno.test("pod: the prefill chunk and the decode batch equal their separate wrappers", () => {
  using cache = fi.randn([6, 2, 4, 1, 64], { ...cpu, dtype: "float16", seed: seed() });
  using qP = fi.randn([3, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  using qD = fi.randn([2, 2, 64], { ...cpu, dtype: "float16", seed: seed() });
  const dims = { numQoHeads: 2, numKvHeads: 1, headDim: 64, pageSize: 4, qDataType: "float16" as const };
  const decode = { indptr: [0, 2, 3], indices: [2, 3, 4], lastPageLen: [1, 4] };
  using ws = fi.empty([16 << 20], { ...cpu, dtype: "uint8" });
  using pod = new fi.PODWithPagedKVCacheWrapper(ws);
  pod.plan({ ...dims, ...decode, prefillQoLen: 3, prefillPages: { indices: [0, 1], lastPageLen: 3 } });
  const r = pod.run(qP, null, null, qD, cache) as { prefill: fi.Tensor; decode: fi.Tensor };
  using ws1 = fi.empty([8 << 20], { ...cpu, dtype: "uint8" }), ws2 = fi.empty([8 << 20], { ...cpu, dtype: "uint8" });
  using d = new fi.BatchDecodeWithPagedKVCacheWrapper(ws1);
  d.plan({ ...dims, ...decode });
  using p = new fi.BatchPrefillWithPagedKVCacheWrapper(ws2);
  p.plan({ numQoHeads: 2, numKvHeads: 1, headDimQk: 64, pageSize: 4, qDataType: "float16", causal: true, qoIndptr: [0, 3], pagedKvIndptr: [0, 2],
    pagedKvIndices: [0, 1], pagedKvLastPageLen: [3] });
  using dd = d.run(qD, cache) as fi.Tensor, pp = p.run(qP, cache) as fi.Tensor;
  try {
    equal(Array.from(r.decode.toFloat32Array()), Array.from(dd.toFloat32Array()));
    equal(Array.from(r.prefill.toFloat32Array()), Array.from(pp.toFloat32Array()));
  } finally {
    r.decode.dispose();
    r.prefill.dispose();
  }
});

Deno.test("mla: BatchMLAPagedAttentionWrapper against the definition; gatherRows picks rows", () => {
  const H = 2, C = 32, R = 8, P = 4, len = 7;
  using latent = fi.randn([2, P, C + R], { ...cpu, dtype: "bfloat16", seed: seed() });
  using ckv = latent.slice(2, 0, C), kpe = latent.slice(2, C, C + R);
  using qN = fi.randn([1, H, C], { ...cpu, dtype: "bfloat16", seed: seed() });
  using qR = fi.randn([1, H, R], { ...cpu, dtype: "bfloat16", seed: seed() });
  using ws = fi.empty([8 << 20], { ...cpu, dtype: "uint8" });
  using mla = new fi.BatchMLAPagedAttentionWrapper(ws);
  mla.plan({ qoIndptr: [0, 1], kvIndptr: [0, 2], kvIndices: [1, 0], kvLen: [len], numHeads: H, headDimCkv: C, headDimKpe: R, pageSize: P, smScale: 0.1 });
  using out = mla.run(qN, qR, ckv, kpe) as fi.Tensor;
  // The definition: token j lives in page [1, 0][j / P], slot j % P.
  using rows = fi.gatherRows(latent.view([2 * P, C + R]), Array.from({ length: len }, (_, j) => [1, 0][Math.floor(j / P)]! * P + (j % P)));
  const lat = f64(rows), qn = f64(qN), qr = f64(qR), expected: number[] = [];
  for (let h = 0; h < H; ++h) {
    const logits = Array.from({ length: len }, (_, j) => {
      let dot = 0;
      for (let c = 0; c < C; ++c) dot += qn[h * C + c]! * lat[j * (C + R) + c]!;
      for (let r = 0; r < R; ++r) dot += qr[h * R + r]! * lat[j * (C + R) + C + r]!;
      return dot * 0.1;
    });
    const m = Math.max(...logits), w = logits.map((x) => Math.exp(x - m)), s = w.reduce((a, b) => a + b, 0);
    for (let c = 0; c < C; ++c) expected.push(w.reduce((acc, p, j) => acc + (p / s) * lat[j * (C + R) + c]!, 0));
  }
  close(f64(out), expected, 1e-2, 1e-2);
});

// The kernel generator (lib/jit.ts): attention variants described in TypeScript, generated,
// compiled, cached and run through the prefill wrappers, against float64 references written from
// their definitions (test/reference/prefill.ts variantPrefillReference) on fresh random inputs,
// on the CPU backend and, where a GPU is present, on CUDA (built with nvcc for the device). Where
// nvcc is found without a GPU (CI), the CUDA sources are still compiled for sm_90a.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { BUILTIN_HEADER, BUILTIN_VARIANT, builtinVariantHeader, writeBuiltinVariantHeader } from "../lib/jit_builtin.ts";
import { expectClose, expectFlashInferError, gpu, testOnDevices, withContext } from "./helpers.ts";
import { type VariantIndex, type VariantReferenceOptions, variantPrefillReference } from "./reference/prefill.ts";

/** A Hopper GPU (sm_90: the wgmma "fa3" kernel) is present. */
const hopperGpu = () => gpu && fi.deviceProperties("cuda:0").computeCapability[0] === 9;

// A fresh cache for this run: the first use of each variant compiles (a cache miss); on a GPU
// each new configuration runs nvcc (about 4 s), so GPU cases get a longer timeout.
const NVCC_TIMEOUT = 120_000;
const testOnDevicesCompiling = (name: string, fn: (device: fi.Device) => void) => testOnDevices(name, fn, NVCC_TIMEOUT);
process.env.FLASHINFER_CACHE_DIR = mkdtempSync(join(tmpdir(), "fi-jit-test-"));

const sigmoid = fi.jit.attentionVariant({
  name: "sigmoid_attention",
  params: { logitsScale: "float", sigmoidBias: "float" },
  logitsTransform: "return 1.0f / (1.0f + expf(-(logits * params.logitsScale + params.sigmoidBias)));",
  useSoftmax: false,
});
// A per-head bias tensor, as learned ALiBi: bias[h] times the distance to the query's position (a
// bias constant over the keys would cancel in the softmax and test nothing).
const headBias = fi.jit.attentionVariant({
  name: "per_head_bias",
  params: { bias: "float*" },
  logitsTransform: "return logits + params.bias[qoHeadIdx] * (kvIdx - (qoIdx + kvLen - qoLen));",
});
// StreamingLLM: the first `sinks` keys stay visible beside a window of the last `window` positions.
const sinks = fi.jit.attentionVariant({
  name: "attention_sinks",
  params: { sinks: "int", window: "int" },
  logitsMask: "return kvIdx < params.sinks || kvIdx > qoIdx + (kvLen - qoLen) - params.window;",
});
// Speculative decoding: the draft tokens (the last qoLen keys) form a tree; tree[qoRow] has bit t
// set when draft token t is an ancestor of (or is) the row's token. The prefix is always visible.
const tree = fi.jit.attentionVariant({
  name: "tree_mask",
  params: { tree: "int*" },
  logitsMask: "const int draft = kvIdx - (kvLen - qoLen);\nreturn draft < 0 || ((params.tree[qoRow] >> draft) & 1) != 0;",
});

// FlashInfer's element transforms: a per-head query temperature, a key scale that depends on the
// key's position plus a per-dim offset, and a non-linear output transform (applied to split pieces
// before their merge instead of after it, it would give other numbers).
const transforms = fi.jit.attentionVariant({
  name: "element_transforms",
  params: { qScale: "float*", outGain: "float" },
  queryTransform: "return q * params.qScale[qoHeadIdx];",
  keyTransform: "return k * (1.0f + 0.125f * (kvIdx % 3)) + 0.01f * (dimIdx % 2);",
  outputTransform: "return tanhf(o * params.outGain) + 0.001f * dimIdx + 0.01f * qoIdx;",
});
const transformsReference = (qScale: ArrayLike<number>, gain: number): VariantReferenceOptions => ({
  queryTransform: (x, ix) => x * qScale[ix.qoHeadIdx]!,
  keyTransform: (x, ix, dim) => x * (1 + 0.125 * (ix.kvIdx % 3)) + 0.01 * (dim % 2),
  outputTransform: (x, ix, dim) => Math.tanh(x * gain) + 0.001 * dim + 0.01 * ix.qoIdx,
});

interface Case {
  qoLens: number[];
  kvLens: number[];
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  causal?: boolean;
  pageSize?: number;
}

const f64 = (t: fi.Tensor) => Float64Array.from(t.toFloat32Array());
const cumsum = (a: number[]) => Int32Array.from([0, ...a.map(((s) => (x: number) => (s += x))(0))]);
const seed = () => Math.floor(Math.random() * 2 ** 31);

/** The backends a variant case runs on: the CPU, or on CUDA both kernels where the Hopper one serves the head dim. */
const variantBackends = (device: fi.Device, headDim: number): fi.PrefillBackend[] =>
  device === "cpu" ? ["cpu"] : headDim === 64 || headDim === 128 ? ["fa2", "fa3"] : ["fa2"];

/**
 * Plans and runs `c` with the variant (ragged, or paged when pageSize), checks out against the
 * reference; on CUDA once per kernel (fa2, and fa3 where it serves the case).
 */
function checkVariant(device: fi.Device, c: Case, variant: fi.AttentionVariant, variantParams: Record<string, number | fi.Tensor>,
  ref: VariantReferenceOptions, atol = 3e-3): void {
  for (const backend of variantBackends(device, c.headDim)) withContext(backend, () => checkVariantOn(device, backend, c, variant, variantParams, ref, atol));
}

function checkVariantOn(device: fi.Device, backend: fi.PrefillBackend, c: Case, variant: fi.AttentionVariant,
  variantParams: Record<string, number | fi.Tensor>, ref: VariantReferenceOptions, atol: number): void {
  const { numQoHeads: Hq, numKvHeads: Hkv, headDim: D } = c;
  const qoIndptr = cumsum(c.qoLens), kvIndptr = cumsum(c.kvLens);
  const totalQo = qoIndptr[c.qoLens.length]!, totalKv = kvIndptr[c.kvLens.length]!;
  // Inputs are made on the host (the paged copy below reads them there), then copied to `device`.
  using q = fi.randn([totalQo, Hq, D], { dtype: "float16", seed: seed(), device: "cpu" });
  using k = fi.randn([totalKv, Hkv, D], { dtype: "float16", seed: seed(), device: "cpu" });
  using v = fi.randn([totalKv, Hkv, D], { dtype: "float16", seed: seed(), device: "cpu" });
  using ws = fi.empty([16 << 20], { dtype: "uint8", device });
  using out = fi.full([totalQo, Hq, D], NaN, { dtype: "float16", device });
  const q64 = f64(q), k64 = f64(k), v64 = f64(v);
  const plan = { qoIndptr, numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: c.causal ?? false, qDataType: "float16" as const, variantParams };
  using qd = q.to(device);
  if (c.pageSize) {
    // One page per pageSize keys, pages in request order: the paged cache holds the same keys.
    const P = c.pageSize, counts = c.kvLens.map((l) => Math.ceil(l / P));
    const pages = counts.reduce((a, b) => a + b, 0);
    using kc = fi.zeros([pages, P, Hkv, D], { dtype: "float16", device: "cpu" });
    using vc = fi.zeros([pages, P, Hkv, D], { dtype: "float16", device: "cpu" });
    const kh = kc.hostView() as Uint16Array, vh = vc.hostView() as Uint16Array, kb = k.hostView() as Uint16Array, vb = v.hostView() as Uint16Array;
    let page = 0;
    c.kvLens.forEach((len, r) => {
      for (let j = 0; j < len; ++j) {
        const src = (kvIndptr[r]! + j) * Hkv * D, dst = ((page + Math.floor(j / P)) * P + (j % P)) * Hkv * D;
        kh.set(kb.subarray(src, src + Hkv * D), dst);
        vh.set(vb.subarray(src, src + Hkv * D), dst);
      }
      page += counts[r]!;
    });
    using w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", { variant, backend });
    w.plan({ ...plan, pagedKvIndptr: cumsum(counts), pagedKvIndices: Int32Array.from({ length: pages }, (_, i) => i),
      pagedKvLastPageLen: c.kvLens.map((l) => (l === 0 ? 0 : l - (Math.ceil(l / P) - 1) * P)), pageSize: P });
    expect(w.planInfo!.backend).toBe(backend);
    using kd = kc.to(device), vd = vc.to(device);
    w.run(qd, [kd, vd], { out });
  } else {
    using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant, backend });
    w.plan({ ...plan, kvIndptr });
    expect(w.planInfo!.backend).toBe(backend);
    using kd = k.to(device), vd = v.to(device);
    w.run(qd, kd, vd, { out });
  }
  const got = f64(out);
  const dims = { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, headDimVo: D };
  c.qoLens.forEach((qoLen, r) => {
    const qa = qoIndptr[r]!, ka = kvIndptr[r]!;
    const expected = variantPrefillReference(q64.subarray(qa * Hq * D, (qa + qoLen) * Hq * D), k64.subarray(ka * Hkv * D, kvIndptr[r + 1]! * Hkv * D),
      v64.subarray(ka * Hkv * D, kvIndptr[r + 1]! * Hkv * D), dims, { ...ref, causal: c.causal, batchIdx: r, qoRow0: qa });
    withContext(`request ${r} (qoLen ${qoLen}, kvLen ${c.kvLens[r]})`, () =>
      expectClose(got.subarray(qa * Hq * D, (qa + qoLen) * Hq * D), expected, atol, 1e-2));
  });
}

const sigmoidOf = (scale: number, bias: number) => (x: number) => 1 / (1 + Math.exp(-(x * scale + bias)));

describe("generated variants against their definitions", () => {
  testOnDevicesCompiling("sigmoid attention (no softmax): ragged and paged, causal and not, odd lengths, split rows", (device) => {
    const s = 0.5 + Math.random(), b = -2 + Math.random();
    for (const c of [
      { qoLens: [1, 7, 16, 0], kvLens: [5, 7, 40, 3], numQoHeads: 4, numKvHeads: 2, headDim: 64, causal: true },
      { qoLens: [33], kvLens: [300], numQoHeads: 2, numKvHeads: 1, headDim: 64 }, // few items: the scheduler splits keys
      { qoLens: [9, 17], kvLens: [17, 40], numQoHeads: 6, numKvHeads: 2, headDim: 128, causal: true, pageSize: 16 },
    ] as Case[]) {
      withContext(JSON.stringify(c), () => checkVariant(device, c, sigmoid, { logitsScale: s, sigmoidBias: b }, { transform: sigmoidOf(s, b), useSoftmax: false }, 2e-2));
    }
  });

  testOnDevicesCompiling("a per-head logits bias tensor", (device) => {
    const c: Case = { qoLens: [5, 12], kvLens: [9, 12], numQoHeads: 8, numKvHeads: 2, headDim: 64, causal: true };
    const biases = Array.from({ length: 8 }, () => Math.random() - 0.5);
    using bias = fi.tensor(Float32Array.from(biases), [biases.length], { device });
    const f32 = Float32Array.from(biases);
    checkVariant(device, c, headBias, { bias }, { transform: (x, ix) => x + f32[ix.qoHeadIdx]! * (ix.kvIdx - (ix.qoIdx + ix.kvLen - ix.qoLen)) });
  });

  testOnDevicesCompiling("attention sinks (StreamingLLM): a few first keys plus a window, with causal", (device) => {
    const c: Case = { qoLens: [20, 3], kvLens: [60, 3], numQoHeads: 4, numKvHeads: 4, headDim: 64, causal: true, pageSize: 5 };
    checkVariant(device, c, sinks, { sinks: 4, window: 8 }, { mask: (ix: VariantIndex) => ix.kvIdx < 4 || ix.kvIdx > ix.qoIdx + (ix.kvLen - ix.qoLen) - 8 });
  });

  testOnDevicesCompiling("a tree mask for speculative decoding", (device) => {
    // Two requests, each with a prefix and a draft tree: parent[t] of draft token t (-1: root).
    const parents = [[-1, 0, 0, 1, 1, 2], [-1, 0, 1]];
    const prefix = [10, 4];
    const rows: number[] = [];
    for (const par of parents) {
      for (let t = 0; t < par.length; ++t) {
        let bits = 0;
        for (let a = t; a >= 0; a = par[a]!) bits |= 1 << a;
        rows.push(bits);
      }
    }
    const c: Case = { qoLens: parents.map((p) => p.length), kvLens: parents.map((p, r) => p.length + prefix[r]!), numQoHeads: 4, numKvHeads: 2, headDim: 64 };
    using treeBits = fi.tensor(Int32Array.from(rows), [rows.length], { device });
    checkVariant(device, c, tree, { tree: treeBits }, {
      mask: (ix) => {
        const draft = ix.kvIdx - (ix.kvLen - ix.qoLen);
        return draft < 0 || ((rows[ix.qoRow]! >> draft) & 1) !== 0;
      },
    });
  });

  testOnDevicesCompiling("a mask-only variant keeps the built-in transform: with an always-true mask it equals the built-in kernel bit for bit", (device) => {
    const open = fi.jit.attentionVariant({ name: "open_mask", logitsMask: "return true;" });
    const opts = { qoIndptr: [0, 7, 20], kvIndptr: [0, 9, 40], numQoHeads: 4, numKvHeads: 2, headDimQk: 64, causal: true, logitsSoftCap: 3,
      posEncodingMode: "ALIBI" as const, qDataType: "float16" as const };
    using q = fi.randn([20, 4, 64], { dtype: "float16", seed: seed(), device });
    using k = fi.randn([40, 2, 64], { dtype: "float16", seed: seed(), device });
    using ws = fi.empty([16 << 20], { dtype: "uint8", device });
    // On CUDA both kernels, each pinned for the built-in run and the variant's.
    for (const backend of variantBackends(device, 64)) {
      const outs = [undefined, open].map((variant) => {
        using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", variant ? { variant, backend } : { backend });
        w.plan(opts);
        using o = w.run(q, k, k) as fi.Tensor;
        return Array.from(o.toFloat32Array());
      });
      withContext(backend, () => {
        expect(outs[0]!.every(Number.isFinite)).toBe(true);
        expect(outs[1]).toEqual(outs[0]!);
      });
    }
  });
});

/** A random paged cache for requests of these lengths (pages in request order) and each request's keys and values in float64. */
function decodeCase(device: fi.Device, lens: number[], Hq: number, Hkv: number, D: number, P: number) {
  const counts = lens.map((l) => Math.ceil(l / P)), pages = counts.reduce((a, b) => a + b, 0);
  const q = fi.randn([lens.length, Hq, D], { dtype: "float16", seed: seed(), device });
  const cache = fi.randn([pages, 2, P, Hkv, D], { dtype: "float16", seed: seed(), device });
  const c64 = f64(cache);
  let page = 0;
  const kv = lens.map((len, r) => {
    const k = new Float64Array(len * Hkv * D), v = new Float64Array(len * Hkv * D);
    for (let j = 0; j < len; ++j) {
      const base = ((page + Math.floor(j / P)) * 2 * P + (j % P)) * Hkv * D;
      k.set(c64.subarray(base, base + Hkv * D), j * Hkv * D);
      v.set(c64.subarray(base + P * Hkv * D, base + P * Hkv * D + Hkv * D), j * Hkv * D);
    }
    page += counts[r]!;
    return { k, v };
  });
  const plan = { indptr: cumsum(counts), indices: Int32Array.from({ length: pages }, (_, i) => i),
    lastPageLen: lens.map((l) => (l === 0 ? 0 : l - (Math.ceil(l / P) - 1) * P)), numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P };
  return { q, cache, kv, plan, [Symbol.dispose]: () => { q.dispose(); cache.dispose(); } };
}

describe("element transforms (query, key, output)", () => {
  testOnDevicesCompiling("against their definition: ragged and paged, causal, split rows; every element written", (device) => {
    const qScale = Float32Array.from({ length: 4 }, () => 0.5 + Math.random());
    const gain = 0.5 + Math.random();
    using qs = fi.tensor(qScale, [4], { device });
    for (const c of [
      { qoLens: [3, 17, 1, 0], kvLens: [5, 64, 129, 4], numQoHeads: 4, numKvHeads: 2, headDim: 64, causal: true },
      { qoLens: [33], kvLens: [300], numQoHeads: 4, numKvHeads: 1, headDim: 64 }, // few items: the scheduler splits keys
      { qoLens: [9, 2], kvLens: [17, 40], numQoHeads: 4, numKvHeads: 1, headDim: 128, pageSize: 5 },
    ] as Case[]) {
      // On CUDA: the mma.sync kernel, and on a Hopper GPU the wgmma kernel too (asked for: auto keeps fa2).
      const backends: fi.PrefillBackend[] = device === "cpu" ? ["cpu"] : hopperGpu() ? ["fa2", "fa3"] : ["fa2"];
      for (const backend of backends)
        withContext(`${JSON.stringify(c)} on ${backend}`, () =>
          checkVariantOn(device, backend, c, transforms, { qScale: qs, outGain: gain }, transformsReference(qScale, gain), 3e-3));
    }
  });

  testOnDevicesCompiling("in the decode wrapper: every group (the CUDA-core kernel runs them), split requests", (device) => {
    const P = 16, D = 64;
    for (const [Hq, Hkv] of [[8, 2], [4, 4]] as const) {
      const lens = [1, 17, 0, 900, 40];
      const qScale = Float32Array.from({ length: Hq }, () => 0.5 + Math.random());
      const gain = 0.5 + Math.random();
      using qs = fi.tensor(qScale, [Hq], { device });
      using c = decodeCase(device, lens, Hq, Hkv, D, P);
      using ws = fi.empty([16 << 20], { dtype: "uint8", device });
      using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", { variant: transforms });
      w.plan({ ...c.plan, variantParams: { qScale: qs, outGain: gain } });
      // The plan sends the variant to the CUDA-core decode kernel whatever the group size.
      expect(w.planInfo!.kernel).toBe(device === "cpu" ? "cpu" : "decode");
      using out = fi.full([lens.length, Hq, D], NaN, { dtype: "float16", device });
      w.run(c.q, c.cache, { out });
      const got = f64(out), q64 = f64(c.q);
      lens.forEach((len, r) => {
        const expected = variantPrefillReference(q64.subarray(r * Hq * D, (r + 1) * Hq * D), c.kv[r]!.k, c.kv[r]!.v,
          { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, headDimVo: D }, { ...transformsReference(qScale, gain), batchIdx: r, qoRow0: r });
        withContext(`group ${Hq / Hkv} request ${r} (kvLen ${len})`, () => expectClose(got.subarray(r * Hq * D, (r + 1) * Hq * D), expected, 3e-3, 1e-2));
      });
    }
  });

  test("a variant with transforms is accepted with every backend (fa3 runs its hooks too); hasElementTransforms says which variants have them", () => {
    using ws = fi.empty([1 << 20], { dtype: "uint8", device: "cpu" });
    for (const backend of ["auto", "fa2", "fa3", "cpu"] as const) {
      new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant: transforms, backend }).dispose();
      new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", { variant: transforms, backend }).dispose();
    }
    expect(transforms.hasElementTransforms).toBe(true);
    expect(sigmoid.hasElementTransforms).toBe(false);
    for (const key of ["queryTransform", "keyTransform", "outputTransform"] as const)
      expect(() => fi.jit.attentionVariant({ name: "bad", [key]: 42 } as unknown as fi.AttentionVariantSpec)).toThrow(new RegExp(`${key}: expected C\\+\\+ source text`));
  });

  test.skipIf(!gpu)("CUDA: auto keeps a transforms variant on fa2 where fa3 would serve (1024 rows per request) [cuda]", () => {
    using ws = fi.empty([64 << 20], { dtype: "uint8", device: "cuda:0" });
    using qs = fi.tensor(Float32Array.from([1, 1, 1, 1]), [4], { device: "cuda:0" });
    const plan = { qoIndptr: [0, 1100], kvIndptr: [0, 1100], numQoHeads: 4, numKvHeads: 4, headDimQk: 128, qDataType: "float16" as const };
    using plain = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD");
    plain.plan(plan);
    const hopper = plain.planInfo!.backend === "fa3";
    using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant: transforms });
    w.plan({ ...plan, variantParams: { qScale: qs, outGain: 1 } });
    expect(w.planInfo!.backend).toBe("fa2");
    expect(w.planInfo!.kernel).toBe("fa2");
    if (fi.deviceProperties("cuda:0").computeCapability[0] === 9) expect(hopper).toBe(true);
  });
});

describe("generated variants in the decode wrapper (the plan's kernel built with the hooks: the CUDA decode kernels, the CPU backend)", () => {
  testOnDevicesCompiling("sigmoid, attention sinks and a per-head bias tensor against their definitions: tensor-core and CUDA-core groups, split requests, odd lengths", (device) => {
    const s = 0.5 + Math.random(), b = -1;
    const P = 16, D = 64;
    // Groups of 4 and 6 take the tensor-core kernel on CUDA (6: padded rows), a group of 2 the
    // CUDA-core one; the 900-key request is split and merged (on the CPU, where the scheduler
    // has fewer slots to fill, with one kv head).
    let splits = 0;
    for (const [Hq, Hkv] of [[8, 2], [6, 1], [6, 3]] as const) {
      const lens = [1, 16, 17, 40, 0, 3, 900];
      using c = decodeCase(device, lens, Hq, Hkv, D, P);
      const q64 = f64(c.q);
      const biases = Float32Array.from({ length: Hq }, () => Math.random() - 0.5);
      using bias = fi.tensor(biases, [Hq], { device });
      for (const [variant, variantParams, ref] of [
        [sigmoid, { logitsScale: s, sigmoidBias: b }, { transform: sigmoidOf(s, b), useSoftmax: false }],
        [sinks, { sinks: 2, window: 5 }, { mask: (ix: VariantIndex) => ix.kvIdx < 2 || ix.kvIdx > ix.qoIdx + (ix.kvLen - ix.qoLen) - 5 }],
        [headBias, { bias }, { transform: (x: number, ix: VariantIndex) => x + biases[ix.qoHeadIdx]! * (ix.kvIdx - (ix.qoIdx + ix.kvLen - ix.qoLen)) }],
      ] as [fi.AttentionVariant, Record<string, number | fi.Tensor>, VariantReferenceOptions][]) {
        using ws = fi.empty([16 << 20], { dtype: "uint8", device });
        using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", { variant });
        w.plan({ ...c.plan, variantParams });
        expect(w.planInfo!.batchSize).toBe(lens.length);
        // One engine: the variant library's one entry runs the plan's kernel, the decode kernels included.
        expect(w.planInfo!.kernel).toBe(device === "cpu" ? "cpu" : Hq / Hkv >= 4 ? "decode_tc" : "decode");
        splits += w.planInfo!.numPartials > 0 ? 1 : 0;
        using out = fi.full([lens.length, Hq, D], NaN, { dtype: "float16", device });
        w.run(c.q, c.cache, { out });
        const got = f64(out);
        lens.forEach((len, r) => {
          const expected = variantPrefillReference(q64.subarray(r * Hq * D, (r + 1) * Hq * D), c.kv[r]!.k, c.kv[r]!.v,
            { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, headDimVo: D }, { ...ref, batchIdx: r, qoRow0: r });
          withContext(`${variant.name} group ${Hq / Hkv} request ${r} (kvLen ${len})`, () =>
            expectClose(got.subarray(r * Hq * D, (r + 1) * Hq * D), expected, 2e-2, 1e-2));
        });
      }
    }
    expect(splits).toBeGreaterThanOrEqual(3); // a split plan for each variant: their merges ran
  });

  testOnDevicesCompiling("a variant without hooks, and one with an always-true mask, equal the built-in decode bit for bit (ALiBi and soft cap kept)", (device) => {
    const none = fi.jit.attentionVariant({ name: "no_hooks" });
    const open = fi.jit.attentionVariant({ name: "open_mask_decode", logitsMask: "return true;" });
    for (const [Hq, Hkv] of [[8, 2], [4, 2]] as const) {
      using c = decodeCase(device, [5, 33, 600, 1], Hq, Hkv, 64, 16);
      const outs = [undefined, none, open].map((variant) => {
        using ws = fi.empty([16 << 20], { dtype: "uint8", device });
        using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", variant ? { variant } : {});
        w.plan({ ...c.plan, logitsSoftCap: 7, posEncodingMode: "ALIBI" });
        using o = w.run(c.q, c.cache) as fi.Tensor;
        return Array.from(o.toFloat32Array());
      });
      withContext(`group ${Hq / Hkv}`, () => {
        expect(outs[0]!.every(Number.isFinite)).toBe(true);
        expect(outs[1]).toEqual(outs[0]!);
        expect(outs[2]).toEqual(outs[0]!);
      });
    }
  });
});

describe("generated variants in singlePrefillWithKVCache", () => {
  testOnDevicesCompiling("the per-head bias variant, NHD and HND, against its definition", (device) => {
    const Hq = 4, Hkv = 2, D = 64, qoLen = 9, kvLen = 21;
    using bias = fi.tensor(Float32Array.from({ length: Hq }, () => Math.random() - 0.5), [Hq], { device });
    using q = fi.randn([qoLen, Hq, D], { dtype: "float16", seed: seed(), device });
    using k = fi.randn([kvLen, Hkv, D], { dtype: "float16", seed: seed(), device });
    using v = fi.randn([kvLen, Hkv, D], { dtype: "float16", seed: seed(), device });
    const f32 = Float32Array.from(bias.toFloat32Array());
    const expected = variantPrefillReference(f64(q), f64(k), f64(v), { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, headDimVo: D },
      { causal: true, transform: (x, ix) => x + f32[ix.qoHeadIdx]! * (ix.kvIdx - (ix.qoIdx + ix.kvLen - ix.qoLen)) });
    for (const kvLayout of ["NHD", "HND"] as const) {
      using kl = kvLayout === "NHD" ? k.view([kvLen, Hkv, D]) : k.transpose(0, 1).contiguous();
      using vl = kvLayout === "NHD" ? v.view([kvLen, Hkv, D]) : v.transpose(0, 1).contiguous();
      using out = fi.singlePrefillWithKVCache(q, kl, vl, { causal: true, kvLayout, variant: headBias, variantParams: { bias } }) as fi.Tensor;
      withContext(kvLayout, () => expectClose(f64(out), expected, 3e-3, 1e-2));
    }
  });
});

// The library's own variant (ALiBi, soft cap), generated ahead of time by the build from its
// description (lib/jit_builtin.ts): every attention test's kernels include what it generated.
describe("the built-in variant, generated at build time", () => {
  test("the header the library was built with is the generator's output for the description", () => {
    const path = join(import.meta.dir, "..", "native", "src", "attention", BUILTIN_HEADER);
    const text = readFileSync(path, "utf8");
    expect(text).toBe(builtinVariantHeader());
    // The snippet sits inside, under its own #line name (compiler messages point at the description).
    expect(text).toContain(`#line 1 "${BUILTIN_VARIANT.name}.logitsTransform"`);
    for (const line of BUILTIN_VARIANT.logitsTransform.split("\n")) expect(text).toContain(line);
  });

  test("missing or stale, it is written again; unchanged, it is left alone (nothing rebuilds)", () => {
    const native = mkdtempSync(join(tmpdir(), "fi-builtin-"));
    mkdirSync(join(native, "src", "attention"), { recursive: true });
    const path = join(native, "src", "attention", BUILTIN_HEADER);
    expect(writeBuiltinVariantHeader(native)).toBe(true);
    expect(readFileSync(path, "utf8")).toBe(builtinVariantHeader());
    expect(writeBuiltinVariantHeader(native)).toBe(false);
    writeFileSync(path, "// stale\n");
    expect(writeBuiltinVariantHeader(native)).toBe(true);
    expect(readFileSync(path, "utf8")).toBe(builtinVariantHeader());
  });

  test("compiled on its own (double, as the CPU backend does), it is ALiBi then the tanh soft cap, from the definition", () => {
    const dir = mkdtempSync(join(tmpdir(), "fi-builtin-run-"));
    writeFileSync(join(dir, BUILTIN_HEADER), builtinVariantHeader());
    // Cases: logit, slope, cap, qoPos, kvIdx.
    const cases: [number, number, number, number, number][] = [
      [0.75, 0, 0, 9, 3], [0.75, 0.25, 0, 9, 3], [-2.5, 0, 4, 0, 0], [3.1, 0.125, 5, 100, 37], [40, 0, 30, 1, 1],
    ];
    const program = [
      `#include <cstdio>`,
      `#include "${BUILTIN_HEADER}"`,
      `int main() {`,
      ...cases.map(([x, a, c, qpos, kv]) =>
        `  std::printf("%.17g\\n", fi::builtin_logits<double>(${x}, ${a}, ${c}, ${c > 0 ? 1 / c : 0}, 0, 0, ${qpos}, ${kv}, 0, 0, 1, ${qpos + 1}, 0));`),
      `}`,
    ].join("\n");
    writeFileSync(join(dir, "main.cpp"), program);
    const cxx = process.env.CXX || "c++";
    const built = spawnSync(cxx, ["-std=c++17", "-O1", "-I", dir, "-o", join(dir, "main"), join(dir, "main.cpp")], { encoding: "utf8" });
    expect(built.stderr).toBe("");
    expect(built.status).toBe(0);
    const got = spawnSync(join(dir, "main"), { encoding: "utf8" }).stdout.trim().split("\n").map(Number);
    const want = cases.map(([x, a, c, qpos, kv]) => {
      const biased = x + a * (kv - qpos);
      return c > 0 ? c * Math.tanh(biased / c) : biased;
    });
    expect(got.length).toBe(want.length);
    for (let i = 0; i < want.length; ++i) expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(1e-12 * Math.max(1, Math.abs(want[i]!)));
  });
});

describe("generator: compile, cache and errors", () => {
  test("one entry per library: fi_variant_entry serves every plan (decode plans included); no separate decode entry or CPU decode backend", () => {
    const cuda = sigmoid.cudaSource({ headDimQk: 128, headDimVo: 128, qDataType: "bfloat16", kvKind: "16bit", arch: "90a" });
    for (const source of [sigmoid.source, cuda]) {
      expect(source).not.toContain("fi_variant_decode_entry");
      expect(source).not.toContain("decode_cpu.h");
    }
    expect(sigmoid.source).toContain(`#include "attention/prefill_cpu.h"`);
    expect(sigmoid.source).toContain("fi_variant_entry");
    expect(sigmoid.source).not.toContain("run_decode");
    // The CUDA source gives the entry macro both hook sets: the decode kernels keep their own parameter type.
    expect(cuda).toContain("FI_VARIANT_CUDA_ENTRY(fi_variant::Variant, fi_variant::DecodeVariant)");
  });

  test("a compile error names the snippet and its line, and carries the compiler's message", () => {
    const bad = fi.jit.attentionVariant({ name: "broken", logitsTransform: "double y = logits;\nreturn y +;" });
    let error: unknown;
    try {
      fi.jit.precompile(bad);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(fi.FlashInferError);
    expect((error as fi.FlashInferError).code).toBe("compile_error");
    expect((error as Error).message).toMatch(/variant "broken"/);
    expect((error as Error).message).toMatch(/logitsTransform:2:\d+: error/);
  });

  test("cache: a hit loads without compiling; a corrupted entry is rebuilt; a new cache dir misses", () => {
    const v = fi.jit.attentionVariant({ name: "cache_probe", params: { shift: "float" }, logitsTransform: "return logits + params.shift;" });
    fi.jit.precompile(v); // miss: compiles
    const dir = fi.jit.cacheDir();
    const file = readdirSync(dir).find((f) => f.startsWith("prefill_cpu_cache_probe_") && f.endsWith(".so"))!;
    expect(file).toBeDefined();
    const built = statSync(join(dir, file)).mtimeMs;
    const t0 = performance.now();
    fi.jit.precompile(v); // hit (and already loaded in this process)
    expect(performance.now() - t0).toBeLessThan(50);
    expect(statSync(join(dir, file)).mtimeMs).toBe(built);
    // Another process: loads the cached file, no compile; then a truncated file is rebuilt.
    const probe = (env: Record<string, string>) => spawnSync(process.execPath, ["-e", `
      import * as fi from ${JSON.stringify(join(import.meta.dir, "..", "lib", "index.ts"))};
      const v = fi.jit.attentionVariant({ name: "cache_probe", params: { shift: "float" }, logitsTransform: "return logits + params.shift;" });
      fi.jit.precompile(v); console.log("ok");`], { env: { ...process.env, ...env }, encoding: "utf8" });
    expect(probe({}).stdout).toContain("ok");
    expect(statSync(join(dir, file)).mtimeMs).toBe(built);
    truncateSync(join(dir, file), 100);
    const fixed = probe({});
    expect(fixed.stdout + fixed.stderr).toContain("ok");
    expect(statSync(join(dir, file)).size).toBeGreaterThan(100);
    const fresh = mkdtempSync(join(tmpdir(), "fi-jit-miss-"));
    expect(probe({ FLASHINFER_CACHE_DIR: fresh }).stdout).toContain("ok");
    expect(readdirSync(fresh).some((f) => f.startsWith("prefill_cpu_cache_probe_") && f.endsWith(".so"))).toBe(true);
  });

  test("two processes compiling the same variant at once both succeed and leave one library", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fi-jit-race-"));
    const script = `
      import * as fi from ${JSON.stringify(join(import.meta.dir, "..", "lib", "index.ts"))};
      const v = fi.jit.attentionVariant({ name: "race_probe", logitsTransform: "return 2.0 * logits;" });
      fi.jit.precompile(v); console.log("ok");`;
    const run = () => Bun.spawn([process.execPath, "-e", script], { env: { ...process.env, FLASHINFER_CACHE_DIR: dir }, stdout: "pipe", stderr: "pipe" });
    const procs = [run(), run()];
    const outs = await Promise.all(procs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
    for (const o of outs) {
      expect(o.err).toBe("");
      expect(o.code).toBe(0);
      expect(o.out).toContain("ok");
    }
    const libs = readdirSync(dir).filter((f) => f.endsWith(".so"));
    expect(libs.length).toBe(1);
    expect(readdirSync(dir).filter((f) => f.includes(".tmp")).length).toBe(0);
  });

  test("bad descriptions and parameters throw FlashInferErrors naming them; nothing runs", () => {
    expectFlashInferError(() => fi.jit.attentionVariant({ name: "no spaces" }), "invalid_argument", /name/);
    expectFlashInferError(() => fi.jit.attentionVariant({ name: "v", params: { logits: "float" } }), "invalid_argument", /params\.logits/);
    expectFlashInferError(() => fi.jit.attentionVariant({ name: "v", params: { x: "double" as fi.VariantParamType } }), "invalid_argument", /params\.x/);
    expectFlashInferError(() => fi.jit.attentionVariant({ name: "v", useSoftmax: false }), "invalid_argument", /useSoftmax/);
    using ws = fi.empty([16 << 20], { dtype: "uint8" });
    const plan = { qoIndptr: [0, 3], kvIndptr: [0, 5], numQoHeads: 2, numKvHeads: 1, headDimQk: 64, qDataType: "float16" as const };
    using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant: sigmoid });
    expectFlashInferError(() => w.plan({ ...plan, variantParams: { logitsScale: 1 } }), "invalid_argument", /variantParams\.sigmoidBias: missing/);
    expectFlashInferError(() => w.plan({ ...plan, variantParams: { logitsScale: 1, sigmoidBias: NaN } }), "invalid_argument", /sigmoidBias/);
    expectFlashInferError(() => w.plan({ ...plan, variantParams: { logitsScale: 1, sigmoidBias: 0, extra: 1 } }), "invalid_argument", /variantParams\.extra/);
    expectFlashInferError(() => w.plan({ ...plan, logitsSoftCap: 5, variantParams: { logitsScale: 1, sigmoidBias: 0 } }), "invalid_argument", /logitsTransform/);
    using hb = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant: headBias });
    using intBias = fi.tensor(Int32Array.from([1, 2]));
    expectFlashInferError(() => hb.plan({ ...plan, variantParams: { bias: intBias } }), "invalid_argument", /variantParams\.bias: expected a contiguous float32/);
    using plain = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws);
    expectFlashInferError(() => plain.plan({ ...plan, variantParams: { a: 1 } }), "invalid_argument", /no variant/);
    // no softmax: no lse, and the poisoned out stays untouched
    w.plan({ ...plan, variantParams: { logitsScale: 1, sigmoidBias: 0 } });
    using q = fi.randn([3, 2, 64], { dtype: "float16" });
    using k = fi.randn([5, 1, 64], { dtype: "float16" });
    using out = fi.full([3, 2, 64], NaN, { dtype: "float16" });
    expectFlashInferError(() => w.run(q, k, k, { out, returnLse: true }), "invalid_argument", /lse: a variant without softmax/);
    expect(Array.from(out.toFloat32Array()).every(Number.isNaN)).toBe(true);
  });

  test.skipIf(!gpu)("CUDA: pointer parameters must live on the wrapper's device; fa3 is refused where it does not serve the plan [cuda]", () => {
    using ws = fi.empty([16 << 20], { dtype: "uint8", device: "cuda:0" });
    using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant: headBias });
    using hostBias = fi.tensor(Float32Array.from([1, 2]), [2], { device: "cpu" });
    const plan = { qoIndptr: [0, 3], kvIndptr: [0, 5], numQoHeads: 2, numKvHeads: 1, headDimQk: 64, qDataType: "float16" as const };
    expectFlashInferError(() => w.plan({ ...plan, variantParams: { bias: hostBias } }), "invalid_argument", /variantParams\.bias: .*on cuda:0/);
    using bias = hostBias.to("cuda:0");
    w.plan({ ...plan, variantParams: { bias } });
    expect(w.planInfo!.backend).toBe("fa2"); // auto: a short request
    expectFlashInferError(() => w.plan({ ...plan, headDimQk: 96, variantParams: { bias } }), "unsupported", /headDimQk/);
    using w3 = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", { variant: headBias, backend: "fa3" });
    expectFlashInferError(() => w3.plan({ ...plan, headDimQk: 256, variantParams: { bias } }), "unsupported", /fa3|head dims/);
  });
});

// nvcc without a GPU (CI): the CUDA sources still compile, and their errors name the snippet.
const nvcc = [process.env.NVCC, Bun.which("nvcc"), "/usr/local/cuda/bin/nvcc"].some((p) => !!p && existsSync(p));

describe("generator: CUDA sources", () => {
  test.skipIf(!nvcc)("each test variant compiles with nvcc for sm_90a (no GPU needed), in seconds", () => {
    for (const variant of [sigmoid, headBias, sinks, tree, transforms]) {
      const t0 = performance.now();
      fi.jit.precompile(variant, { arch: "90a", headDimQk: 128, qDataType: "bfloat16" });
      const seconds = (performance.now() - t0) / 1000;
      expect(seconds).toBeLessThan(120); // the bound for the 2-core CPU machine
    }
    const names = readdirSync(fi.jit.cacheDir()).filter((f) => f.startsWith("prefill_sm90a_d128_128_bfloat16_16bit_") && f.endsWith(".so"));
    expect(names.length).toBe(5);
  }, 600_000);

  test.skipIf(!nvcc)("an nvcc error names the snippet and its line", () => {
    const bad = fi.jit.attentionVariant({ name: "broken_cuda", logitsMask: "bool seen = true;\nreturn seen +;" });
    let error: unknown;
    try {
      fi.jit.precompile(bad, { arch: "90a", headDimQk: 64 });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(fi.FlashInferError);
    expect((error as fi.FlashInferError).code).toBe("compile_error");
    expect((error as Error).message).toMatch(/variant "broken_cuda": nvcc rejected it/);
    expect((error as Error).message).toMatch(/logitsMask\(2\): error/);
  }, 120_000);

  test("a CUDA build for a configuration the kernels lack is refused before compiling", () => {
    expectFlashInferError(() => fi.jit.precompile(sigmoid, { arch: "90a", headDimQk: 96 }), "unsupported", /headDimQk, headDimVo/);
    expectFlashInferError(() => fi.jit.precompile(sigmoid, { arch: "90a", headDimQk: 64, qDataType: "float32" }), "unsupported", /qDataType/);
    expectFlashInferError(() => fi.jit.precompile(sigmoid, { arch: "sm 90", headDimQk: 64 }), "invalid_argument", /arch/);
  });
});

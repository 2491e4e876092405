// Block-sparse attention (fi.BlockSparseAttentionWrapper) against the float64 definition
// (test/reference/sparse.ts) on fresh random patterns: densities 0 to 1, empty block rows, block
// sizes R, C from 1 to 64, causal and per-block masks, GQA groups, head dims, dtypes; and variable
// per-head block sizes (fi.VariableBlockSparseAttentionWrapper); on the CPU backend and, where a
// GPU is present, on CUDA ("auto", and pinned to "fa2").
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { attentionAtol, expectClose, expectFlashInferError, gpu, testOnDevices, withContext } from "./helpers.ts";
import { blockSparseReference, maskedAttention } from "./reference/sparse.ts";

interface Case {
  blockRows: number;
  blockCols: number;
  R: number;
  C: number;
  density: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  dtype: "float16" | "bfloat16";
  /** A float8 KV cache (default: q's dtype). */
  kvDtype?: "float8_e4m3fn" | "float8_e5m2";
  causal?: boolean;
  withMask?: boolean;
  logitsSoftCap?: number;
}

const seed = () => Math.floor(Math.random() * 2 ** 31);

/** A random BSR pattern: each block present with probability `density`, columns shuffled per row. */
function randomPattern(blockRows: number, blockCols: number, density: number) {
  const indptr = [0], indices: number[] = [];
  for (let i = 0; i < blockRows; ++i) {
    const cols = Array.from({ length: blockCols }, (_, j) => j).filter(() => Math.random() < density);
    for (let a = cols.length - 1; a > 0; --a) {
      const b = Math.floor(Math.random() * (a + 1));
      [cols[a], cols[b]] = [cols[b]!, cols[a]!];
    }
    indices.push(...cols);
    indptr.push(indices.length);
  }
  return { indptr: Int32Array.from(indptr), indices: Int32Array.from(indices) };
}

function check(device: fi.Device, c: Case, backend: fi.PrefillBackend = "auto"): void {
  const M = c.blockRows * c.R, N = c.blockCols * c.C, { numQoHeads: Hq, numKvHeads: Hkv, headDim: D } = c;
  const { indptr, indices } = randomPattern(c.blockRows, c.blockCols, c.density);
  const nnz = indptr[c.blockRows]!;
  const mask = c.withMask ? Array.from({ length: nnz * c.R * c.C }, () => Math.random() < 0.7) : undefined;
  using q = fi.randn([M, Hq, D], { dtype: c.dtype, seed: seed(), device });
  using k16 = fi.randn([N, Hkv, D], { dtype: c.dtype, seed: seed(), device });
  using v16 = fi.randn([N, Hkv, D], { dtype: c.dtype, seed: seed(), device });
  using k = k16.to({ dtype: c.kvDtype ?? c.dtype });
  using v = v16.to({ dtype: c.kvDtype ?? c.dtype });
  using ws = fi.empty([64 << 20], { dtype: "uint8", device });
  using out = fi.full([M, Hq, D], NaN, { dtype: c.dtype, device });
  using lse = fi.full([M, Hq], NaN, { dtype: "float32", device });
  using w = new fi.BlockSparseAttentionWrapper(ws, { backend });
  w.plan({ indptr, indices, M, N, R: c.R, C: c.C, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, mask, causal: c.causal,
    logitsSoftCap: c.logitsSoftCap, qDataType: c.dtype, kvDataType: c.kvDtype });
  w.run(q, k, v, { out, lse });
  const ref = blockSparseReference(q.toFloat32Array(), k.toFloat32Array(), v.toFloat32Array(), {
    M, N, R: c.R, C: c.C, indptr, indices, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, headDimVo: D, mask, causal: c.causal,
    logitsSoftCap: c.logitsSoftCap,
  });
  withContext(`out (${w.planInfo!.backend})`, () => expectClose(out.toFloat32Array(), ref.out, attentionAtol(3e-3, ref.magnitude, c.dtype), 1e-2));
  withContext("lse", () => expectClose(lse.toFloat32Array(), ref.lse, 2e-3, 1e-3));
}

const base = { numQoHeads: 4, numKvHeads: 2, headDim: 64, dtype: "float16" as const };
const cases: [string, Case][] = [
  ["16 x 16 blocks, density 0.5, odd block counts", { ...base, blockRows: 5, blockCols: 7, R: 16, C: 16, density: 0.5 }],
  ["density 0: every row empty (zeros, lse -inf)", { ...base, blockRows: 3, blockCols: 4, R: 16, C: 16, density: 0 }],
  ["density 1, causal (original positions), bfloat16", { ...base, blockRows: 4, blockCols: 4, R: 16, C: 16, density: 1, causal: true, dtype: "bfloat16" }],
  ["R = C = 1 (vector-sparse), density 0.1, GQA 4", { blockRows: 37, blockCols: 61, R: 1, C: 1, density: 0.1, numQoHeads: 8, numKvHeads: 2, headDim: 128, dtype: "float16" }],
  ["R 64, C 16, per-block mask and causal, soft cap", { ...base, blockRows: 3, blockCols: 13, R: 64, C: 16, density: 0.3, causal: true, withMask: true, logitsSoftCap: 20 }],
  ["R 16, C 64, per-block mask, group 1, head dim 128", { blockRows: 5, blockCols: 3, R: 16, C: 64, density: 0.6, withMask: true, numQoHeads: 2, numKvHeads: 2, headDim: 128, dtype: "bfloat16" }],
  ["R 1, C 16 (decode-like rows), density 0.3", { ...base, blockRows: 9, blockCols: 11, R: 1, C: 16, density: 0.3 }],
  ["head dim 256, GQA 8, bfloat16", { blockRows: 3, blockCols: 5, R: 16, C: 16, density: 0.5, numQoHeads: 8, numKvHeads: 1, headDim: 256, dtype: "bfloat16" }],
  ["float8 e4m3 KV, float16 q, causal", { ...base, blockRows: 4, blockCols: 6, R: 16, C: 16, density: 0.5, causal: true, kvDtype: "float8_e4m3fn" }],
];

describe("BlockSparseAttentionWrapper vs reference", () => {
  for (const [name, c] of cases) testOnDevices(name, (device) => check(device, c));
  test.skipIf(!fi.cudaAvailable())("the same cases on the fa2 kernels [cuda]", () => {
    for (const [name, c] of cases) withContext(name, () => check("cuda:0", c, "fa2"));
  });
});

/** n split into `parts` random sizes (some 0 when n is small). */
function randomSizes(n: number, parts: number): number[] {
  const cuts = Array.from({ length: parts - 1 }, () => Math.floor(Math.random() * (n + 1))).sort((a, b) => a - b);
  return [...cuts, n].map((c, i) => c - (i === 0 ? 0 : cuts[i - 1]!));
}

interface VariableCase {
  qoLen: number;
  kvLen: number;
  MB: number;
  NB: number;
  density: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  dtype: "float16" | "bfloat16";
}

function checkVariable(device: fi.Device, c: VariableCase): void {
  const { numQoHeads: Hq, numKvHeads: Hkv, headDim: D, qoLen: L, kvLen: N, MB, NB } = c;
  const rowSz = Array.from({ length: Hkv }, () => randomSizes(L, MB)), colSz = Array.from({ length: Hkv }, () => randomSizes(N, NB));
  const map = Array.from({ length: Hkv * MB * NB }, () => Math.random() < c.density);
  // Block of each row / key, per kv head.
  const blockOf = (sizes: number[]) => sizes.flatMap((n, b) => Array<number>(n).fill(b));
  const rowBlock = rowSz.map(blockOf), colBlock = colSz.map(blockOf);
  using q = fi.randn([Hq, L, D], { dtype: c.dtype, seed: seed(), device });
  using k = fi.randn([Hkv, N, D], { dtype: c.dtype, seed: seed(), device });
  using v = fi.randn([Hkv, N, D], { dtype: c.dtype, seed: seed(), device });
  using ws = fi.empty([64 << 20], { dtype: "uint8", device });
  using out = fi.full([Hq, L, D], NaN, { dtype: c.dtype, device });
  using lse = fi.full([Hq, L], NaN, { dtype: "float32", device });
  using w = new fi.VariableBlockSparseAttentionWrapper(ws);
  w.plan({ blockMaskMap: map, blockRowSz: rowSz.flat(), blockColSz: colSz.flat(), numQoHeads: Hq, numKvHeads: Hkv, headDim: D, qDataType: c.dtype });
  w.run(q, k, v, { out, lse });
  const nhd = (t: fi.Tensor) => {
    using x = t.transpose(0, 1).contiguous();
    return x.toFloat32Array();
  };
  const ref = maskedAttention(nhd(q), nhd(k), nhd(v), { M: L, N, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, headDimVo: D },
    (hk, m, n) => map[(hk * MB + rowBlock[hk]![m]!) * NB + colBlock[hk]![n]!]!);
  withContext("out", () => expectClose(nhd(out), ref.out, attentionAtol(3e-3, ref.magnitude, c.dtype), 1e-2));
  withContext("lse", () => expectClose(nhd(lse), ref.lse, 2e-3, 1e-3));
}

describe("VariableBlockSparseAttentionWrapper vs reference", () => {
  testOnDevices("per-head random block sizes (some empty), density 0.4, GQA 4", (device) =>
    checkVariable(device, { qoLen: 77, kvLen: 130, MB: 5, NB: 7, density: 0.4, numQoHeads: 8, numKvHeads: 2, headDim: 64, dtype: "float16" }));
  testOnDevices("one block row and column per head (dense), bfloat16, head dim 128", (device) =>
    checkVariable(device, { qoLen: 33, kvLen: 50, MB: 1, NB: 1, density: 1, numQoHeads: 4, numKvHeads: 4, headDim: 128, dtype: "bfloat16" }));
  testOnDevices("density 0.1 over many small blocks, 3 kv heads", (device) =>
    checkVariable(device, { qoLen: 64, kvLen: 200, MB: 16, NB: 40, density: 0.1, numQoHeads: 6, numKvHeads: 3, headDim: 64, dtype: "float16" }));

  test("bad input: named FlashInferErrors", () => {
    using ws = fi.empty([16 << 20], { dtype: "uint8" });
    using w = new fi.VariableBlockSparseAttentionWrapper(ws);
    const ok = { blockMaskMap: [true, false, true, true], blockRowSz: [3, 5], blockColSz: [4, 4], numQoHeads: 2, numKvHeads: 1, headDim: 64 };
    expectFlashInferError(() => w.plan({ ...ok, blockMaskMap: [true] }), "invalid_argument", /blockMaskMap.*expected 4 booleans/);
    expectFlashInferError(() => w.plan({ ...ok, blockRowSz: [3, -1] }), "invalid_argument", /blockRowSz: entry \[0, 1\] is -1/);
    expectFlashInferError(() => w.plan({ ...ok, numKvHeads: 2, numQoHeads: 2, blockMaskMap: [1, 1, 1, 1, 1, 1, 1, 1], blockRowSz: [3, 5, 4, 5], blockColSz: [4, 4, 4, 4] }),
      "invalid_argument", /blockRowSz: kv head 1's sizes sum to 9, kv head 0's to 8/);
    expectFlashInferError(() => w.plan({ ...ok, blockRowSz: [1.5, 5] }), "invalid_argument", /blockRowSz\[0\]: expected an int32 integer, got 1.5/);
    expectFlashInferError(() => w.plan({ ...ok, numQoHeads: 3, numKvHeads: 2 }), "invalid_argument", /numQoHeads/);
    w.plan(ok);
    using q = fi.randn([2, 8, 64], { dtype: "float16" });
    using k = fi.randn([1, 8, 64], { dtype: "float16" });
    using kBad = fi.randn([1, 9, 64], { dtype: "float16" });
    using out = fi.full([2, 8, 64], NaN, { dtype: "float16" });
    expectFlashInferError(() => w.run(q, kBad, kBad, { out }), "invalid_argument", /k: expected \[1, 8, 64\]/);
    expect(Array.from(out.toFloat32Array()).every(Number.isNaN)).toBe(true);
    w.run(q, k, k, { out });
    expect(Array.from(out.toFloat32Array()).some(Number.isNaN)).toBe(false);
  });
});

// Vector-sparse: a page table of page size 1 whose token indices are shuffled over the cache holds
// the same keys as a dense (ragged) layout; decode and prefill over it must give the dense result.
describe("vector-sparse KV (page size 1, shuffled tokens)", () => {
  testOnDevices("paged prefill and decode over shuffled single-token pages equal the dense ragged prefill", (device) => {
    const lens = [13, 1, 40, 7], qoLens = [5, 1, 9, 7], Hq = 8, Hkv = 2, D = 64;
    const total = lens.reduce((a, b) => a + b, 0), totalQo = qoLens.reduce((a, b) => a + b, 0);
    const kvIndptr = Int32Array.from([0, ...lens.map(((s) => (n: number) => (s += n))(0))]);
    const qoIndptr = Int32Array.from([0, ...qoLens.map(((s) => (n: number) => (s += n))(0))]);
    // Token t of the dense layout lives in page slot[t] of the cache.
    const slot = Array.from({ length: total }, (_, i) => i);
    for (let a = total - 1; a > 0; --a) {
      const b = Math.floor(Math.random() * (a + 1));
      [slot[a], slot[b]] = [slot[b]!, slot[a]!];
    }
    using k = fi.randn([total, Hkv, D], { dtype: "float16", seed: seed(), device });
    using v = fi.randn([total, Hkv, D], { dtype: "float16", seed: seed(), device });
    using q = fi.randn([totalQo, Hq, D], { dtype: "float16", seed: seed(), device });
    // The cache [pages, 2, 1, Hkv, D]: page slot[t] holds token t.
    const kh = k.to("cpu"), vh = v.to("cpu");
    using cacheHost = fi.zeros([total, 2, 1, Hkv, D], { dtype: "float16", device: "cpu" });
    const c = cacheHost.hostView() as Uint16Array, kb = kh.hostView() as Uint16Array, vb = vh.hostView() as Uint16Array;
    for (let t = 0; t < total; ++t) {
      c.set(kb.subarray(t * Hkv * D, (t + 1) * Hkv * D), slot[t]! * 2 * Hkv * D);
      c.set(vb.subarray(t * Hkv * D, (t + 1) * Hkv * D), (slot[t]! * 2 + 1) * Hkv * D);
    }
    kh.dispose();
    vh.dispose();
    using cache = cacheHost.to(device);
    using ws = fi.empty([32 << 20], { dtype: "uint8", device });
    const common = { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: "float16" as const };
    using dense = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD");
    dense.plan({ ...common, qoIndptr, kvIndptr });
    using want = dense.run(q, k, v) as fi.Tensor;
    const wanted = want.toFloat32Array();
    using paged = new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD");
    paged.plan({ ...common, qoIndptr, pagedKvIndptr: kvIndptr, pagedKvIndices: Int32Array.from(slot), pagedKvLastPageLen: lens.map(() => 1), pageSize: 1 });
    using got = paged.run(q, cache) as fi.Tensor;
    withContext("prefill", () => expectClose(got.toFloat32Array(), wanted, 2e-3, 1e-2));
    // Decode: the last query row of each request against its whole key set.
    using qd = fi.empty([lens.length, Hq, D], { dtype: "float16", device });
    lens.forEach((_, r) => {
      using src = q.slice(0, qoIndptr[r + 1]! - 1, qoIndptr[r + 1]!);
      using dst = qd.slice(0, r, r + 1);
      dst.copy_(src);
    });
    using decode = new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD");
    decode.plan({ indptr: kvIndptr, indices: Int32Array.from(slot), lastPageLen: lens.map(() => 1), numQoHeads: Hq, numKvHeads: Hkv, headDim: D,
      pageSize: 1, qDataType: "float16" });
    using gotDecode = decode.run(qd, cache) as fi.Tensor;
    const lastRows = Float32Array.from(lens.flatMap((_, r) => Array.from(wanted.subarray((qoIndptr[r + 1]! - 1) * Hq * D, qoIndptr[r + 1]! * Hq * D))));
    withContext("decode", () => expectClose(gotDecode.toFloat32Array(), lastRows, 2e-3, 1e-2));
  });
});

describe("BlockSparseAttentionWrapper: bad input", () => {
  test("named FlashInferErrors at plan time; a failed plan keeps the previous one", () => {
    using ws = fi.empty([16 << 20], { dtype: "uint8" });
    using w = new fi.BlockSparseAttentionWrapper(ws);
    const ok = { indptr: [0, 1, 2], indices: [0, 1], M: 32, N: 32, R: 16, C: 16, numQoHeads: 2, numKvHeads: 1, headDim: 64 };
    expectFlashInferError(() => w.plan({ ...ok, R: 5 }), "invalid_argument", /R: must divide M/);
    expectFlashInferError(() => w.plan({ ...ok, C: 5 }), "invalid_argument", /C: must divide N/);
    expectFlashInferError(() => w.plan({ ...ok, indptr: [0, 1] }), "invalid_argument", /indptr: expected M \/ R \+ 1 = 3/);
    expectFlashInferError(() => w.plan({ ...ok, indptr: [0, 2, 1] }), "invalid_argument", /indptr: must be non-decreasing/);
    expectFlashInferError(() => w.plan({ ...ok, indptr: [0, 1, 3] }), "invalid_argument", /indptr: indptr\[2\] = 3 exceeds/);
    expectFlashInferError(() => w.plan({ ...ok, indices: [0, 2] }), "invalid_argument", /indices: indices\[1\] = 2 is not a block column/);
    expectFlashInferError(() => w.plan({ ...ok, indptr: [0, 2, 2], indices: [1, 1] }), "invalid_argument", /block column 1 appears twice/);
    expectFlashInferError(() => w.plan({ ...ok, mask: [true, false] }), "invalid_argument", /mask \(nnz x R x C\): expected 512 booleans/);
    expectFlashInferError(() => w.plan({ ...ok, posEncodingMode: "ROPE_LLAMA" as "NONE" }), "unsupported", /posEncodingMode/);
    expectFlashInferError(() => w.plan({ ...ok, M: 0 }), "invalid_argument", /M: expected an integer in 1..2\^31 - 1/);
    using q = fi.randn([32, 2, 64], { dtype: "float16" });
    using k = fi.randn([32, 1, 64], { dtype: "float16" });
    expectFlashInferError(() => w.run(q, k, k), "invalid_argument", /call plan\(\) first/);
    w.plan(ok);
    expectFlashInferError(() => w.plan({ ...ok, indices: [0, 9] }), "invalid_argument", /indices/);
    using out = fi.full([32, 2, 64], NaN, { dtype: "float16" });
    using kt = k.transpose(0, 1);
    expectFlashInferError(() => w.run(q, k.transpose(0, 1).contiguous(), k, { out }), "invalid_argument", /k: expected \[N = 32, numKvHeads = 1, 64\]/);
    using short = fi.randn([16, 1, 64], { dtype: "float16" });
    expectFlashInferError(() => w.run(q, short, short, { out }), "invalid_argument", /k: expected \[N = 32/);
    expect(Array.from(out.toFloat32Array()).every(Number.isNaN)).toBe(true);
    w.run(q, k, k, { out }); // the first plan still serves
    expect(Array.from(out.toFloat32Array()).some(Number.isNaN)).toBe(false);
    expect(kt.shape).toEqual([1, 32, 64]);
  });
});

// The plan/run contract: run launches work only (no allocation, no synchronization), so it can be
// captured in a CUDA graph; a replay computes the graph's launches on the tensors' new values.
describe("CUDA graphs", () => {
  /** Captures `run` (writing fixed outputs), then per fresh q: replay, and compare with a direct run on the same q. */
  function replaysLikeDirect(q: fi.Tensor, outs: fi.Tensor[], run: () => unknown): void {
    const device = "cuda:0";
    run(); // warm: first-use set-up (kernel attributes) stays out of the capture
    using g = new fi.CudaGraph({ device });
    g.capture(() => void run());
    for (let i = 0; i < 2; ++i) {
      using fresh = fi.randn(q.shape, { dtype: q.dtype, device, seed: seed() });
      q.copy_(fresh);
      outs.forEach((o) => o.fill_(NaN));
      g.replay();
      const replayed = outs.map((o) => o.toFloat32Array());
      outs.forEach((o) => o.fill_(NaN));
      run();
      outs.forEach((o, j) => {
        const direct = o.toFloat32Array();
        expect(direct.some(Number.isNaN)).toBe(false);
        expect(Array.from(replayed[j]!)).toEqual(Array.from(direct));
      });
    }
  }

  test.skipIf(!gpu)("a block-sparse run and a 2-level cascade run, captured, replay on new q values as direct runs do [cuda]", () => {
    const device = "cuda:0", Hq = 4, Hkv = 2, D = 64;
    using ws = fi.empty([64 << 20], { dtype: "uint8", device });
    {
      const M = 96, N = 160, R = 16, C = 16, p = randomPattern(M / R, N / C, 0.5);
      using bsr = new fi.BlockSparseAttentionWrapper(ws);
      bsr.plan({ indptr: p.indptr, indices: p.indices, M, N, R, C, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, qDataType: "float16" });
      using q = fi.randn([M, Hq, D], { dtype: "float16", device, seed: seed() });
      using k = fi.randn([N, Hkv, D], { dtype: "float16", device, seed: seed() });
      using out = fi.empty([M, Hq, D], { dtype: "float16", device });
      using lse = fi.empty([M, Hq], { device });
      withContext("BSR", () => replaysLikeDirect(q, [out, lse], () => bsr.run(q, k, k, { out, lse })));
    }
    {
      const P = 4, batch = 5, own = [3, 8, 1, 6, 4];
      const ownPages = own.map((n) => Math.ceil(n / P));
      const pages = 3 + ownPages.reduce((a, b) => a + b, 0);
      using cache = fi.randn([pages, 2, P, Hkv, D], { dtype: "float16", device, seed: seed() });
      using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, ws);
      const ownIndptr = Int32Array.from([0, ...ownPages.map(((t) => (x: number) => (t += x))(0))]);
      cascade.plan({ qoIndptrArr: [[0, batch], Int32Array.from({ length: batch + 1 }, (_, i) => i)], pagedKvIndptrArr: [[0, 3], ownIndptr],
        pagedKvIndicesArr: [[0, 1, 2], Int32Array.from({ length: pages - 3 }, (_, i) => 3 + i)],
        pagedKvLastPageLenArr: [[P], own.map((n) => n - (Math.ceil(n / P) - 1) * P)], numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: "float16" });
      using q = fi.randn([batch, Hq, D], { dtype: "float16", device, seed: seed() });
      using out = fi.empty([batch, Hq, D], { dtype: "float16", device });
      using lse = fi.empty([batch, Hq], { device });
      withContext("cascade", () => replaysLikeDirect(q, [out, lse], () => cascade.run(q, cache, { out, lse })));
    }
  });
});

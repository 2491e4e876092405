// Page ops (FlashInfer's flashinfer.page): getSeqLens, getBatchIndicesPositions and
// appendPagedKvCache against the integer/float64 references (test/reference/page.ts) on fresh
// random page tables (page sizes 1, 7, 16; lengths 0, 1, page boundaries), NHD and HND, one-tensor
// and [k, v] caches, every cache dtype. Appends are checked bit for bit (the cache is poisoned
// with random values first: every written slot holds the rounded appended value, every other
// slot is untouched), and read back through BatchDecodeWithPagedKVCacheWrapper against
// singleDecodeWithKVCache over the contiguous appended K/V. Bad input throws and writes nothing.
// On a GPU the same cases run on CUDA, and CUDA is compared with the CPU backend bit for bit.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectClose, expectFlashInferError, gpu, shuffle, testOnDevices, withContext } from "./helpers.ts";
import { type AppendLayout, appendReference, batchIndicesPositionsReference, cacheOffset, seqLensReference } from "./reference/page.ts";
import type { FloatFormat } from "./reference/dtype.ts";

type CacheDType = "float16" | "bfloat16" | "float8_e4m3fn" | "float8_e5m2";
type AppendDType = "float16" | "bfloat16" | CacheDType;
type Layout = "NHD" | "HND";
type Form = "tensor" | "pair";
type Cache = fi.Tensor | [fi.Tensor, fi.Tensor];

const CACHE_DTYPES: CacheDType[] = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"];
const PAGE_SIZES = [1, 7, 16];
const randInt = (lo: number, hi: number) => lo + Math.floor(Math.random() * (hi - lo + 1));
const newSeed = () => Math.floor(Math.random() * 2 ** 31);

interface Table {
  indptr: Int32Array;
  indices: Int32Array;
  lastPageLen: Int32Array;
  lens: number[];
  maxPages: number;
}

/** A page table for `lens`, pages scattered at random over maxPages (> the pages used). */
function makeTable(lens: number[], pageSize: number): Table {
  const counts = lens.map((l) => Math.ceil(l / pageSize));
  const total = counts.reduce((a, b) => a + b, 0);
  const maxPages = total + randInt(1, 4);
  const indptr = new Int32Array(lens.length + 1);
  counts.forEach((n, i) => (indptr[i + 1] = indptr[i]! + n));
  const indices = Int32Array.from(shuffle(Array.from({ length: maxPages }, (_, i) => i)).slice(0, total));
  const lastPageLen = Int32Array.from(lens, (l) => (l === 0 ? 0 : l - (Math.ceil(l / pageSize) - 1) * pageSize));
  return { indptr, indices, lastPageLen, lens, maxPages };
}

/** Lengths holding 0, 1, pageSize, pageSize + 1, 2 * pageSize (as many as fit), the rest random. */
function edgeLens(batch: number, pageSize: number, maxRandom: number): number[] {
  const lens = [0, 1, pageSize, pageSize + 1, 2 * pageSize].slice(0, batch);
  while (lens.length < batch) lens.push(randInt(0, maxRandom));
  return shuffle(lens);
}

const i32 = (a: ArrayLike<number>, device: fi.Device) => fi.tensor(Int32Array.from(a), [a.length], { dtype: "int32", device });
/** An int32 view with stride 2 over `a` (the odd elements are garbage). */
function strided(a: ArrayLike<number>, device: fi.Device): fi.Tensor {
  const data = new Int32Array(2 * a.length);
  for (let i = 0; i < a.length; ++i) {
    data[2 * i] = a[i]!;
    data[2 * i + 1] = -12345;
  }
  using full = fi.tensor(data, [data.length], { dtype: "int32", device });
  return full.slice(0, 0, data.length, 2);
}
const ints = (t: fi.Tensor) => Array.from(t.toArray() as Int32Array);

/** Raw bit patterns of a float tensor (row-major). */
function bitsOf(t: fi.Tensor): number[] {
  const a = t.toArray();
  if (a instanceof Float16Array) return Array.from(new Uint16Array(a.buffer, a.byteOffset, a.length));
  return Array.from(a as Uint16Array | Uint8Array);
}

interface BuiltCache {
  cache: Cache;
  /** K and V as contiguous-order [maxPages, ...page] tensors (views; disposed by dispose()). */
  k: fi.Tensor;
  v: fi.Tensor;
  dispose(): void;
}

/** A cache poisoned with random values (standard normal, rounded to `dtype`). */
function makeCache(device: fi.Device, form: Form, layout: Layout, dtype: CacheDType, maxPages: number, l: AppendLayout, seed: number): BuiltCache {
  const page = layout === "NHD" ? [l.pageSize, l.numKvHeads, l.headDim] : [l.numKvHeads, l.pageSize, l.headDim];
  if (form === "tensor") {
    using f = fi.randn([maxPages, 2, ...page], { device, seed });
    const t = f.to({ dtype });
    const k = t.select(1, 0), v = t.select(1, 1);
    return { cache: t, k, v, dispose: () => (k.dispose(), v.dispose(), t.dispose()) };
  }
  using fk = fi.randn([maxPages, ...page], { device, seed });
  using fv = fi.randn([maxPages, ...page], { device, seed: seed + 1 });
  const k = fk.to({ dtype }), v = fv.to({ dtype });
  const kv = k.slice(0), vv = v.slice(0);
  return { cache: [k, v], k: kv, v: vv, dispose: () => (kv.dispose(), vv.dispose(), k.dispose(), v.dispose()) };
}

// ------------------------------------------------------------------ reference self-checks

describe("page references", () => {
  test("hand-computed seq lens, batch indices and positions, offsets", () => {
    expect(seqLensReference([0, 2, 2, 5], [3, 0, 1], 4)).toEqual([7, 0, 9]);
    expect(batchIndicesPositionsReference([0, 2, 2, 5], [7, 0, 9])).toEqual({ batchIndices: [0, 0, 2, 2, 2], positions: [5, 6, 6, 7, 8] });
    const l: AppendLayout = { pageSize: 3, numKvHeads: 2, headDim: 4, layout: "NHD" };
    expect(cacheOffset(l, 1, 2, 1, 3)).toBe(((1 * 3 + 2) * 2 + 1) * 4 + 3);
    expect(cacheOffset({ ...l, layout: "HND" }, 1, 2, 1, 3)).toBe(((1 * 2 + 1) * 3 + 2) * 4 + 3);
    // one token into page 1 (of 2) slot 1, pageSize 2, 1 head, headDim 1: value 1.5 in float16 = 0x3e00
    const r = appendReference([7, 7, 7, 7], [1.5], [0], [1], [1, 0], [0, 1], { pageSize: 2, numKvHeads: 1, headDim: 1, layout: "NHD" }, "float16");
    expect(r.bits).toEqual([7, 7, 7, 0x3e00]);
    expect(Array.from(r.written)).toEqual([0, 0, 0, 1]);
  });
});

// ------------------------------------------------------------------ getSeqLens, getBatchIndicesPositions

describe("getSeqLens and getBatchIndicesPositions", () => {
  testOnDevices("match the references on random tables (page sizes 1, 7, 16)", (device) => {
    for (const pageSize of PAGE_SIZES) {
      for (const batch of [1, 7, 33]) {
        const lens = edgeLens(batch, pageSize, 5 * pageSize);
        const table = makeTable(lens, pageSize);
        withContext(`pageSize ${pageSize} lens ${lens}`, () => {
          using indptr = i32(table.indptr, device);
          using last = i32(table.lastPageLen, device);
          using seqLens = fi.getSeqLens(indptr, last, pageSize);
          expect(seqLens.dtype).toBe("int32");
          expect(seqLens.device).toBe(device);
          expect(ints(seqLens)).toEqual(lens);
          expect(seqLensReference(table.indptr, table.lastPageLen, pageSize)).toEqual(lens);
          // appended counts 0..len per request
          const appended = lens.map((l) => randInt(0, l));
          const appendIndptr = [0];
          appended.forEach((n) => appendIndptr.push(appendIndptr.at(-1)! + n));
          const nnz = appendIndptr.at(-1)!;
          using ai = i32(appendIndptr, device);
          const { batchIndices, positions } = fi.getBatchIndicesPositions(ai, seqLens, nnz);
          try {
            const ref = batchIndicesPositionsReference(appendIndptr, lens);
            expect(batchIndices.shape).toEqual([nnz]);
            expect(positions.device).toBe(device);
            expect(ints(batchIndices)).toEqual(ref.batchIndices);
            expect(ints(positions)).toEqual(ref.positions);
          } finally {
            batchIndices.dispose();
            positions.dispose();
          }
        });
      }
    }
  });

  test("host arrays, empty batch and bad input", () => {
    using s = fi.getSeqLens([0, 3, 3], new Int32Array([2, 0]), 4);
    expect(s.device).toBe("cpu");
    expect(ints(s)).toEqual([10, 0]);
    using e = fi.getSeqLens([0], [], 4);
    expect(e.shape).toEqual([0]);
    const r = fi.getBatchIndicesPositions([0, 0, 2], [3, 5], 2);
    expect(ints(r.batchIndices)).toEqual([1, 1]);
    expect(ints(r.positions)).toEqual([3, 4]);
    r.batchIndices.dispose();
    r.positions.dispose();
    expectFlashInferError(() => fi.getSeqLens([0, 1], [1, 1], 4), "invalid_argument", /kvLastPageLen/);
    expectFlashInferError(() => fi.getSeqLens([0, 1], [1], 0), "invalid_argument", /pageSize/);
    // the page table is checked as decode plan() checks it (issue 16)
    expectFlashInferError(() => fi.getSeqLens([0, 1, 1], [0, 0], 4), "invalid_argument", /kv_last_page_len\[0\] = 0 must be in \[1, page_size = 4\]/);
    expectFlashInferError(() => fi.getSeqLens([0, 1, 1], [5, 0], 4), "invalid_argument", /kv_last_page_len\[0\] = 5/);
    expectFlashInferError(() => fi.getSeqLens([0, 1, 1], [2, 5], 4), "invalid_argument", /kv_last_page_len\[1\] = 5 must be in \[0, page_size = 4\] for a request without pages/);
    expectFlashInferError(() => fi.getSeqLens([0, 2, 1], [1, 1], 4), "invalid_argument", /non-decreasing/);
    expectFlashInferError(() => fi.getSeqLens([1, 2], [1], 4), "invalid_argument", /kv_indptr\[0\] must be 0/);
    using f = fi.zeros([2], { dtype: "float32", device: "cpu" });
    expectFlashInferError(() => fi.getSeqLens(f, [1], 4), "invalid_argument", /kvIndptr.*int32/);
    expectFlashInferError(() => fi.getBatchIndicesPositions([0, 2], [3], 3), "invalid_argument", /append_indptr.*nnz/);
    expectFlashInferError(() => fi.getBatchIndicesPositions([0, 4], [3], 4), "invalid_argument", /seq_lens\[0\]/);
    expectFlashInferError(() => fi.getBatchIndicesPositions([0, 2, 1], [3, 3], 1), "invalid_argument", /non-decreasing/);
    expectFlashInferError(() => fi.getBatchIndicesPositions([0, 1], [3, 3], 1), "invalid_argument", /appendIndptr/);
  });
});

// ------------------------------------------------------------------ appendPagedKvCache: bit-exact

interface AppendCase {
  pageSize: number;
  layout: Layout;
  form: Form;
  cacheDtype: CacheDType;
  appendDtype: AppendDType;
  numKvHeads: number;
  headDim: number;
  batch: number;
  /** Index arrays as tensors on the device (default), strided tensor views (every other element), or host Int32Arrays (cpu only). */
  indexAs?: "tensor" | "strided" | "array" | "unchecked";
}

interface AppendDraw {
  table: Table;
  /** old lengths (already in the cache) and the lengths after appending (= table.lens). */
  before: number[];
  appendIndptr: number[];
  cacheSeed: number;
  valueSeed: number;
}

function drawAppend(c: AppendCase): AppendDraw {
  const lens = edgeLens(c.batch, c.pageSize, 4 * c.pageSize + 3);
  const before = lens.map((l) => randInt(0, l));
  const appendIndptr = [0];
  lens.forEach((l, i) => appendIndptr.push(appendIndptr.at(-1)! + l - before[i]!));
  return { table: makeTable(lens, c.pageSize), before, appendIndptr, cacheSeed: newSeed(), valueSeed: newSeed() };
}

/** Appends on `device` through getSeqLens/getBatchIndicesPositions; returns the cache bits (K, V) after, and the reference. */
function appendCase(device: fi.Device, c: AppendCase, draw: AppendDraw = drawAppend(c)): { k: number[]; v: number[] } {
  return withContext(`case ${JSON.stringify(c)} draw ${JSON.stringify({ ...draw, table: { lens: draw.table.lens, indices: Array.from(draw.table.indices) } })} on ${device}`, () => {
    const { table, appendIndptr } = draw;
    const nnz = appendIndptr.at(-1)!;
    const l: AppendLayout = { pageSize: c.pageSize, numKvHeads: c.numKvHeads, headDim: c.headDim, layout: c.layout };
    const built = makeCache(device, c.form, c.layout, c.cacheDtype, table.maxPages, l, draw.cacheSeed);
    try {
      using fk = fi.randn([nnz, c.numKvHeads, c.headDim], { device, seed: draw.valueSeed });
      using fv = fi.randn([nnz, c.numKvHeads, c.headDim], { device, seed: draw.valueSeed + 1 });
      using key = fk.to({ dtype: c.appendDtype });
      using value = fv.to({ dtype: c.appendDtype });
      const k0 = bitsOf(built.k), v0 = bitsOf(built.v);
      const idx = c.indexAs === "strided" ? (a: ArrayLike<number>) => strided(a, device) : (a: ArrayLike<number>) => i32(a, device);
      using indptr = idx(table.indptr);
      using last = idx(table.lastPageLen);
      using indices = idx(table.indices);
      using seqLens = fi.getSeqLens(indptr, last, c.pageSize);
      using ai = i32(appendIndptr, device);
      const bp = fi.getBatchIndicesPositions(ai, seqLens, nnz);
      using bi = bp.batchIndices;
      using pos = bp.positions;
      const biHost = ints(bi), posHost = ints(pos);
      const ref = batchIndicesPositionsReference(appendIndptr, table.lens);
      expect(biHost).toEqual(ref.batchIndices);
      expect(posHost).toEqual(ref.positions);
      // every position is at or after the old length
      posHost.forEach((p, j) => expect(p).toBeGreaterThanOrEqual(draw.before[biHost[j]!]!));
      if (c.indexAs === "array") {
        fi.appendPagedKvCache(key, value, Int32Array.from(biHost), posHost, built.cache, table.indices, table.indptr, table.lastPageLen, c.layout);
      } else if (c.indexAs === "strided") {
        using sbi = strided(biHost, device);
        using spos = strided(posHost, device);
        expect(sbi.strides).toEqual([2]);
        fi.appendPagedKvCache(key, value, sbi, spos, built.cache, indices, indptr, last, c.layout);
      } else {
        fi.appendPagedKvCache(key, value, bi, pos, built.cache, indices, indptr, last, c.layout, { checkIndices: c.indexAs !== "unchecked" });
      }
      const k1 = bitsOf(built.k), v1 = bitsOf(built.v);
      const kValues = Float64Array.from(key.toFloat32Array()), vValues = Float64Array.from(value.toFloat32Array());
      const fmt = c.cacheDtype as FloatFormat;
      const kRef = appendReference(k0, kValues, biHost, posHost, table.indices, table.indptr, l, fmt);
      const vRef = appendReference(v0, vValues, biHost, posHost, table.indices, table.indptr, l, fmt);
      let written = 0;
      kRef.written.forEach((w) => (written += w));
      expect(written).toBe(nnz * c.numKvHeads * c.headDim);
      for (const [name, got, want] of [["K", k1, kRef.bits], ["V", v1, vRef.bits]] as const) {
        for (let i = 0; i < want.length; ++i) {
          if (got[i] !== want[i]) throw new Error(`${name} cache element ${i} (${kRef.written[i] ? "written" : "untouched"}): bits ${got[i]!.toString(16)}, expected ${want[i]!.toString(16)}`);
        }
      }
      return { k: k1, v: v1 };
    } finally {
      built.dispose();
    }
  });
}

describe("appendPagedKvCache: every written slot holds the appended value, every other slot is untouched", () => {
  testOnDevices("page sizes 1, 7, 16 x NHD/HND x tensor/pair x every cache dtype", (device) => {
    for (const pageSize of PAGE_SIZES) {
      for (const layout of ["NHD", "HND"] as const) {
        for (const form of ["tensor", "pair"] as const) {
          for (const cacheDtype of CACHE_DTYPES) {
            const appendDtype = cacheDtype === "bfloat16" ? "bfloat16" : cacheDtype === "float16" ? "float16" : Math.random() < 0.5 ? "float16" : "bfloat16";
            appendCase(device, { pageSize, layout, form, cacheDtype, appendDtype, numKvHeads: 3, headDim: 8, batch: 7 });
          }
        }
      }
    }
  });

  testOnDevices("odd head dims, converting appends (bf16 into f16, f16 into bf16), fp8 into fp8, batch 1 and 33", (device) => {
    const cases: AppendCase[] = [
      { pageSize: 7, layout: "NHD", form: "tensor", cacheDtype: "float16", appendDtype: "bfloat16", numKvHeads: 2, headDim: 5, batch: 5 },
      { pageSize: 16, layout: "HND", form: "pair", cacheDtype: "bfloat16", appendDtype: "float16", numKvHeads: 1, headDim: 24, batch: 1 },
      { pageSize: 1, layout: "HND", form: "tensor", cacheDtype: "float8_e4m3fn", appendDtype: "float8_e4m3fn", numKvHeads: 2, headDim: 16, batch: 6 },
      { pageSize: 7, layout: "NHD", form: "pair", cacheDtype: "float8_e5m2", appendDtype: "float8_e5m2", numKvHeads: 3, headDim: 32, batch: 4 },
      { pageSize: 16, layout: "NHD", form: "tensor", cacheDtype: "bfloat16", appendDtype: "bfloat16", numKvHeads: 8, headDim: 64, batch: 33 },
      { pageSize: 7, layout: "HND", form: "pair", cacheDtype: "float8_e4m3fn", appendDtype: "bfloat16", numKvHeads: 5, headDim: 3, batch: 9 },
    ];
    for (const c of cases) appendCase(device, c);
  });

  testOnDevices("strided index tensors", (device) => {
    appendCase(device, { pageSize: 7, layout: "NHD", form: "pair", cacheDtype: "bfloat16", appendDtype: "bfloat16", numKvHeads: 2, headDim: 8, batch: 6, indexAs: "strided" });
    appendCase(device, { pageSize: 16, layout: "HND", form: "tensor", cacheDtype: "float8_e5m2", appendDtype: "float16", numKvHeads: 3, headDim: 5, batch: 4, indexAs: "strided" });
  });

  testOnDevices("checkIndices: false (index values trusted, no copy to the host) appends the same; a non-boolean is refused", (device) => {
    appendCase(device, { pageSize: 7, layout: "NHD", form: "tensor", cacheDtype: "bfloat16", appendDtype: "bfloat16", numKvHeads: 2, headDim: 8, batch: 6, indexAs: "unchecked" });
    appendCase(device, { pageSize: 1, layout: "HND", form: "pair", cacheDtype: "float16", appendDtype: "bfloat16", numKvHeads: 3, headDim: 4, batch: 5, indexAs: "unchecked" });
    using cache = fi.full([2, 2, 4, 1, 8], 1, { dtype: "float16", device });
    using k = fi.zeros([1, 1, 8], { dtype: "float16", device });
    expectFlashInferError(() => fi.appendPagedKvCache(k, k, [0], [0], cache, [0], [0, 1], [1], "NHD", { checkIndices: "no" as never }), "invalid_argument", /checkIndices: expected a boolean/);
    expect(Array.from(cache.toFloat32Array()).every((x) => x === 1)).toBe(true);
  });

  test("host index arrays (Int32Array and number[])", () => {
    appendCase("cpu", { pageSize: 7, layout: "HND", form: "tensor", cacheDtype: "float16", appendDtype: "float16", numKvHeads: 2, headDim: 8, batch: 5, indexAs: "array" });
  });

  test("nnz 0 writes nothing", () => {
    using cache = fi.full([3, 2, 4, 1, 8], 1, { dtype: "float16", device: "cpu" });
    using k = fi.empty([0, 1, 8], { dtype: "float16", device: "cpu" });
    fi.appendPagedKvCache(k, k, [], [], cache, [0], [0, 1], [2]);
    expect(Array.from(cache.toFloat32Array()).every((x) => x === 1)).toBe(true);
  });

  test.skipIf(!gpu)("CUDA equals the CPU backend bit for bit on the same inputs", () => {
    const cases: AppendCase[] = [];
    for (const pageSize of PAGE_SIZES) for (const cacheDtype of CACHE_DTYPES) {
      cases.push({ pageSize, layout: Math.random() < 0.5 ? "NHD" : "HND", form: Math.random() < 0.5 ? "tensor" : "pair", cacheDtype, appendDtype: Math.random() < 0.5 ? "float16" : "bfloat16", numKvHeads: 4, headDim: 16, batch: 9 });
    }
    cases.push({ pageSize: 16, layout: "NHD", form: "tensor", cacheDtype: "bfloat16", appendDtype: "bfloat16", numKvHeads: 8, headDim: 128, batch: 17 });
    cases.push({ pageSize: 7, layout: "HND", form: "pair", cacheDtype: "float8_e5m2", appendDtype: "float8_e5m2", numKvHeads: 2, headDim: 48, batch: 5 });
    for (const c of cases) {
      const draw = drawAppend(c);
      const onCpu = appendCase("cpu", c, draw);
      const onGpu = appendCase("cuda:0", c, draw);
      expect(onGpu.k).toEqual(onCpu.k);
      expect(onGpu.v).toEqual(onCpu.v);
    }
  });
});

// ------------------------------------------------------------------ append then read back through decode

describe("appendPagedKvCache then BatchDecodeWithPagedKVCacheWrapper.run gives the appended values", () => {
  testOnDevices("page sizes 1, 7, 16 x NHD/HND x tensor/pair x every cache dtype", (device) => {
    const numQoHeads = 4, numKvHeads = 2, headDim = 64;
    using workspace = fi.empty([32 << 20], { dtype: "uint8", device });
    for (const pageSize of PAGE_SIZES) {
      for (const layout of ["NHD", "HND"] as const) {
        CACHE_DTYPES.forEach((cacheDtype, n) => {
          const form: Form = (n + (layout === "HND" ? 1 : 0)) % 2 === 0 ? "tensor" : "pair";
          // decode takes a 16-bit cache of q's dtype, or an fp8 cache with either q dtype
          const qDtype = cacheDtype === "float16" || cacheDtype === "bfloat16" ? cacheDtype : Math.random() < 0.5 ? "float16" : "bfloat16";
          const lens = edgeLens(5, pageSize, 3 * pageSize + 2);
          const table = makeTable(lens, pageSize);
          const seeds = { cache: newSeed(), kv: newSeed(), q: newSeed() };
          withContext(`pageSize ${pageSize} ${layout} ${form} ${cacheDtype} q ${qDtype} lens ${lens} seeds ${JSON.stringify(seeds)} on ${device}`, () => {
            const l: AppendLayout = { pageSize, numKvHeads, headDim, layout };
            const built = makeCache(device, form, layout, cacheDtype, table.maxPages, l, seeds.cache);
            try {
              const nnz = lens.reduce((a, b) => a + b, 0);
              // every token of each request, appended in one call (order shuffled: positions decide)
              using fk = fi.randn([nnz, numKvHeads, headDim], { device, seed: seeds.kv });
              using fv = fi.randn([nnz, numKvHeads, headDim], { device, seed: seeds.kv + 1 });
              using key = fk.to({ dtype: qDtype });
              using value = fv.to({ dtype: qDtype });
              const appendIndptr = [0];
              lens.forEach((x) => appendIndptr.push(appendIndptr.at(-1)! + x));
              const ref = batchIndicesPositionsReference(appendIndptr, lens);
              const order = shuffle(Array.from({ length: nnz }, (_, j) => j));
              // token order[t] goes first: permute the rows with a gather on the host
              const kRows = gatherRows(key, order), vRows = gatherRows(value, order);
              try {
                using bi = i32(order.map((j) => ref.batchIndices[j]!), device);
                using pos = i32(order.map((j) => ref.positions[j]!), device);
                using indices = i32(table.indices, device);
                using indptr = i32(table.indptr, device);
                using last = i32(table.lastPageLen, device);
                fi.appendPagedKvCache(kRows, vRows, bi, pos, built.cache, indices, indptr, last, layout);
              } finally {
                kRows.dispose();
                vRows.dispose();
              }
              using q = fi.randn([lens.length, numQoHeads, headDim], { dtype: qDtype, device, seed: seeds.q });
              using w = new fi.BatchDecodeWithPagedKVCacheWrapper(workspace, layout);
              w.plan({ indptr: table.indptr, indices: table.indices, lastPageLen: table.lastPageLen, numQoHeads, numKvHeads, headDim, pageSize, qDataType: qDtype, kvDataType: cacheDtype });
              using out = fi.full(q.shape, NaN, { dtype: qDtype, device });
              w.run(q, built.cache, { out });
              const got = out.toFloat32Array();
              // the contiguous K/V of each request: its appended values in the cache dtype
              using kc = key.to({ dtype: cacheDtype });
              using vc = value.to({ dtype: cacheDtype });
              for (let b = 0; b < lens.length; ++b) {
                using qb = q.select(0, b);
                using kb = kc.slice(0, appendIndptr[b]!, appendIndptr[b + 1]!);
                using vb = vc.slice(0, appendIndptr[b]!, appendIndptr[b + 1]!);
                using kArg = layout === "HND" ? kb.transpose(0, 1).contiguous() : kb.contiguous();
                using vArg = layout === "HND" ? vb.transpose(0, 1).contiguous() : vb.contiguous();
                const single = fi.singleDecodeWithKVCache(qb, kArg, vArg, { kvLayout: layout }) as fi.Tensor;
                try {
                  const want = single.toFloat32Array();
                  withContext(`request ${b} (len ${lens[b]})`, () =>
                    expectClose(got.subarray(b * numQoHeads * headDim, (b + 1) * numQoHeads * headDim), want, 2e-3, cacheDtype.startsWith("float8") ? 3e-2 : 2e-2));
                } finally {
                  single.dispose();
                }
              }
            } finally {
              built.dispose();
            }
          });
        });
      }
    }
  });
});

/** rows[t] = x[order[t]] (a new contiguous tensor on x's device). */
function gatherRows(x: fi.Tensor, order: number[]): fi.Tensor {
  const out = fi.empty(x.shape, { dtype: x.dtype, device: x.device });
  order.forEach((j, t) => {
    using dst = out.select(0, t);
    using src = x.select(0, j);
    dst.copy_(src);
  });
  return out;
}

// ------------------------------------------------------------------ bad input

describe("appendPagedKvCache: bad input throws a FlashInferError naming the argument and writes nothing", () => {
  testOnDevices("positions, batch indices, page indices, shapes, dtypes", (device) => {
    // 2 requests, pageSize 4: request 0 has pages [2, 0] and length 6, request 1 none.
    const pageSize = 4, H = 2, D = 8;
    using cache = fi.randn([3, 2, pageSize, H, D], { device, seed: newSeed() }).to({ dtype: "bfloat16" });
    const before = bitsOf(cache);
    using key = fi.randn([2, H, D], { device, seed: newSeed() }).to({ dtype: "bfloat16" });
    using indices = i32([2, 0], device);
    using indptr = i32([0, 2, 2], device);
    using last = i32([2, 0], device);
    const good = { bi: [0, 0], pos: [1, 5] };
    const call = (o: { bi?: number[]; pos?: number[]; key?: fi.Tensor; value?: fi.Tensor; cache?: Cache; indices?: fi.Tensor; layout?: Layout }) => () => {
      using bi = i32(o.bi ?? good.bi, device);
      using pos = i32(o.pos ?? good.pos, device);
      fi.appendPagedKvCache(o.key ?? key, o.value ?? key, bi, pos, o.cache ?? cache, o.indices ?? indices, indptr, last, o.layout ?? "NHD");
    };
    expectFlashInferError(call({ pos: [1, 6] }), "invalid_argument", /positions\[1\] = 6/); // past the length, inside the last page
    expectFlashInferError(call({ pos: [8, 1] }), "invalid_argument", /positions\[0\] = 8/); // past the pages
    expectFlashInferError(call({ pos: [-1, 1] }), "invalid_argument", /positions\[0\]/);
    expectFlashInferError(call({ bi: [0, 1], pos: [0, 0] }), "invalid_argument", /positions\[1\].*request 1/); // request without pages
    expectFlashInferError(call({ bi: [0, 2] }), "invalid_argument", /batch_indices\[1\] = 2/);
    expectFlashInferError(call({ bi: [-1, 0] }), "invalid_argument", /batch_indices\[0\]/);
    using badIndices = i32([2, 3], device);
    expectFlashInferError(call({ indices: badIndices }), "invalid_argument", /kv_indices\[1\] = 3/);
    // nothing appended: the page table is still checked whole (issue 16)
    using noKey = fi.zeros([0, H, D], { dtype: "bfloat16", device });
    using none = i32([], device);
    const appendNothing = (ip: number[], idx: number[], lp: number[]) => () => {
      using a = i32(ip, device), b = i32(idx, device), c = i32(lp, device);
      fi.appendPagedKvCache(noKey, noKey, none, none, cache, b, a, c);
    };
    appendNothing([0, 2, 2], [2, 0], [2, 0])();
    expectFlashInferError(appendNothing([0, 2, 1], [2, 0], [2, 0]), "invalid_argument", /kv_indptr must be non-decreasing/);
    expectFlashInferError(appendNothing([0, -1, 2], [2, 0], [2, 0]), "invalid_argument", /kv_indptr/);
    expectFlashInferError(appendNothing([0, 2, 2], [2, -1], [2, 0]), "invalid_argument", /kv_indices\[1\] = -1/);
    expectFlashInferError(appendNothing([0, 2, 2], [2, 0], [0, 0]), "invalid_argument", /kv_last_page_len\[0\] = 0/);
    expectFlashInferError(call({ bi: [0], pos: [1] }), "invalid_argument", /batchIndices/);
    using f32 = fi.zeros([2, H, D], { dtype: "float32", device });
    expectFlashInferError(call({ key: f32, value: f32 }), "invalid_argument", /appendKey: dtype/);
    using wrongHeads = fi.zeros([2, H + 1, D], { dtype: "bfloat16", device });
    expectFlashInferError(call({ key: wrongHeads, value: wrongHeads }), "invalid_argument", /pagedKvCache: numKvHeads/);
    using f16 = fi.zeros([2, H, D], { dtype: "float16", device });
    expectFlashInferError(call({ value: f16 }), "invalid_argument", /appendValue: dtype/);
    using intCache = fi.zeros([3, 2, pageSize, H, D], { dtype: "int32", device });
    expectFlashInferError(call({ cache: intCache }), "invalid_argument", /pagedKvCache: dtype/);
    using f32Cache = fi.zeros([3, 2, pageSize, H, D], { dtype: "float32", device });
    expectFlashInferError(call({ cache: f32Cache }), "unsupported", /pagedKvCache: dtype/);
    using k4 = fi.zeros([3, pageSize, H, D], { dtype: "bfloat16", device });
    using v4 = fi.zeros([3, pageSize, H, D + 1], { dtype: "bfloat16", device });
    expectFlashInferError(call({ cache: [k4, v4] }), "invalid_argument", /pagedKvCache\[1\]/);
    expectFlashInferError(call({ cache: k4 }), "invalid_argument", /pagedKvCache: expected/);
    expectFlashInferError(call({ layout: "XYZ" as Layout }), "invalid_argument", /kvLayout/);
    using badIndptr = i32([0, 3, 2], device);
    expectFlashInferError(() => {
      using bi = i32(good.bi, device);
      using pos = i32(good.pos, device);
      fi.appendPagedKvCache(key, key, bi, pos, cache, indices, badIndptr, last);
    }, "invalid_argument", /kv_indptr/);
    // nothing was written by any failed call
    expect(bitsOf(cache)).toEqual(before);
    // and the good call works
    call({})();
    expect(bitsOf(cache)).not.toEqual(before);
  });

  test.skipIf(!gpu)("device mismatch", () => {
    using cache = fi.zeros([3, 2, 4, 2, 8], { dtype: "bfloat16", device: "cuda:0" });
    using key = fi.zeros([1, 2, 8], { dtype: "bfloat16", device: "cpu" });
    expectFlashInferError(() => fi.appendPagedKvCache(key, key, [0], [0], cache, [0], [0, 1], [1]), "invalid_argument", /pagedKvCache: on cuda:0/);
    using keyGpu = fi.zeros([1, 2, 8], { dtype: "bfloat16", device: "cuda:0" });
    using bi = i32([0], "cpu");
    expectFlashInferError(() => fi.appendPagedKvCache(keyGpu, keyGpu, bi, [0], cache, [0], [0, 1], [1]), "invalid_argument", /batchIndices: on cpu/);
    expect(Array.from(cache.toFloat32Array()).every((x) => x === 0)).toBe(true);
  });
});

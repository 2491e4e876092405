// fi.gemm / fi.bmm against a float64 reference written from the definition (out = alpha * op(a)
// op(b) + beta * out) on fresh random inputs: odd sizes, transposed and strided views, every
// dtype, out in a's dtype or float32; bad input names the argument and writes nothing.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectClose, expectFlashInferError, gpu, withContext } from "./helpers.ts";

const seed = () => Math.floor(Math.random() * 2 ** 31);
const f64 = (t: fi.Tensor) => Float64Array.from(t.toFloat32Array());

/** Element (b, r, c) of a [batch, rows, cols] row-major float64 array, optionally read transposed. */
function reference(a: Float64Array, b: Float64Array, batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean,
  alpha: number, beta: number, out0: Float64Array | null): Float64Array {
  const out = new Float64Array(batch * m * n);
  for (let s = 0; s < batch; ++s) {
    for (let i = 0; i < m; ++i) {
      for (let j = 0; j < n; ++j) {
        let acc = 0;
        for (let p = 0; p < k; ++p) {
          const av = transA ? a[s * m * k + p * m + i]! : a[s * m * k + i * k + p]!;
          const bv = transB ? b[s * k * n + j * k + p]! : b[s * k * n + p * n + j]!;
          acc += av * bv;
        }
        const at = s * m * n + i * n + j;
        out[at] = alpha * acc + (out0 ? beta * out0[at]! : 0);
      }
    }
  }
  return out;
}

// Rounding of the result to the output dtype (the inputs are exact in their dtype).
const tolerance: Record<string, number> = { float32: 1e-6, float16: 1e-3, bfloat16: 8e-3 };

describe("gemm and bmm [cpu]", () => {
  test("odd sizes, every dtype, transposes, alpha and beta, out float32: against the float64 definition", () => {
    for (const dtype of ["float32", "float16", "bfloat16"] as const) {
      for (const [batch, m, n, k] of [[1, 1, 1, 1], [1, 7, 13, 5], [3, 17, 9, 33], [2, 64, 31, 1]] as const) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const rank = batch === 1 && !transA ? 2 : 3; // exercise both entries
            const shapeA = transA ? [batch, k, m] : [batch, m, k], shapeB = transB ? [batch, n, k] : [batch, k, n];
            using a3 = fi.randn(shapeA, { dtype, seed: seed(), device: "cpu" });
            using b3 = fi.randn(shapeB, { dtype, seed: seed(), device: "cpu" });
            const alpha = 0.5 + Math.random(), beta = transB ? Math.random() - 0.5 : 0;
            const outDtype = transA && dtype !== "float32" ? "float32" : dtype;
            using start = fi.randn(rank === 2 ? [m, n] : [batch, m, n], { dtype: outDtype, seed: seed(), device: "cpu" });
            const start64 = f64(start);
            using a = rank === 2 ? a3.view(shapeA.slice(1)) : a3.view(shapeA);
            using b = rank === 2 ? b3.view(shapeB.slice(1)) : b3.view(shapeB);
            const opts = { transA, transB, alpha, beta, out: start };
            withContext(`${dtype} batch ${batch} m ${m} n ${n} k ${k} transA ${transA} transB ${transB} out ${outDtype}`, () => {
              const got = rank === 2 ? fi.gemm(a, b, opts) : fi.bmm(a, b, opts);
              expect(got).toBe(start);
              const expected = reference(f64(a3), f64(b3), batch, m, n, k, transA, transB, alpha, beta, beta !== 0 ? start64 : null);
              expect(f64(got).every(Number.isFinite)).toBe(true);
              expectClose(f64(got), expected, 1e-6 * k, tolerance[outDtype]!);
            });
          }
        }
      }
    }
  });

  test("a new out in a's dtype; transposed and strided views read in place; beta 0 ignores NaN in out", () => {
    using w = fi.randn([24, 40], { dtype: "bfloat16", seed: seed(), device: "cpu" }); // [out features, in features]
    using x = fi.randn([5, 40], { dtype: "bfloat16", seed: seed(), device: "cpu" });
    using y = fi.gemm(x, w, { transB: true }); // x @ w^T, a linear layer
    expect(y.shape).toEqual([5, 24]);
    expect(y.dtype).toBe("bfloat16");
    using wt = w.transpose(0, 1); // [40, 24] view, strides [1, 40]
    using y2 = fi.gemm(x, wt);
    expect(Array.from(y2.toFloat32Array())).toEqual(Array.from(y.toFloat32Array()));
    expectClose(f64(y), reference(f64(x), f64(w), 1, 5, 24, 40, false, true, 1, 0, null), 1e-5, tolerance.bfloat16!);
    using nan = fi.full([5, 24], NaN, { dtype: "float32", device: "cpu" });
    fi.gemm(x, w, { transB: true, out: nan });
    expect(f64(nan).every(Number.isFinite)).toBe(true);
    // Every other row of x: a strided view.
    using x2 = fi.randn([10, 40], { dtype: "bfloat16", seed: seed(), device: "cpu" });
    using rows = x2.view([5, 2, 40]).select(1, 0);
    using y3 = fi.gemm(rows, w, { transB: true });
    using packed = rows.contiguous();
    using y4 = fi.gemm(packed, w, { transB: true });
    expect(Array.from(y3.toFloat32Array())).toEqual(Array.from(y4.toFloat32Array()));
  });

  test("empty sizes: K = 0 gives beta * out, M or N = 0 writes nothing", () => {
    using a = fi.zeros([3, 0], { device: "cpu" });
    using b = fi.zeros([0, 4], { device: "cpu" });
    using out = fi.full([3, 4], 2, { device: "cpu" });
    fi.gemm(a, b, { out, beta: 0.5 });
    expect(Array.from(out.toFloat32Array())).toEqual(new Array(12).fill(1));
    using noRows = fi.zeros([0, 5], { device: "cpu" });
    using weights = fi.zeros([5, 3], { device: "cpu" });
    using e = fi.gemm(noRows, weights);
    expect(e.shape).toEqual([0, 3]);
  });

  test("bad input: named errors, nothing written", () => {
    using a = fi.randn([4, 6], { seed: 1, device: "cpu" });
    using b = fi.randn([6, 5], { seed: 2, device: "cpu" });
    using out = fi.full([4, 5], 7, { device: "cpu" });
    const untouched = () => expect(Array.from(out.toFloat32Array()).every((v) => v === 7)).toBe(true);
    using bad = fi.randn([7, 5], { seed: 3, device: "cpu" });
    expectFlashInferError(() => fi.gemm(a, bad, { out }), "invalid_argument", /^gemm: b: op\(b\) must be \[K = 6, N\]/);
    using half = fi.randn([6, 5], { dtype: "float16", seed: 4, device: "cpu" });
    expectFlashInferError(() => fi.gemm(a, half, { out }), "invalid_argument", /^gemm: b: dtype must be float32/);
    using wrong = fi.zeros([4, 4], { device: "cpu" });
    expectFlashInferError(() => fi.gemm(a, b, { out: wrong }), "invalid_argument", /^gemm: out: shape must be \[4, 5\]/);
    using ints = fi.zeros([4, 6], { dtype: "int32", device: "cpu" });
    expectFlashInferError(() => fi.gemm(ints, b, { out }), "invalid_argument", /^gemm: a: dtype must be float16, bfloat16 or float32, got int32/);
    expectFlashInferError(() => fi.gemm(a, b, { out, alpha: NaN }), "invalid_argument", /^alpha: must be a finite number/);
    expectFlashInferError(() => fi.gemm(a, b, { beta: 1 }), "invalid_argument", /^beta: a nonzero beta scales an existing out/);
    expectFlashInferError(() => fi.bmm(a, b, { out }), "invalid_argument", /^a: bmm expects \[batch, M, K\]/);
    using a3 = fi.randn([2, 4, 6], { seed: 5, device: "cpu" });
    using b3 = fi.randn([3, 6, 5], { seed: 6, device: "cpu" });
    expectFlashInferError(() => fi.bmm(a3, b3), "invalid_argument", /^bmm: b: batch 3 differs from a's 2/);
    using square = fi.randn([6, 6], { seed: 7, device: "cpu" });
    expectFlashInferError(() => fi.gemm(square, square, { out: square }), "invalid_argument", /^gemm: out: must not overlap a/);
    using wide = fi.zeros([1, 5], { device: "cpu" });
    using broadcast = wide.expand([4, 5]);
    expectFlashInferError(() => fi.gemm(a, b, { out: broadcast }), "invalid_argument", /^gemm: out: is written, so it must not be a broadcast view/);
    a.dispose();
    expectFlashInferError(() => fi.gemm(a, b, { out }), "invalid_argument", /^a: tensor was disposed/);
    untouched();
  });
});

describe("bmmFp8 and SegmentGEMMWrapper [cpu]", () => {
  test("bmmFp8: float8 operands (e4m3 and e5m2, b column-major) with per-tensor scales, out bfloat16 by default", () => {
    for (const [da, db] of [["float8_e4m3fn", "float8_e4m3fn"], ["float8_e5m2", "float8_e4m3fn"]] as const) {
      using a = fi.randn([2, 5, 24], { dtype: da, seed: seed(), device: "cpu" });
      using bT = fi.randn([2, 7, 24], { dtype: db, seed: seed(), device: "cpu" }); // stored [batch, N, K]
      using b = bT.transpose(1, 2); // [batch, K, N], column-major
      using sa = fi.tensor(Float32Array.from([0.5]), [1], { device: "cpu" });
      using sb = fi.tensor(Float32Array.from([1.5]), [1], { device: "cpu" });
      using y = fi.bmmFp8(a, b, sa, sb);
      expect(y.dtype).toBe("bfloat16");
      expect(y.shape).toEqual([2, 5, 7]);
      withContext(`${da} x ${db}`, () =>
        expectClose(f64(y), reference(f64(a), f64(bT), 2, 5, 7, 24, false, true, 0.75, 0, null), 1e-5, tolerance.bfloat16!));
    }
    using a = fi.randn([1, 2, 3], { dtype: "float16", seed: 1, device: "cpu" });
    using s1 = fi.tensor(Float32Array.from([1]), [1], { device: "cpu" });
    expectFlashInferError(() => fi.bmmFp8(a, a, s1, s1), "invalid_argument", /^a: bmmFp8 expects float8_e4m3fn or float8_e5m2, got float16/);
    using two = fi.tensor(Float32Array.from([1, 2]), [2], { device: "cpu" });
    using f8 = fi.randn([1, 2, 3], { dtype: "float8_e4m3fn", seed: 2, device: "cpu" });
    expectFlashInferError(() => fi.bmmFp8(f8, f8, two, s1), "invalid_argument", /^aScale: expected a one-element float32 tensor/);
  });

  test("SegmentGEMMWrapper: segments of rows times their weights (indices, row- and column-major weights, an empty segment)", () => {
    const dIn = 12, dOut = 5, lens = [3, 0, 4, 2];
    using x = fi.randn([9, dIn], { dtype: "bfloat16", seed: seed(), device: "cpu" });
    using wCol = fi.randn([3, dOut, dIn], { dtype: "bfloat16", seed: seed(), device: "cpu" }); // [numWeights, dOut, dIn]
    const which = [2, 0, 1, 2];
    const seg = new fi.SegmentGEMMWrapper();
    using y = seg.run(x, wCol, 4, true, { segLens: lens, weightIndices: which });
    const x64 = f64(x), w64 = f64(wCol);
    const expected = new Float64Array(9 * dOut);
    let row = 0;
    lens.forEach((n, i) => {
      const w = w64.subarray(which[i]! * dOut * dIn, (which[i]! + 1) * dOut * dIn);
      expected.set(reference(x64.subarray(row * dIn, (row + n) * dIn), w, 1, n, dOut, dIn, false, true, 1, 0, null), row * dOut);
      row += n;
    });
    expectClose(f64(y), expected, 1e-5, tolerance.bfloat16!);
    using wRow = wCol.transpose(1, 2).contiguous(); // [numWeights, dIn, dOut]
    using y2 = seg.run(x, wRow, 4, false, { segIndptr: [0, 3, 3, 7, 9], weightIndices: which });
    expect(Array.from(y2.toFloat32Array())).toEqual(Array.from(y.toFloat32Array()));
    expectFlashInferError(() => seg.run(x, wCol, 4, true, { segLens: [3, 0, 4, 1] }), "invalid_argument", /segments must be non-negative and cover x's 9 rows/);
    expectFlashInferError(() => seg.run(x, wCol, 4, true, { segLens: lens, weightIndices: [0, 1, 2, 3] }), "invalid_argument", /weightIndices: expected 4 indices in \[0, 3\)/);
  });
});

describe("gemm on CUDA", () => {
  test.skipIf(!gpu)("is refused with a FlashInferError until the cuBLASLt backend exists, nothing written [cuda]", () => {
    using a = fi.randn([4, 6], { seed: 1, device: "cuda:0" });
    using b = fi.randn([6, 5], { seed: 2, device: "cuda:0" });
    using out = fi.full([4, 5], 7, { device: "cuda:0" });
    expectFlashInferError(() => fi.gemm(a, b, { out }), "unsupported", /cuBLASLt/);
    expect(Array.from(out.toFloat32Array()).every((v) => v === 7)).toBe(true);
  });
});

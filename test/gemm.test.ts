// fi.gemm / fi.bmm against a float64 reference written from the definition (out = alpha * op(a)
// op(b) + beta * out) on fresh random inputs: odd sizes, transposed and strided views, every
// dtype, out in a's dtype or float32; bad input names the argument and writes nothing.
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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

// cuBLASLt's headers, where some CUDA toolkit or pip's nvidia-cublas wheel has them (the GPU machine).
function cublasLtHeaderDir(): string | null {
  const roots = [process.env.CUDA_HOME, "/usr/local/cuda"].filter((r): r is string => !!r).map((r) => `${r}/include`);
  const py = Bun.spawnSync(["python3", "-c", "import nvidia, os; print('\\n'.join(os.path.join(p, d, 'include') for p in nvidia.__path__ for d in ('cublas', 'cu13')))"],
    { stdout: "pipe", stderr: "ignore" });
  if (py.exitCode === 0) roots.push(...new TextDecoder().decode(py.stdout).split("\n").filter(Boolean));
  return roots.find((d) => existsSync(join(d, "cublasLt.h"))) ?? null;
}

describe("gemm on CUDA (cuBLASLt)", () => {
  test.skipIf(!gpu)("against the float64 definition: every dtype, transposes, batches, alpha and beta, out float32 or column-major, strided rows; every element written [cuda]", () => {
    const device = "cuda:0";
    for (const dtype of ["float32", "float16", "bfloat16"] as const) {
      for (const [batch, m, n, k] of [[1, 1, 1, 1], [1, 7, 13, 5], [3, 17, 9, 33], [2, 64, 31, 1], [1, 128, 96, 300]] as const) {
        for (const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]] as const) {
          const shapeA = transA ? [batch, k, m] : [batch, m, k], shapeB = transB ? [batch, n, k] : [batch, k, n];
          using a = fi.randn(shapeA, { dtype, seed: seed(), device: "cpu" });
          using b = fi.randn(shapeB, { dtype, seed: seed(), device: "cpu" });
          const alpha = 0.5 + Math.random(), beta = transB ? Math.random() - 0.5 : 0;
          const outDtype = transA && dtype !== "float32" ? "float32" : dtype;
          // A column-major out (a transposed view of [batch, n, m]) when transA and transB.
          const colMajor = transA && transB;
          using start = fi.randn([batch, m, n], { dtype: outDtype, seed: seed(), device: "cpu" });
          using startD = start.to(device);
          using store = colMajor ? startD.transpose(1, 2).contiguous() : null;
          using out = store ? store.transpose(1, 2) : startD.view([batch, m, n]);
          if (beta === 0) out.fill_(NaN); // poison: a zero beta must not read it, and every element must be written
          using ad = a.to(device), bd = b.to(device);
          withContext(`${dtype} batch ${batch} m ${m} n ${n} k ${k} transA ${transA} transB ${transB} out ${outDtype}${colMajor ? " column-major" : ""}`, () => {
            if (batch === 1) {
              using a2 = ad.select(0, 0), b2 = bd.select(0, 0), o2 = out.select(0, 0);
              fi.gemm(a2, b2, { transA, transB, alpha, beta, out: o2 });
            } else {
              fi.bmm(ad, bd, { transA, transB, alpha, beta, out });
            }
            const expected = reference(f64(a), f64(b), batch, m, n, k, transA, transB, alpha, beta, beta !== 0 ? f64(start) : null);
            using got = out.contiguous();
            const g = f64(got);
            expect(g.every(Number.isFinite)).toBe(true);
            expectClose(g, expected, 2e-6 * k, dtype === "float32" ? 1e-5 : tolerance[outDtype]!);
          });
        }
      }
    }
  });

  test.skipIf(!gpu)("strided views (rows of a wider matrix), a broadcast batch of b, and a GEMM replayed from a CUDA graph [cuda]", () => {
    const device = "cuda:0";
    using wide = fi.randn([3, 40, 64], { dtype: "bfloat16", seed: seed(), device });
    using a = wide.slice(2, 8, 40); // [3, 40, 32], row stride 64
    using w = fi.randn([32, 24], { dtype: "bfloat16", seed: seed(), device });
    using b = w.unsqueeze(0).expand([3, 32, 24]); // batch stride 0
    using out = fi.full([3, 40, 24], NaN, { dtype: "bfloat16", device });
    fi.bmm(a, b, { out });
    using ac = a.contiguous(), bc = b.contiguous();
    const expected = reference(f64(ac), f64(bc), 3, 40, 24, 32, false, false, 1, 0, null);
    expectClose(f64(out), expected, 1e-4, tolerance.bfloat16!);
    // Graph replay: the first GEMM above made the device's cuBLASLt handle and workspace.
    using out2 = fi.full([3, 40, 24], NaN, { dtype: "bfloat16", device });
    using graph = new fi.CudaGraph({ device });
    graph.capture(() => fi.bmm(a, b, { out: out2 }));
    graph.replay();
    expect(Array.from(out2.toFloat32Array())).toEqual(Array.from(out.toFloat32Array()));
  });

  test.skipIf(!gpu)("bmmFp8: e4m3 x e4m3 and e4m3 x e5m2 with a column-major b, per-tensor scales [cuda]", () => {
    const device = "cuda:0";
    for (const bType of ["float8_e4m3fn", "float8_e5m2"] as const) {
      const [batch, m, n, k] = [2, 48, 32, 64];
      using a16 = fi.randn([batch, m, k], { dtype: "float32", seed: seed(), device: "cpu" });
      using b16 = fi.randn([batch, n, k], { dtype: "float32", seed: seed(), device: "cpu" });
      using a8 = a16.to({ dtype: "float8_e4m3fn" }), b8 = b16.to({ dtype: bType });
      using ad = a8.to(device), bd = b8.to(device);
      using bT = bd.transpose(1, 2); // [batch, k, n], column-major
      using aScale = fi.tensor(Float32Array.from([0.5]), [1], { device }), bScale = fi.tensor(Float32Array.from([2.5]), [1], { device });
      using out = fi.bmmFp8(ad, bT, aScale, bScale, { dtype: "bfloat16" });
      const expected = reference(f64(a8), f64(b8), batch, m, n, k, false, true, 1.25, 0, null);
      withContext(`e4m3 x ${bType}`, () => expectClose(f64(out), expected, 1e-3 * k, tolerance.bfloat16!));
    }
  });

  test.skipIf(!gpu)("refusals name the argument and write nothing: an operand with no unit stride; cuBLASLt absent ($FLASHINFER_CUBLASLT) [cuda]", () => {
    const device = "cuda:0";
    using base = fi.randn([8, 8, 2], { device });
    using a = base.select(2, 0); // [8, 8], strides (16, 2)
    using b = fi.randn([8, 4], { device });
    using out = fi.full([8, 4], 7, { device });
    expectFlashInferError(() => fi.gemm(a, b, { out }), "unsupported", /a: a GEMM on CUDA needs a unit stride/);
    expect(Array.from(out.toFloat32Array()).every((v) => v === 7)).toBe(true);
    const script = `import * as fi from "${join(import.meta.dir, "..", "lib", "index.ts")}";
      const a = fi.randn([4, 4], { device: "cuda:0" });
      try { fi.gemm(a, a); console.log("no error"); } catch (e) { console.log(e.code + " " + e.message); }`;
    const r = Bun.spawnSync([process.execPath, "-e", script], { env: { ...process.env, FLASHINFER_CUBLASLT: "/nonexistent/libcublasLt.so.13" }, stdout: "pipe" });
    const text = new TextDecoder().decode(r.stdout);
    expect(text).toMatch(/^unsupported gemm: a: GEMM on CUDA needs cuBLASLt .*pip install nvidia-cublas.*FLASHINFER_CUBLASLT.*\/nonexistent\/libcublasLt\.so\.13/s);
  });

  test.skipIf(!cublasLtHeaderDir())("cuBLASLt declarations (native/src/gemm/cublaslt_abi.h) match cublasLt.h: enum values, the heuristic result's layout, entry point types", () => {
    const dir = mkdtempSync(join(tmpdir(), "fi-cublaslt-"));
    const src = join(dir, "check.cpp");
    writeFileSync(src, `#include <cublasLt.h>
#include <type_traits>
#include "cublaslt_abi.h"
namespace lt = fi::cublaslt;
static_assert(lt::kSuccess == CUBLAS_STATUS_SUCCESS && lt::kNotSupported == CUBLAS_STATUS_NOT_SUPPORTED);
static_assert(lt::kOpN == CUBLAS_OP_N && lt::kOpT == CUBLAS_OP_T && lt::kCompute32F == CUBLAS_COMPUTE_32F);
static_assert(lt::kDescTransA == CUBLASLT_MATMUL_DESC_TRANSA && lt::kDescTransB == CUBLASLT_MATMUL_DESC_TRANSB);
static_assert(lt::kLayoutBatchCount == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT && lt::kLayoutStridedBatchOffset == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET);
static_assert(lt::kPrefMaxWorkspaceBytes == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES);
static_assert(sizeof(lt::MatmulAlgo) == sizeof(cublasLtMatmulAlgo_t) && sizeof(lt::HeuristicResult) == sizeof(cublasLtMatmulHeuristicResult_t));
static_assert(offsetof(lt::HeuristicResult, workspace_size) == offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize));
static_assert(offsetof(lt::HeuristicResult, state) == offsetof(cublasLtMatmulHeuristicResult_t, state));
static_assert(sizeof(cublasStatus_t) == sizeof(lt::Status) && sizeof(cublasLtHandle_t) == sizeof(lt::Handle));
// Each entry point's parameter list, with the opaque handles and enums as we declare them.
template <class R, class... A, class S, class... B> constexpr bool same_arity(R (*)(A...), S (*)(B...)) { return sizeof...(A) == sizeof...(B); }
static_assert(same_arity(&cublasLtMatmul, lt::MatmulFn{}) && same_arity(&cublasLtMatmulAlgoGetHeuristic, lt::MatmulAlgoGetHeuristicFn{}));
static_assert(same_arity(&cublasLtMatrixLayoutCreate, lt::MatrixLayoutCreateFn{}) && same_arity(&cublasLtMatmulDescCreate, lt::MatmulDescCreateFn{}));
int main() {}
`);
    const cxx = ["c++", "g++", "clang++"].find((c) => Bun.which(c));
    const r = Bun.spawnSync([cxx!, "-std=c++17", "-fsyntax-only", `-I${cublasLtHeaderDir()}`, "-I/usr/local/cuda/include", `-I${join(import.meta.dir, "..", "native", "src", "gemm")}`, src],
      { stdout: "pipe", stderr: "pipe" });
    expect(new TextDecoder().decode(r.stderr)).toBe("");
    expect(r.exitCode).toBe(0);
  });
});

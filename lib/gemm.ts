// Matrix products (FlashInfer's flashinfer.gemm): fi.gemm over [M, K] x [K, N] and fi.bmm over
// batches [batch, M, K] x [batch, K, N], with transposed operands (transA / transB: the last two
// dimensions swapped, any strides: a transposed view costs nothing), out = alpha * op(a) op(b) +
// beta * out. float16, bfloat16 or float32; out in a's dtype or float32. The CPU backend
// accumulates in float64 and rounds once; on CUDA, cuBLASLt loaded at run time
// (native/src/gemm/gemm_cuda.cpp). Bad input throws a FlashInferError naming the argument and
// writes nothing; shapes, dtypes and devices are checked by the native entry (gemm.cpp).
import { argCheck, checkOptions } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { liveTensor as live } from "./kv_cache.ts";
import { currentStreamPointer } from "./stream.ts";
import type { DType } from "./dtype.ts";
import { Tensor, empty } from "./tensor.ts";

export interface GemmOptions {
  /** Written instead of a new tensor: [(batch,) M, N], a's dtype or float32, not overlapping a or b. */
  out?: Tensor;
  /** op(a) = a transposed (a stored as [(batch,) K, M]). */
  transA?: boolean;
  /** op(b) = b transposed (b stored as [(batch,) N, K]; a weight stored [out features, in features] is the usual case). */
  transB?: boolean;
  /** Default 1. */
  alpha?: number;
  /** Default 0 (out is not read); with out given, out = alpha * op(a) op(b) + beta * out. */
  beta?: number;
}

const descs = Array.from({ length: 3 }, () => new TensorDescBuffer());
const [dA, dB, dC] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];

function scalar(x: number | undefined, fallback: number, name: string): number {
  const v = x ?? fallback;
  argCheck(typeof v === "number" && Number.isFinite(v), () => `${name}: must be a finite number, got ${String(v)}`);
  return v;
}

function product(name: string, rank: number, a: Tensor, b: Tensor, opts: GemmOptions, outDtype?: DType): Tensor {
  argCheck(typeof opts === "object" && opts !== null, `${name}: options must be an object`);
  live(a, "a");
  live(b, "b");
  argCheck(a.ndim === rank, () => `a: ${name} expects ${rank === 2 ? "[M, K]" : "[batch, M, K]"}${opts.transA ? " (transposed: [.., K, M])" : ""}, got [${a.shape}]`);
  const transA = opts.transA === true, transB = opts.transB === true;
  const alpha = scalar(opts.alpha, 1, "alpha"), beta = scalar(opts.beta, 0, "beta");
  const run = (out: Tensor) =>
    check(lib().fi_gemm(dA.write(a.descFields()), dB.write(b.descFields()), dC.write(out.descFields()), transA ? 1 : 0, transB ? 1 : 0, alpha,
      beta, currentStreamPointer(a.device)), name);
  if (opts.out !== undefined) {
    run(live(opts.out, "out"));
    return opts.out;
  }
  argCheck(beta === 0, "beta: a nonzero beta scales an existing out; pass out");
  const m = a.shape[rank - (transA ? 1 : 2)]!;
  const n = b.ndim === rank ? b.shape[rank - (transB ? 2 : 1)]! : 0;
  const out = empty(rank === 2 ? [m, n] : [a.shape[0]!, m, n], { dtype: outDtype ?? a.dtype, device: a.device });
  try {
    run(out);
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/** op(a) [M, K] times op(b) [K, N] (FlashInfer's / torch's mm): out [M, N]. */
export function gemm(a: Tensor, b: Tensor, opts: GemmOptions = {}): Tensor {
  return product("gemm", 2, a, b, opts);
}

/** Batched: op(a) [batch, M, K] times op(b) [batch, K, N] (torch.bmm): out [batch, M, N]. */
export function bmm(a: Tensor, b: Tensor, opts: GemmOptions = {}): Tensor {
  return product("bmm", 3, a, b, opts);
}

/** The value of a one-element float32 scale tensor (any device: read through the host). */
function scaleValue(t: Tensor, name: string): number {
  live(t, name);
  argCheck(t.dtype === "float32" && t.numel === 1, () => `${name}: expected a one-element float32 tensor, got ${t.dtype} [${t.shape}]`);
  const v = (t.toArray() as Float32Array)[0]!;
  argCheck(Number.isFinite(v), () => `${name}: must be finite, got ${String(v)}`);
  return v;
}

/**
 * FlashInfer's bmm_fp8: (a * aScale) @ (b * bScale) for float8 a [batch, M, K] and b [batch, K, N]
 * (e4m3 or e5m2, any strides: a column-major b is a transposed view), per-tensor scales as
 * one-element float32 tensors; out bfloat16 (default), float16 or float32.
 */
export function bmmFp8(a: Tensor, b: Tensor, aScale: Tensor, bScale: Tensor, opts: { out?: Tensor; dtype?: DType } = {}): Tensor {
  checkOptions(opts);
  const alpha = scaleValue(aScale, "aScale") * scaleValue(bScale, "bScale");
  live(a, "a");
  argCheck(a.dtype === "float8_e4m3fn" || a.dtype === "float8_e5m2", () => `a: bmmFp8 expects float8_e4m3fn or float8_e5m2, got ${a.dtype}`);
  return product("bmmFp8", 3, a, b, { out: opts.out, alpha }, opts.dtype ?? "bfloat16");
}

/**
 * FlashInfer's SegmentGEMMWrapper (grouped GEMM, the LoRA case): rows of x [totalRows, dIn] in
 * segments, segment i multiplied by weights[weightIndices[i]] (default: weights[i]); weights
 * [numWeights, dOut, dIn] (weightColumnMajor = true, default: each row an output feature) or
 * [numWeights, dIn, dOut]. One GEMM per segment on views; out [totalRows, dOut] in x's dtype.
 */
export class SegmentGEMMWrapper {
  /** The workspace is accepted for FlashInfer parity; the segments run as separate GEMMs and need none. */
  constructor(_workspace?: Tensor) {}

  run(x: Tensor, weights: Tensor, batchSize: number, weightColumnMajor: boolean,
    opts: { segLens?: ArrayLike<number>; segIndptr?: ArrayLike<number>; weightIndices?: ArrayLike<number>; out?: Tensor } = {}): Tensor {
    live(x, "x");
    live(weights, "weights");
    checkOptions(opts);
    const numbers = (v: unknown, name: string): number[] => {
      argCheck(v !== null && typeof v === "object" && typeof (v as ArrayLike<number>).length === "number", () => `${name}: expected an array of integers`);
      return Array.from(v as ArrayLike<number>);
    };
    argCheck(x.ndim === 2, () => `x: expected [totalRows, dIn], got [${x.shape}]`);
    argCheck(weights.ndim === 3, () => `weights: expected [numWeights, dOut, dIn] or [numWeights, dIn, dOut], got [${weights.shape}]`);
    argCheck(Number.isInteger(batchSize) && batchSize >= 1, () => `batchSize: expected a positive integer, got ${String(batchSize)}`);
    argCheck((opts.segLens === undefined) !== (opts.segIndptr === undefined), "segLens, segIndptr: give exactly one");
    const indptr = opts.segIndptr !== undefined ? numbers(opts.segIndptr, "segIndptr") : [0, ...numbers(opts.segLens, "segLens").map(((t) => (n: number) => (t += n))(0))];
    argCheck(indptr.length === batchSize + 1, () => `${opts.segIndptr !== undefined ? "segIndptr" : "segLens"}: expected ${batchSize + (opts.segIndptr !== undefined ? 1 : 0)} entries`);
    argCheck(indptr[0] === 0 && indptr.every((v, i) => Number.isInteger(v) && (i === 0 || v >= indptr[i - 1]!)) && indptr[batchSize] === x.shape[0],
      () => `segLens / segIndptr: segments must be non-negative and cover x's ${x.shape[0]} rows, got offsets [${indptr}]`);
    const which = opts.weightIndices !== undefined ? numbers(opts.weightIndices, "weightIndices") : Array.from({ length: batchSize }, (_, i) => i);
    argCheck(which.length === batchSize && which.every((w) => Number.isInteger(w) && w >= 0 && w < weights.shape[0]!),
      () => `weightIndices: expected ${batchSize} indices in [0, ${weights.shape[0]})`);
    const dOut = weightColumnMajor ? weights.shape[1]! : weights.shape[2]!, dIn = weightColumnMajor ? weights.shape[2]! : weights.shape[1]!;
    argCheck(x.shape[1] === dIn, () => `x: expected dIn = ${dIn} columns (the weights'), got ${x.shape[1]}`);
    const out = opts.out ?? empty([x.shape[0]!, dOut], { dtype: x.dtype, device: x.device });
    try {
      if (opts.out != null) {
        live(out, "out");
        argCheck(out.ndim === 2 && out.shape[0] === x.shape[0] && out.shape[1] === dOut, () => `out: expected [${x.shape[0]}, ${dOut}], got [${out.shape}]`);
      }
      for (let i = 0; i < batchSize; ++i) {
        if (indptr[i + 1] === indptr[i]) continue;
        using rows = x.slice(0, indptr[i], indptr[i + 1]);
        using w = weights.select(0, which[i]!);
        using o = out.slice(0, indptr[i], indptr[i + 1]);
        gemm(rows, w, { transB: weightColumnMajor, out: o });
      }
    } catch (e) {
      if (opts.out == null) out.dispose();
      throw e;
    }
    return out;
  }
}

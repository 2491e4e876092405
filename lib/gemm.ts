// Matrix products (FlashInfer's flashinfer.gemm): fi.gemm over [M, K] x [K, N] and fi.bmm over
// batches [batch, M, K] x [batch, K, N], with transposed operands (transA / transB: the last two
// dimensions swapped, any strides: a transposed view costs nothing), out = alpha * op(a) op(b) +
// beta * out. float16, bfloat16 or float32; out in a's dtype or float32. The CPU backend
// accumulates in float64 and rounds once; on CUDA the cuBLASLt backend is not built yet (a
// FlashInferError says so). Bad input throws a FlashInferError naming the argument and writes
// nothing; shapes, dtypes and devices are checked by the native entry (gemm.cpp).
import { argCheck } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";
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

function live(t: unknown, name: string): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  return t;
}

function scalar(x: number | undefined, fallback: number, name: string): number {
  const v = x ?? fallback;
  argCheck(typeof v === "number" && Number.isFinite(v), () => `${name}: must be a finite number, got ${String(v)}`);
  return v;
}

function product(name: string, rank: number, a: Tensor, b: Tensor, opts: GemmOptions): Tensor {
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
  const out = empty(rank === 2 ? [m, n] : [a.shape[0]!, m, n], { dtype: a.dtype, device: a.device });
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

// Float64 references of the norm family (rows of `hidden` elements, row-major arrays).
import { type FloatFormat, roundToFormat } from "./dtype.ts";

/** out = x / sqrt(mean(x^2) + eps) * (gemma ? 1 + w : w), per row. */
export function rmsnormReference(x: ArrayLike<number>, w: ArrayLike<number>, rows: number, hidden: number, eps: number, gemma = false): Float64Array {
  const out = new Float64Array(rows * hidden);
  for (let r = 0; r < rows; ++r) {
    let ss = 0;
    for (let i = 0; i < hidden; ++i) ss += x[r * hidden + i]! ** 2;
    const inv = 1 / Math.sqrt(ss / hidden + eps);
    for (let i = 0; i < hidden; ++i) out[r * hidden + i] = x[r * hidden + i]! * inv * (gemma ? 1 + w[i]! : w[i]!);
  }
  return out;
}

/** residual = round(residual + x) to the dtype; out = rmsnorm(residual). */
export function fusedAddRmsnormReference(x: ArrayLike<number>, residual: ArrayLike<number>, w: ArrayLike<number>, rows: number, hidden: number,
  eps: number, dtype: FloatFormat, gemma = false): { residual: Float64Array; out: Float64Array } {
  const sum = new Float64Array(rows * hidden);
  for (let i = 0; i < sum.length; ++i) sum[i] = roundToFormat(x[i]! + residual[i]!, dtype).value;
  return { residual: sum, out: rmsnormReference(sum, w, rows, hidden, eps, gemma) };
}

/** out = (x - mean) / sqrt(var + eps) * gamma + beta, biased variance, per row. */
export function layernormReference(x: ArrayLike<number>, gamma: ArrayLike<number>, beta: ArrayLike<number>, rows: number, hidden: number, eps: number): Float64Array {
  const out = new Float64Array(rows * hidden);
  for (let r = 0; r < rows; ++r) {
    let sum = 0;
    for (let i = 0; i < hidden; ++i) sum += x[r * hidden + i]!;
    const mean = sum / hidden;
    let v = 0;
    for (let i = 0; i < hidden; ++i) v += (x[r * hidden + i]! - mean) ** 2;
    const inv = 1 / Math.sqrt(v / hidden + eps);
    for (let i = 0; i < hidden; ++i) out[r * hidden + i] = (x[r * hidden + i]! - mean) * inv * gamma[i]! + beta[i]!;
  }
  return out;
}

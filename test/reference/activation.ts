// float64 references of the activation family (gated activations).

/** erfc in float64: Taylor series of erf below 3, a continued fraction above (relative error ~1e-14). */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0) return 2 - erfc(-x);
  if (x < 3) return 1 - erf(x);
  let f = x;
  for (let k = 80; k >= 1; --k) f = x + k / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (Math.abs(x) >= 3) return x > 0 ? 1 - erfc(x) : erfc(-x) - 1;
  // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
  let term = x, sum = x;
  for (let n = 1; n < 200; ++n) {
    term *= (-x * x) / n;
    const add = term / (2 * n + 1);
    sum += add;
    if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

export const silu = (x: number): number => x / (1 + Math.exp(-x));
/** Exact gelu; 1 + erf(z) is taken as erfc(-z) so large negative x keeps its precision. */
export const gelu = (x: number): number => 0.5 * x * erfc(-x / Math.SQRT2);
export const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

/** out[r, j] = act(x[r, j]) * x[r, d + j] for row-major x [rows, 2d]; returns [rows, d] in float64. */
export function actAndMulReference(act: (x: number) => number, x: ArrayLike<number>, rows: number, d: number): Float64Array {
  const out = new Float64Array(rows * d);
  for (let r = 0; r < rows; ++r) {
    for (let j = 0; j < d; ++j) out[r * d + j] = act(x[r * 2 * d + j]!) * x[r * 2 * d + d + j]!;
  }
  return out;
}

// Shared test helpers: which devices to run on, poisoning, and float64 comparisons.
import { expect, test } from "bun:test";
import * as fi from "../lib/index.ts";

export const gpu = fi.cudaAvailable();

/**
 * Draw counts of statistical tests: a tenth under compute-sanitizer (scripts/gpu-run.sh sets
 * FLASHINFER_SANITIZER=1), where racecheck makes every CTA of a 20000-row sampling launch slow
 * enough that one file outlasts the pass; the statistics stay valid, with less power.
 */
export const draws = (n: number): number => (process.env.FLASHINFER_SANITIZER ? Math.ceil(n / 10) : n);

/**
 * Registers `fn` once per device: cpu always, cuda:0 where a GPU is present (skipped elsewhere).
 * `cudaTimeoutMs` for GPU cases that compile (the kernel generator's nvcc runs, seconds each).
 */
export function testOnDevices(name: string, fn: (device: fi.Device) => void | Promise<void>, cudaTimeoutMs?: number): void {
  test(`${name} [cpu]`, () => fn("cpu"));
  test.skipIf(!gpu)(`${name} [cuda]`, () => fn("cuda:0"), cudaTimeoutMs);
}

/** A JS float64 array of fresh random values in (-scale, scale). */
export function randomValues(n: number, scale = 4): number[] {
  return Array.from({ length: n }, () => (Math.random() * 2 - 1) * scale);
}

/**
 * Expects |a - b| <= atol + rtol * |b| everywhere; NaN in either never passes. atol may be one
 * number or one per element (an error bound that depends on the element).
 */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number | ArrayLike<number> = 0, rtol = 0): void {
  expect(actual.length).toBe(expected.length);
  if (typeof atol !== "number") expect(atol.length).toBe(expected.length);
  for (let i = 0; i < expected.length; ++i) {
    const a = actual[i]!, e = expected[i]!, at = typeof atol === "number" ? atol : atol[i]!;
    const ok = Number.isFinite(a) && Number.isFinite(e) ? Math.abs(a - e) <= at + rtol * Math.abs(e) : Object.is(a, e);
    if (!ok) throw new Error(`element ${i}: got ${a}, expected ${e} (atol ${at}, rtol ${rtol})`);
  }
}

/**
 * Unit roundoff of the probabilities as an attention kernel's P V product takes them: tensor
 * cores multiply p in the dtype of V (bfloat16: 8 significant bits, float16: 11), so each output
 * may be off by up to this times the reference's magnitude (sum_j p_j |v_j|). With few visible
 * keys nothing averages the rounding out: bfloat16 outputs near 0 built from |v| ~ 2 values miss
 * a fixed 2e-3 by up to 1.4x (simulated; seen on the H100 about one run in five, issue 10).
 */
export function pRoundoff(dtype: fi.DType): number {
  return dtype === "bfloat16" ? 2 ** -8 : dtype === "float16" ? 2 ** -11 : 0;
}

/** Per-element absolute tolerance: atol plus the P rounding bound u * magnitude. */
export function attentionAtol(atol: number, magnitude: ArrayLike<number>, dtype: fi.DType): Float64Array {
  const u = pRoundoff(dtype);
  return Float64Array.from(magnitude, (m) => atol + u * m);
}

/** Row-major multi-index of linear index i for a shape. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; --d) {
    idx[d] = i % shape[d]!;
    i = Math.floor(i / shape[d]!);
  }
  return idx;
}

export function ravel(idx: readonly number[], shape: readonly number[]): number {
  let i = 0;
  for (let d = 0; d < shape.length; ++d) i = i * shape[d]! + idx[d]!;
  return i;
}

/** Expects `fn` to throw a FlashInferError with `code` whose message matches `pattern`. */
export function expectFlashInferError(fn: () => unknown, code: fi.ErrorCode, pattern?: RegExp): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(fi.FlashInferError);
  expect((error as fi.FlashInferError).code).toBe(code);
  if (pattern) expect((error as Error).message).toMatch(pattern);
}

/** Shuffles `a` in place (Fisher-Yates) and returns it. */
export function shuffle<T>(a: T[]): T[] {
  for (let i = a.length - 1; i > 0; --i) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** Runs fn; a failure is rethrown with `label` in front of its message. */
export function withContext<T>(label: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const code = e instanceof fi.FlashInferError ? ` [${e.code}]` : "";
    throw new Error(`${label}\n  ${e instanceof Error ? `${e.name}${code}: ${e.message}` : String(e)}`, { cause: e });
  }
}

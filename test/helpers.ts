// Shared test helpers: which devices to run on, poisoning, and float64 comparisons.
import { expect, test } from "bun:test";
import * as fi from "../lib/index.ts";

export const gpu = fi.cudaAvailable();

/** Registers `fn` once per device: cpu always, cuda:0 where a GPU is present (skipped elsewhere). */
export function testOnDevices(name: string, fn: (device: fi.Device) => void | Promise<void>): void {
  test(`${name} [cpu]`, () => fn("cpu"));
  test.skipIf(!gpu)(`${name} [cuda]`, () => fn("cuda:0"));
}

/** A JS float64 array of fresh random values in (-scale, scale). */
export function randomValues(n: number, scale = 4): number[] {
  return Array.from({ length: n }, () => (Math.random() * 2 - 1) * scale);
}

/** Expects |a - b| <= atol + rtol * |b| everywhere; NaN in either never passes. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 0, rtol = 0): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; ++i) {
    const a = actual[i]!, e = expected[i]!;
    const ok = Number.isFinite(a) && Number.isFinite(e) ? Math.abs(a - e) <= atol + rtol * Math.abs(e) : Object.is(a, e);
    if (!ok) throw new Error(`element ${i}: got ${a}, expected ${e} (atol ${atol}, rtol ${rtol})`);
  }
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

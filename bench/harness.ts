// Pieces the attention benchmarks share: a paged KV table whose pages are scattered over the
// cache (as in serving), and the median host time of a call.

/** 0..n-1 in a seeded pseudo-random order. */
function shuffled(n: number, seed: number): Int32Array {
  const a = Int32Array.from({ length: n }, (_, i) => i);
  let s = seed >>> 0;
  for (let i = n - 1; i > 0; --i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** FlashInfer's CSR page table for `batch` requests of kvLen tokens each, pages shuffled. */
export function scatteredPageTable(batch: number, kvLen: number, pageSize: number) {
  const perRequest = Math.ceil(kvLen / pageSize);
  const indices = shuffled(batch * perRequest, 7);
  const indptr = Int32Array.from({ length: batch + 1 }, (_, i) => i * perRequest);
  const lastPageLen = new Int32Array(batch).fill(kvLen - (perRequest - 1) * pageSize);
  return { indptr, indices, lastPageLen, pages: batch * perRequest };
}

/** Median wall time of fn() in microseconds, after `warmup` untimed calls. */
export function hostMedianUs(fn: () => void, warmup: number, iterations: number): number {
  for (let i = 0; i < warmup; ++i) fn();
  const samples: number[] = [];
  for (let i = 0; i < iterations; ++i) {
    const t0 = performance.now();
    fn();
    samples.push((performance.now() - t0) * 1e3);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1]!;
}

// Page family cases for bench/elementwise.bench.ts: appendPagedKvCache of 8192 tokens x 8 kv
// heads x 128 dims bf16 (32 requests of 256 tokens, page size 16) into a paged cache whose pages
// are scattered at random. bytes = appended K + V read once + written once. `run` is one kernel
// launch: the index values are checked by one call first and skipped in the timed ones
// (checkIndices: false), so their validation (a device-to-host copy and a stream sync) is not timed.
import * as fi from "../../lib/index.ts";
import type { CaseFactory } from "./case.ts";

export const cases: CaseFactory = (device) => {
  const tokens = 8192, heads = 8, headDim = 128, pageSize = 16, batch = 32;
  const perRequest = tokens / batch, pagesPerRequest = perRequest / pageSize;
  const maxPages = batch * pagesPerRequest + 64;
  const pages = Array.from({ length: maxPages }, (_, i) => i);
  for (let i = pages.length - 1; i > 0; --i) {
    const j = Math.floor(Math.random() * (i + 1));
    [pages[i], pages[j]] = [pages[j]!, pages[i]!];
  }
  const i32 = (a: number[]) => fi.tensor(Int32Array.from(a), [a.length], { dtype: "int32", device });
  const indices = i32(pages.slice(0, batch * pagesPerRequest));
  const indptr = i32(Array.from({ length: batch + 1 }, (_, b) => b * pagesPerRequest));
  const last = i32(new Array(batch).fill(pageSize));
  const batchIndices = i32(Array.from({ length: tokens }, (_, j) => Math.floor(j / perRequest)));
  const positions = i32(Array.from({ length: tokens }, (_, j) => j % perRequest));
  const key = fi.randn([tokens, heads, headDim], { dtype: "bfloat16", device, seed: 1 });
  const value = fi.randn([tokens, heads, headDim], { dtype: "bfloat16", device, seed: 2 });
  const cache = fi.zeros([maxPages, 2, pageSize, heads, headDim], { dtype: "bfloat16", device });
  // One checked call first: the table is valid, so the timed runs write in bounds.
  fi.appendPagedKvCache(key, value, batchIndices, positions, cache, indices, indptr, last);
  const owned = [indices, indptr, last, batchIndices, positions, key, value, cache];
  return [
    {
      name: `appendPagedKvCache ${tokens} tok x ${heads} x ${headDim} bf16, page ${pageSize}, scattered`,
      bytes: 2 * (key.nbytes + value.nbytes),
      run: () => fi.appendPagedKvCache(key, value, batchIndices, positions, cache, indices, indptr, last, "NHD", { checkIndices: false }),
      dispose: () => owned.forEach((t) => t.dispose()),
    },
  ];
};

// Rope family case for bench/elementwise.bench.ts: applyRopePosIdsInplace on q [8192, 32, 128]
// and k [8192, 8, 128] bf16 (Llama-3-8B-like heads, 8192 tokens at positions up to 1e5). In
// place, so run() allocates nothing (posIds is an int32 device tensor made once). bytes: q and
// k read once and written once, plus the position ids.
import * as fi from "../../lib/index.ts";
import type { CaseFactory } from "./case.ts";

export const cases: CaseFactory = (device) => {
  const nnz = 8192, hq = 32, hk = 8, headDim = 128;
  const q = fi.randn([nnz, hq, headDim], { dtype: "bfloat16", device, seed: 11 });
  const k = fi.randn([nnz, hk, headDim], { dtype: "bfloat16", device, seed: 12 });
  const posIds = fi.tensor(Int32Array.from({ length: nnz }, (_, i) => (i * 13) % 100000), [nnz], { dtype: "int32", device });
  return [{
    name: `applyRopePosIdsInplace q [${nnz}, ${hq}, ${headDim}] k [${nnz}, ${hk}, ${headDim}] bfloat16`,
    bytes: 2 * (q.nbytes + k.nbytes) + posIds.nbytes,
    run: () => fi.applyRopePosIdsInplace(q, k, posIds),
    dispose: () => [q, k, posIds].forEach((t) => t.dispose()),
  }];
};

// Norm family cases for bench/elementwise.bench.ts: rmsnorm (issue target 2.8 TB/s on H100 for
// [4096, 8192] bf16), fusedAddRmsnorm, gemmaRmsnorm, layernorm (bf16 input, float32 gamma/beta
// as FlashInfer takes them) and rmsnorm [8192, 4096] fp16. Every run writes into preallocated
// outputs (out= or in place), so run() allocates nothing. bytes: the input rows read once, the
// outputs written once, and the weight vectors read once.
import * as fi from "../../lib/index.ts";
import type { CaseFactory, ElementwiseCase } from "./case.ts";

function rmsCase(device: fi.Device, rows: number, hidden: number, dtype: "bfloat16" | "float16", gemma: boolean, target?: number): ElementwiseCase {
  const x = fi.randn([rows, hidden], { dtype, device, seed: 1 });
  const w = fi.randn([hidden], { dtype, device, seed: 2 });
  const out = fi.empty([rows, hidden], { dtype, device });
  const n = rows * hidden, item = 2;
  const fn = gemma ? fi.gemmaRmsnorm : fi.rmsnorm;
  return {
    name: `${gemma ? "gemmaRmsnorm" : "rmsnorm"} [${rows}, ${hidden}] ${dtype}`,
    bytes: 2 * n * item + hidden * item,
    run: () => void fn(x, w, { out }),
    dispose: () => [x, w, out].forEach((t) => t.dispose()),
    target,
  };
}

// A plain copy of rmsnorm's input: the ceiling at this size (128 MiB of traffic, about 50 us, so
// the kernel's ramp-up and tail weigh more than in the 1 GiB copy ceiling).
function copyCase(device: fi.Device, rows: number, hidden: number): ElementwiseCase {
  const x = fi.randn([rows, hidden], { dtype: "bfloat16", device, seed: 1 });
  const y = fi.empty([rows, hidden], { dtype: "bfloat16", device });
  return {
    name: `copy [${rows}, ${hidden}] bfloat16 (rmsnorm's traffic)`,
    bytes: 2 * x.nbytes,
    run: () => void y.copy_(x),
    dispose: () => [x, y].forEach((t) => t.dispose()),
  };
}

export const cases: CaseFactory = (device) => {
  const list: ElementwiseCase[] = [copyCase(device, 4096, 8192), rmsCase(device, 4096, 8192, "bfloat16", false, 2.8)];
  {
    const rows = 4096, hidden = 8192;
    const x = fi.randn([rows, hidden], { dtype: "bfloat16", device, seed: 3 });
    const r = fi.randn([rows, hidden], { dtype: "bfloat16", device, seed: 4 });
    const w = fi.randn([hidden], { dtype: "bfloat16", device, seed: 5 });
    list.push({
      name: `fusedAddRmsnorm [${rows}, ${hidden}] bfloat16 (in place)`,
      bytes: 4 * rows * hidden * 2 + hidden * 2,
      run: () => fi.fusedAddRmsnorm(x, r, w),
      dispose: () => [x, r, w].forEach((t) => t.dispose()),
    });
  }
  list.push(rmsCase(device, 4096, 8192, "bfloat16", true));
  {
    const rows = 4096, hidden = 8192;
    const x = fi.randn([rows, hidden], { dtype: "bfloat16", device, seed: 6 });
    const g = fi.randn([hidden], { dtype: "float32", device, seed: 7 });
    const b = fi.randn([hidden], { dtype: "float32", device, seed: 8 });
    const out = fi.empty([rows, hidden], { dtype: "bfloat16", device });
    list.push({
      name: `layernorm [${rows}, ${hidden}] bfloat16, float32 gamma/beta`,
      bytes: 2 * rows * hidden * 2 + 2 * hidden * 4,
      run: () => void fi.layernorm(x, g, b, { out }),
      dispose: () => [x, g, b, out].forEach((t) => t.dispose()),
    });
  }
  list.push(rmsCase(device, 8192, 4096, "float16", false));
  return list;
};

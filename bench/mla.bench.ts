// MLA decode benchmark (issue 15): BatchMLAPagedAttentionWrapper on DeepSeek's shapes (128 query
// heads, latent 512 + 64, bf16, pages of 64) at batch 128 x 4096 and batch 1 x 32768 context.
// Figure: effective bandwidth of the latent cache (tokens x 576 x 2 bytes over the kernel's device
// time, L2 flushed), against the floor (the same bytes at the measured copy bandwidth) and the
// issue's targets (2.6 and 2.0 TB/s). bench/compare/mla_torch.py times the same math in PyTorch
// (absorbed weights, SDPA) on the same card; `bash bench/compare/mla.sh` runs both.
// Figures go to bench/results/mla.jsonl.   bun bench/mla.bench.ts [--no-record] [--json file]
import { appendFileSync } from "node:fs";
import * as fi from "../lib/index.ts";
import { scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("MLA bench: no GPU here (the CPU backend is a reference, not a target)");
  process.exit(0);
}
const args = process.argv.slice(2);
const jsonPath = args.includes("--json") ? args[args.indexOf("--json") + 1] : undefined;
const H = 128, C = 512, R = 64, P = 64, dtype = "bfloat16" as const;
const time = (fn: () => void) => fi.benchDeviceTime(fn, { device, iterations: 50, warmup: 5 }).medianMs;
const copyTBps = (() => {
  const bytes = 1 << 30;
  using src = fi.empty([bytes / 2], { dtype, device });
  using dst = fi.empty([bytes / 2], { dtype, device });
  return (2 * bytes) / (time(() => void dst.copy_(src)) / 1e3) / 1e12;
})();
const figures: Figure[] = [];
console.log(`MLA decode on ${device}, ${H} heads, latent ${C} + ${R}, ${dtype}, page ${P}; copy ${copyTBps.toFixed(2)} TB/s`);
for (const [batch, len, target] of [[128, 4096, 2.6], [1, 32768, 2.0]] as const) {
  const t = scatteredPageTable(batch, len, P);
  using latent = fi.randn([t.pages, P, C + R], { dtype, device, seed: 1 });
  using ckv = latent.slice(2, 0, C), kpe = latent.slice(2, C, C + R);
  using qNope = fi.randn([batch, H, C], { dtype, device, seed: 2 });
  using qPe = fi.randn([batch, H, R], { dtype, device, seed: 3 });
  using out = fi.empty([batch, H, C], { dtype, device });
  using ws = fi.empty([256 << 20], { dtype: "uint8", device });
  // The plan's kernel (auto: the wgmma one on Hopper), and the mma.sync one beside it when auto
  // did not pick it, so that both are timed in the same run.
  for (const backend of ["auto", "fa2"] as const) {
    if (backend === "fa2" && figures.some((f) => f.batch === batch && f.kernel === "fa2")) continue;
    using mla = new fi.BatchMLAPagedAttentionWrapper(ws, { backend });
    mla.plan({ qoIndptr: Int32Array.from({ length: batch + 1 }, (_, i) => i), kvIndptr: t.indptr, kvIndices: t.indices,
      kvLen: new Int32Array(batch).fill(len), numHeads: H, headDimCkv: C, headDimKpe: R, pageSize: P, smScale: 1 / Math.sqrt(192), qDataType: dtype });
    const kernel = mla.planInfo!.kernel;
    const ms = time(() => void mla.run(qNope, qPe, ckv, kpe, { out }));
    const bytes = batch * len * (C + R) * 2;
    const tbps = bytes / (ms / 1e3) / 1e12;
    const flops = 2 * batch * H * len * (C + R + C);
    const name = `mla decode batch ${batch} x ${len}, ${H} heads${backend === "fa2" ? ", mma.sync kernel" : ""}`;
    figures.push({ name, value: ms * 1e3, unit: "us", tbps, fractionOfCopy: tbps / copyTBps, tflops: flops / (ms / 1e3) / 1e12, target: target,
      met: tbps >= target, batch, kvLen: len, heads: H, pageSize: P, dtype, kernel });
    console.log(`  ${name} (${kernel}): ${(ms * 1e3).toFixed(1)} us, latent ${tbps.toFixed(2)} TB/s (${((100 * tbps) / copyTBps).toFixed(0)}% of copy; target ${target}: ${tbps >= target ? "met" : "MISSED"}), ${(flops / (ms / 1e3) / 1e12).toFixed(0)} TFLOP/s`);
    if (jsonPath) appendFileSync(jsonPath, `${JSON.stringify({ name, ms, tbps, kernel })}\n`);
  }
}
if (!args.includes("--no-record")) recordFigures("mla", device, figures);

// Kernel generator benchmark: compile time of one variant (cold: empty cache; warm: a new process
// loading the cached library), and a generated variant that reproduces the built-in one (an
// always-true mask keeps the built-in transform) against the built-in CPU prefill backend on the
// same shape, same run. Variants run on the CPU backend in this version, so the figures are the
// host's. Figures go to bench/results/jit.jsonl.
//   bun bench/jit.bench.ts [--no-record]
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { hostMedianUs } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const figures: Figure[] = [];
process.env.FLASHINFER_CACHE_DIR = mkdtempSync(join(tmpdir(), "fi-jit-bench-"));
const spec = { name: "bench_open_mask", logitsMask: "return true;" };
const variant = fi.jit.attentionVariant(spec);

const t0 = performance.now();
fi.jit.precompile(variant);
const coldMs = performance.now() - t0;
figures.push({ name: "jit compile, cold cache (CPU backend variant)", value: coldMs, unit: "ms" });

// Warm: a fresh process finds the library in the cache; it reports the time of precompile alone.
const probe = spawnSync(process.execPath, ["-e", `
  import * as fi from ${JSON.stringify(join(import.meta.dir, "..", "lib", "index.ts"))};
  fi.empty([1]);
  const v = fi.jit.attentionVariant(${JSON.stringify(spec)});
  const t = performance.now(); fi.jit.precompile(v); console.log(performance.now() - t);`], { encoding: "utf8", env: process.env });
const warmMs = Number(probe.stdout.trim());
figures.push({ name: "jit load, warm cache (new process)", value: warmMs, unit: "ms", target: 50, met: warmMs < 50 });

// Generated vs built-in on one shape (the CPU backend computes in float64: not a fast path).
const qoLen = 256, kvLen = 256, Hq = 4, Hkv = 2, D = 64;
const plan = { qoIndptr: [0, qoLen], kvIndptr: [0, kvLen], numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: "bfloat16" as const };
using q = fi.randn([qoLen, Hq, D], { dtype: "bfloat16", seed: 1 });
using k = fi.randn([kvLen, Hkv, D], { dtype: "bfloat16", seed: 2 });
using out = fi.empty([qoLen, Hq, D], { dtype: "bfloat16" });
using ws = fi.empty([32 << 20], { dtype: "uint8" });
const timeOf = (v?: fi.AttentionVariant) => {
  using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", v ? { variant: v } : {});
  w.plan(plan);
  return hostMedianUs(() => void w.run(q, k, k, { out }), 3, 15);
};
// Interleaved, three times each: the spread between repeats of one version bounds what a difference means.
const builtin: number[] = [], generated: number[] = [];
for (let i = 0; i < 3; ++i) {
  builtin.push(timeOf());
  generated.push(timeOf(variant));
}
const b = Math.min(...builtin), g = Math.min(...generated);
figures.push({ name: `prefill ${qoLen}x${kvLen} causal ${Hq}/${Hkv} d ${D} bf16, built-in CPU backend`, value: b, unit: "us (median)", repeats: builtin });
figures.push({ name: `prefill ${qoLen}x${kvLen} causal ${Hq}/${Hkv} d ${D} bf16, generated variant (same math)`, value: g, unit: "us (median)", repeats: generated,
  ratio: g / b, target: "within 3%", met: g <= 1.03 * b });

for (const f of figures) console.log(`  ${f.name.padEnd(76)} ${f.value.toFixed(1).padStart(9)} ${f.unit}${f.met === undefined ? "" : f.met ? "  met" : "  MISSED"}`);
console.log(`  generated / built-in: ${(g / b).toFixed(3)} (repeats: built-in ${builtin.map((x) => x.toFixed(0)).join(", ")} us; generated ${generated.map((x) => x.toFixed(0)).join(", ")} us)`);
if (!process.argv.includes("--no-record")) {
  recordFigures("jit", "cpu", figures);
  console.log(`recorded ${figures.length} figures in bench/results/jit.jsonl`);
}

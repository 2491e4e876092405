// Host cost of plan() (tinybench, median): the scheduler runs on the host at every step, before
// any kernel, so its time adds to every step's latency. Decode: batch 256 x 1024 keys, page 16
// (16384 page indices to check and copy), and one request of 32768 keys (the split search);
// prefill: batch 256 x 1024 rows ragged causal (8192 query tiles to order) and 16 x 1024 paged.
// On CUDA this includes the plan's copy into the workspace (queued, not waited for). Figures go
// to bench/results/plan.jsonl with device and date.   bun bench/plan.bench.ts [--no-record]
import { Bench } from "tinybench";
import * as fi from "../lib/index.ts";
import { scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
const figures: Figure[] = [];
const bench = new Bench({ name: "plan()", time: 500, warmup: true });
const targets = new Map<string, number>(); // the performance issue's targets, microseconds
using ws = fi.empty([256 << 20], { dtype: "uint8", device });
const common = { numQoHeads: 32, numKvHeads: 8, qDataType: "bfloat16" } as const;

const decodeCase = (name: string, batch: number, kvLen: number, target?: number) => {
  const t = scatteredPageTable(batch, kvLen, 16);
  const w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
  bench.add(name, () => w.plan({ ...t, ...common, headDim: 128, pageSize: 16 }));
  if (target) targets.set(name, target);
  return w;
};
using decode256 = decodeCase("decode plan batch 256 (16384 pages)", 256, 1024, 10);
using decode1 = decodeCase("decode plan batch 1 x 32768 (2048 pages)", 1, 32768);

using ragged = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD");
const raggedIndptr = Int32Array.from({ length: 257 }, (_, i) => i * 1024);
bench.add("prefill plan batch 256 x 1024 ragged causal", () =>
  ragged.plan({ ...common, qoIndptr: raggedIndptr, kvIndptr: raggedIndptr, headDimQk: 128, causal: true }));
targets.set("prefill plan batch 256 x 1024 ragged causal", 50);

using paged = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD");
const pt = scatteredPageTable(16, 1024, 16);
const pagedQo = Int32Array.from({ length: 17 }, (_, i) => i * 1024);
bench.add("prefill plan batch 16 x 1024 paged causal", () =>
  paged.plan({ ...common, qoIndptr: pagedQo, pagedKvIndptr: pt.indptr, pagedKvIndices: pt.indices, pagedKvLastPageLen: pt.lastPageLen,
    headDimQk: 128, pageSize: 16, causal: true }));

await bench.run();
console.log(`plan() host cost, ${device} (host ${fi.deviceProperties("cpu").name}):`);
for (const task of bench.tasks) {
  const r = task.result;
  if (!r || !("latency" in r)) continue;
  const us = r.latency.p50 * 1e3;
  const target = targets.get(task.name);
  const verdict = target === undefined ? "" : `  (target <= ${target} us: ${us <= target ? "met" : "MISSED"})`;
  console.log(`  ${task.name.padEnd(48)} median ${us.toFixed(1).padStart(7)} us${verdict}`);
  figures.push({ name: task.name, value: us, unit: "us (median)", kind: "host", target, met: target === undefined ? undefined : us <= target });
}
fi.synchronize(device);

if (!process.argv.includes("--no-record")) {
  recordFigures("plan", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/plan.jsonl`);
}

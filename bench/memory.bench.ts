// Memory over many plan/run cycles (issue 16: "RSS and device memory flat over 100,000 plan/run
// cycles"): batch decode and batch prefill, each planned and run once per cycle inside fi.scope, on
// the default device. Resident memory (after a full GC) and the device's free memory are sampled
// every 10,000 cycles; the figures are their change over the second half of the run (the first
// half lets pools and caches settle). bench/results/memory.jsonl.
//   bun bench/memory.bench.ts [--cycles N] [--no-record]
import * as fi from "../lib/index.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
const arg = process.argv.indexOf("--cycles");
const cycles = arg >= 0 ? Number(process.argv[arg + 1]) : 100_000;
const sampleEvery = Math.max(1, Math.floor(cycles / 10));
using ws = fi.empty([16 << 20], { dtype: "uint8", device });
using ws2 = fi.empty([16 << 20], { dtype: "uint8", device });
using decode = new fi.BatchDecodeWithPagedKVCacheWrapper(ws);
using prefill = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws2);
using q = fi.randn([2, 4, 64], { dtype: "float16", seed: 1, device });
using cache = fi.randn([3, 2, 16, 2, 64], { dtype: "float16", seed: 2, device });
using pq = fi.randn([7, 4, 64], { dtype: "float16", seed: 3, device });
using pk = fi.randn([20, 2, 64], { dtype: "float16", seed: 4, device });
const cycle = () => fi.scope(() => {
  decode.plan({ indptr: [0, 1, 3], indices: [0, 1, 2], lastPageLen: [5, 16], numQoHeads: 4, numKvHeads: 2, headDim: 64, pageSize: 16 });
  decode.run(q, cache, { returnLse: true });
  prefill.plan({ qoIndptr: [0, 3, 7], kvIndptr: [0, 9, 20], numQoHeads: 4, numKvHeads: 2, headDimQk: 64, causal: true });
  prefill.run(pq, pk, pk, { returnLse: true });
});
const samples: { cycle: number; rss: number; deviceFree: number }[] = [];
const sample = (n: number) => {
  fi.synchronize(device);
  Bun.gc(true);
  samples.push({ cycle: n, rss: process.memoryUsage().rss, deviceFree: fi.memoryInfo(device).free });
};
const t0 = performance.now();
sample(0);
for (let i = 1; i <= cycles; ++i) {
  cycle();
  if (i % sampleEvery === 0) sample(i);
}
const seconds = (performance.now() - t0) / 1000;
const mid = samples[Math.floor(samples.length / 2)]!, last = samples.at(-1)!;
const rssGrowth = last.rss - mid.rss, deviceDrop = device === "cpu" ? 0 : mid.deviceFree - last.deviceFree;
const mb = (x: number) => (x / 2 ** 20).toFixed(2);
console.log(`${cycles} decode + prefill plan/run cycles on ${device} in ${seconds.toFixed(1)} s`);
for (const s of samples) console.log(`  cycle ${String(s.cycle).padStart(7)}: rss ${mb(s.rss)} MiB${device === "cpu" ? "" : `, device free ${mb(s.deviceFree)} MiB`}`);
console.log(`second half: rss ${rssGrowth >= 0 ? "+" : ""}${mb(rssGrowth)} MiB${device === "cpu" ? "" : `, device free -${mb(deviceDrop)} MiB`}`);
const figures: Figure[] = [
  { name: `rss change over the second half of ${cycles} decode + prefill plan/run cycles`, value: rssGrowth / 2 ** 20, unit: "MiB",
    target: "flat (< 2 MiB)", met: rssGrowth < 2 * 2 ** 20, samples },
];
if (device !== "cpu")
  figures.push({ name: `device free memory drop over the second half of ${cycles} cycles`, value: deviceDrop / 2 ** 20, unit: "MiB", target: "flat (< 2 MiB)",
    met: deviceDrop < 2 * 2 ** 20 });
if (!process.argv.includes("--no-record")) {
  recordFigures("memory", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/memory.jsonl`);
}

// Runtime benchmarks: host-side costs (tinybench) and device copy bandwidth (events, median,
// L2 flushed). Figures go to bench/results/runtime.jsonl with device and date.
//   bun bench/runtime.bench.ts [--no-record]
import { Bench } from "tinybench";
import * as fi from "../lib/index.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
const figures: Figure[] = [];

// ---- host-side costs
const bench = new Bench({ name: "host-side costs", time: 300, warmup: true });
using one = fi.zeros([1], { device: "cpu" });
using small = fi.rand([1024], { device: "cpu", seed: 1 });
using smallDst = fi.empty([1024], { device: "cpu" });
bench
  .add("FFI call through a wrapper (fill_ of 1 element, cpu)", () => {
    one.fill_(1);
  })
  .add("tensor creation + dispose (empty [16], cpu)", () => {
    fi.empty([16], { device: "cpu" }).dispose();
  })
  .add("small copy (copy_ 4 KiB, cpu)", () => {
    smallDst.copy_(small);
  })
  .add("view (slice + dispose)", () => {
    small.slice(0, 1, 100).dispose();
  });
let dev: fi.Tensor | undefined, devDst: fi.Tensor | undefined;
if (device !== "cpu") {
  dev = fi.rand([1024], { device, seed: 1 });
  devDst = fi.empty([1024], { device });
  bench
    .add(`tensor creation + dispose (empty [16], ${device})`, () => {
      fi.empty([16], { device }).dispose();
    })
    .add(`small copy launch (copy_ 4 KiB on ${device}, not synchronized)`, () => {
      devDst!.copy_(dev!);
    })
    .add(`small copy round trip (4 KiB ${device} -> cpu)`, () => {
      smallDst.copy_(dev!);
    });
}
await bench.run();
console.log(`host-side costs on ${fi.deviceProperties("cpu").name}:`);
for (const task of bench.tasks) {
  const r = task.result;
  if (!r || !("latency" in r)) continue;
  const us = r.latency.p50 * 1e3;
  console.log(`  ${task.name.padEnd(62)} median ${us.toFixed(2).padStart(8)} us`);
  figures.push({ name: task.name, value: us, unit: "us (median)", kind: "host" });
}
fi.synchronize(device);
dev?.dispose();
devDst?.dispose();

// ---- device copy bandwidth
if (device !== "cpu") {
  const props = fi.deviceProperties(device);
  const peak = props.peakMemoryBandwidth;
  for (const [label, dtype, mib] of [["copy float32", "float32", 1024], ["cast float32 -> bfloat16", "bfloat16", 1024], ["copy float32 (64 MiB)", "float32", 64]] as const) {
    const n = (mib << 20) / 4;
    using src = fi.rand([n], { device, seed: 2 });
    using dst = fi.empty([n], { device, dtype });
    const r = fi.benchDeviceTime(() => dst.copy_(src), { device, iterations: 30 });
    const bytes = src.nbytes + dst.nbytes;
    const tbps = bytes / (r.medianMs / 1e3) / 1e12;
    console.log(`  ${label.padEnd(30)} ${String(mib).padStart(5)} MiB  ${r.medianMs.toFixed(3).padStart(8)} ms  ${tbps.toFixed(2)} TB/s (${((100 * tbps * 1e12) / peak).toFixed(0)}% of ${(peak / 1e12).toFixed(2)} TB/s peak)`);
    figures.push({ name: `device ${label}`, value: tbps, unit: "TB/s (read + write)", mib, medianMs: r.medianMs, peakTBps: peak / 1e12, fractionOfPeak: (tbps * 1e12) / peak, kind: "device" });
  }
}

if (!process.argv.includes("--no-record")) {
  recordFigures("runtime", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/runtime.jsonl`);
}

// Memory-bound ops (norm, activation, page, bit packing): achieved TB/s of each op at LLM sizes,
// beside the device-to-device copy bandwidth measured in the same run (the issue asks for at
// least 80% of it). Figures go to bench/results/elementwise.jsonl.
//   bun bench/elementwise.bench.ts [--no-record]
import { readdirSync } from "node:fs";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import type { CaseFactory } from "./elementwise/case.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("elementwise bench: needs a GPU; nothing to measure on cpu");
  process.exit(0);
}
const props = fi.deviceProperties(device);
const figures: Figure[] = [];

// The copy ceiling: 1 GiB device-to-device.
let copyTBps: number;
{
  using src = fi.rand([1 << 28], { device, seed: 1 });
  using dst = fi.empty([1 << 28], { device });
  const r = fi.benchDeviceTime(() => dst.copy_(src), { device, iterations: 20 });
  copyTBps = (2 * src.nbytes) / (r.medianMs / 1e3) / 1e12;
  console.log(`copy ceiling on ${props.name}: ${copyTBps.toFixed(2)} TB/s (datasheet ${(props.peakMemoryBandwidth / 1e12).toFixed(2)})`);
  figures.push({ name: "copy ceiling (1 GiB float32)", value: copyTBps, unit: "TB/s (read + write)" });
}

const dir = join(import.meta.dir, "elementwise");
for (const file of readdirSync(dir).filter((f) => f.endsWith(".ts") && f !== "case.ts").sort()) {
  const factory = (await import(join(dir, file))).cases as CaseFactory;
  for (const c of factory(device)) {
    try {
      const r = fi.benchDeviceTime(c.run, { device, iterations: 30 });
      const tbps = c.bytes / (r.medianMs / 1e3) / 1e12;
      const ofCopy = tbps / copyTBps;
      const verdict = c.target !== undefined ? (tbps >= c.target ? ` target ${c.target}: met` : ` target ${c.target}: MISSED`) : "";
      console.log(`  ${c.name.padEnd(60)} ${(r.medianMs * 1e3).toFixed(1).padStart(8)} us ${tbps.toFixed(2)} TB/s ` +
        `(${(100 * ofCopy).toFixed(0)}% of copy${ofCopy >= 0.8 ? "" : ", below 80%"})${verdict}`);
      figures.push({ name: c.name, value: tbps, unit: "TB/s", medianUs: r.medianMs * 1e3, fractionOfCopy: ofCopy, copyTBps, target: c.target });
    } finally {
      c.dispose();
    }
  }
}

if (!process.argv.includes("--no-record")) {
  recordFigures("elementwise", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/elementwise.jsonl`);
}

// Sampling kernels at batch 128 x vocab 128256 (float32 probabilities, Llama 3's vocabulary):
// device time per call (events, L2 flushed, median of 50) beside the floor of reading the
// probabilities once at the copy bandwidth measured in the same run. The target: top-p
// sampling from probs at most 0.10 ms on an H100 (sort-based PyTorch top-p 2.59 ms there;
// torch.multinomial alone 0.38 ms). Two input distributions: softmax of N(0, 1) logits (flat:
// the nucleus holds most of the vocabulary) and of N(0, 5^2) logits (peaked). Figures go to
// bench/results/sampling.jsonl.
//   bun bench/sampling.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("sampling bench: needs a GPU; nothing to measure on cpu");
  process.exit(0);
}
const props = fi.deviceProperties(device);
const figures: Figure[] = [];
const batch = 128, vocab = 128256, targetMs = 0.1;

let copyTBps: number;
{
  using src = fi.rand([1 << 28], { device, seed: 1 });
  using dst = fi.empty([1 << 28], { device });
  const r = fi.benchDeviceTime(() => dst.copy_(src), { device, iterations: 20 });
  copyTBps = (2 * src.nbytes) / (r.medianMs / 1e3) / 1e12;
  console.log(`copy ceiling on ${props.name}: ${copyTBps.toFixed(2)} TB/s`);
  figures.push({ name: "copy ceiling (1 GiB float32)", value: copyTBps, unit: "TB/s (read + write)" });
}

const bytes = batch * vocab * 4;
const floorMs = bytes / (copyTBps * 1e12) * 1e3;
console.log(`floor (read [${batch}, ${vocab}] float32 once): ${(floorMs * 1e3).toFixed(1)} us`);

for (const sigma of [1, 5]) {
  using logits = fi.randn([batch, vocab], { device, seed: 7 });
  using probs = fi.softmax(logits, { temperature: 1 / sigma });
  const cases: [string, () => fi.Tensor, number?][] = [
    ["samplingFromProbs", () => fi.samplingFromProbs(probs, { seed: 1 })],
    ["topPSamplingFromProbs p=0.9", () => fi.topPSamplingFromProbs(probs, 0.9, { seed: 1 }), targetMs],
    ["topPSamplingFromProbs p=0.5", () => fi.topPSamplingFromProbs(probs, 0.5, { seed: 1 }), targetMs],
    ["topKSamplingFromProbs k=50", () => fi.topKSamplingFromProbs(probs, 50, { seed: 1 })],
    ["minPSamplingFromProbs min_p=0.1", () => fi.minPSamplingFromProbs(probs, 0.1, { seed: 1 })],
    ["topKTopPSamplingFromProbs k=50 p=0.9 joint", () => fi.topKTopPSamplingFromProbs(probs, 50, 0.9, { seed: 1, filterApplyOrder: "joint" })],
    ["topKTopPSamplingFromProbs k=50 p=0.9 top_k_first", () => fi.topKTopPSamplingFromProbs(probs, 50, 0.9, { seed: 1 })],
    ["samplingFromLogits", () => fi.samplingFromLogits(logits, { seed: 1 })],
    ["topPRenormProbs p=0.9", () => fi.topPRenormProbs(probs, 0.9)],
    ["topKRenormProbs k=50", () => fi.topKRenormProbs(probs, 50)],
    ["topKMaskLogits k=50", () => fi.topKMaskLogits(logits, 50)],
    ["softmax", () => fi.softmax(logits)],
  ];
  for (const [name, run, target] of cases) {
    const r = fi.benchDeviceTime(() => run().dispose(), { device, iterations: 50 });
    const ofFloor = floorMs / r.medianMs;
    const verdict = target === undefined ? "" : r.medianMs <= target ? `  target ${target} ms: met` : `  target ${target} ms: MISSED`;
    const label = `${name}, softmax(N(0,${sigma}^2)) [${batch}, ${vocab}]`;
    console.log(`  ${label.padEnd(78)} ${(r.medianMs * 1e3).toFixed(1).padStart(8)} us  floor ${(100 * ofFloor).toFixed(0)}%${verdict}`);
    figures.push({ name: label, value: r.medianMs, unit: "ms", medianUs: r.medianMs * 1e3, floorUs: floorMs * 1e3, fractionOfFloor: ofFloor, copyTBps, target });
  }
}

if (!process.argv.includes("--no-record")) {
  recordFigures("sampling", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/sampling.jsonl`);
}

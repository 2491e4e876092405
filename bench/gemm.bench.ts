// GEMM benchmark (issue 13): fi.gemm, bf16, on 8192^3 (a [M, K] @ b [K, N]) and the Llama-3.1-8B
// projections at M = 1, 16, 64, 128, 256 tokens, with the weights stored [N, K] (out features, in
// features) and out = x @ W^T (transB, as examples/llama/model.ts calls fi.gemm): q/k/v fused
// 4096 -> 6144 (4096 + 2 x 1024), o_proj 4096 -> 4096, gate/up fused 4096 -> 2 x 14336, down
// 14336 -> 4096, lm_head 4096 -> 128256. Device time with events (L2 flushed between runs), median;
// TFLOP/s = 2 M N K over it, against the H100 SXM dense bf16 peak (989 TFLOP/s). Target (issue
// 13): >= 95% of torch.matmul's throughput on each shape in the same run: bench/compare/gemm.sh
// runs this and bench/compare/gemm_torch.py (same shape names) and joins them.
// On the CPU: tiny shapes (64^3, M = 1 and 16 with K = N = 128), a smoke run, not recorded.
// Figures go to bench/results/gemm.jsonl (GPU only).
//   bun bench/gemm.bench.ts [--no-record] [--json <file>]   (--json: one line per shape, also on the CPU)
import { writeFileSync } from "node:fs";
import * as fi from "../lib/index.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
const gpu = device !== "cpu";
const dtype: fi.DType = "bfloat16";
const short = "bf16"; // in the shape names; bench/compare/gemm_torch.py builds the same names
const H100_DENSE_BF16_TFLOPS = 989; // H100 SXM datasheet, dense (no sparsity)
const iterations = gpu ? 50 : 3;
const jsonArg = process.argv.indexOf("--json");
const jsonPath = jsonArg >= 0 ? process.argv[jsonArg + 1] : undefined;
if (jsonArg >= 0 && (jsonPath === undefined || jsonPath.startsWith("--"))) throw new Error("--json: expected a file name");

interface Shape {
  /** "square" (a @ b, b stored [K, N]) or a projection (x @ W^T, W stored [N, K]). */
  label: string;
  m: number;
  n: number;
  k: number;
  transB: boolean;
}

/** The name both sides print: "<label> bf16 M=<m> N=<n> K=<k>". */
const shapeName = (s: Shape) => `${s.label} ${short} M=${s.m} N=${s.n} K=${s.k}`;

function shapes(): Shape[] {
  if (!gpu) {
    return [
      { label: "square", m: 64, n: 64, k: 64, transB: false },
      ...[1, 16].map((m) => ({ label: "linear", m, n: 128, k: 128, transB: true })),
    ];
  }
  const hidden = 4096, kvDim = 2 * 1024, inter = 14336, vocab = 128256;
  const projections: [string, number, number][] = [ // label, N (out features), K (in features)
    ["qkv_proj", hidden + kvDim, hidden],
    ["o_proj", hidden, hidden],
    ["gate_up_proj", 2 * inter, hidden],
    ["down_proj", hidden, inter],
    ["lm_head", vocab, hidden],
  ];
  return [
    { label: "square", m: 8192, n: 8192, k: 8192, transB: false },
    ...projections.flatMap(([label, n, k]) => [1, 16, 64, 128, 256].map((m) => ({ label, m, n, k, transB: true }))),
  ];
}

function bench(s: Shape): number {
  using a = fi.randn([s.m, s.k], { dtype, device, seed: 1 });
  using b = fi.randn(s.transB ? [s.n, s.k] : [s.k, s.n], { dtype, device, seed: 2 });
  using out = fi.empty([s.m, s.n], { dtype, device });
  return fi.benchDeviceTime(() => void fi.gemm(a, b, { transB: s.transB, out }), { device, iterations, warmup: 5 }).medianMs;
}

const props = fi.deviceProperties(device);
console.log(gpu
  ? `gemm on ${props.name}, ${dtype}, median of ${iterations} (L2 flushed); peak: H100 SXM dense bf16 ${H100_DENSE_BF16_TFLOPS} TFLOP/s`
  : `gemm bench: no GPU here; CPU backend, tiny shapes (a smoke run: the CPU backend accumulates in float64)`);
console.log(`  ${"shape".padEnd(40)} ${"ms".padStart(10)} ${"TFLOP/s".padStart(9)} ${"of peak".padStart(8)}`);
const figures: Figure[] = [];
const lines: string[] = [];
for (const s of shapes()) {
  const name = shapeName(s);
  let ms: number;
  try {
    ms = bench(s);
  } catch (e) {
    console.log(`  ${name.padEnd(40)} FAILED (${(e as Error).message})`);
    continue;
  }
  const flops = 2 * s.m * s.n * s.k;
  const tflops = flops / (ms / 1e3) / 1e12;
  const fraction = tflops / H100_DENSE_BF16_TFLOPS;
  console.log(`  ${name.padEnd(40)} ${ms.toFixed(4).padStart(10)} ${tflops.toFixed(tflops < 10 ? 3 : 1).padStart(9)} ` +
    `${gpu ? `${(100 * fraction).toFixed(1)}%`.padStart(8) : "-".padStart(8)}`);
  figures.push({ name, value: ms, unit: "ms", tflops, peakTFLOPS: H100_DENSE_BF16_TFLOPS, fractionOfPeak: fraction,
    m: s.m, n: s.n, k: s.k, layout: s.transB ? "x @ W^T (W [N, K])" : "a @ b (b [K, N])", dtype, iterations });
  lines.push(JSON.stringify({ name, ms, tflops, device, deviceName: props.name }));
}
if (jsonPath !== undefined) writeFileSync(jsonPath, lines.length ? lines.join("\n") + "\n" : "");
if (!process.argv.includes("--no-record") && gpu) {
  recordFigures("gemm", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/gemm.jsonl`);
}

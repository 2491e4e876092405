// Cascade benchmarks: merging attention states is memory-bound, so each figure is the achieved
// DRAM bandwidth, (bytes read + bytes written) / median device time (CUDA events around each
// run, L2 overwritten before each run), beside the device's peak. Figures go to
// bench/results/cascade.jsonl with device and date. GPU only: on cpu it prints a note and exits.
//   bun bench/cascade.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { mergeStateInto, mergeStatesInto } from "../lib/cascade.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("cascade bench: no CUDA device here; the cascade kernels are benchmarked on a GPU only (nothing recorded)");
  process.exit(0);
}

const props = fi.deviceProperties(device);
const peak = props.peakMemoryBandwidth;
const figures: Figure[] = [];
const iterations = 100;

function report(label: string, shape: number[], dtype: fi.DType, bytes: number, r: fi.BenchResult): void {
  const tbps = bytes / (r.medianMs / 1e3) / 1e12;
  const fraction = (tbps * 1e12) / peak;
  const floorUs = (bytes / peak) * 1e6;
  console.log(
    `  ${label.padEnd(58)} ${(bytes / 2 ** 20).toFixed(1).padStart(7)} MiB  ${(r.medianMs * 1e3).toFixed(2).padStart(8)} us` +
      `  ${tbps.toFixed(2)} TB/s (${(100 * fraction).toFixed(0)}% of ${(peak / 1e12).toFixed(2)} TB/s peak; floor ${floorUs.toFixed(2)} us)`,
  );
  figures.push({
    name: label, value: tbps, unit: "TB/s (read + write)", shape, dtype, bytes, medianMs: r.medianMs, minMs: r.minMs,
    peakTBps: peak / 1e12, fractionOfPeak: fraction, iterations, kind: "device",
  });
}

/** Log-sum-exps spread over [-20, 20) (the spread does not change the work). */
function lse(shape: number[]): fi.Tensor {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; ++i) values[i] = Math.random() * 40 - 20;
  return fi.tensor(values, shape, { device });
}

console.log(`cascade on ${props.name} (${device}), median of ${iterations} runs, L2 flushed:`);

// ---- mergeStates: [seqLen, numStates, numHeads, headDim]
const statesShapes: [number, number, number, number, fi.DType][] = [
  [128, 16, 32, 128, "bfloat16"], // the reference shape
  [128, 16, 32, 128, "float16"],
  [128, 16, 32, 128, "float32"],
  [1024, 16, 32, 128, "bfloat16"], // large: asymptotic bandwidth
  [4096, 2, 32, 128, "bfloat16"],
  [128, 64, 8, 256, "bfloat16"],
];
for (const [L, N, H, D, dtype] of statesShapes) {
  using v = fi.randn([L, N, H, D], { dtype, device, seed: 1 });
  using s = lse([L, N, H]);
  using vOut = fi.empty([L, H, D], { dtype, device });
  using sOut = fi.empty([L, H], { device });
  const r = fi.benchDeviceTime(() => mergeStatesInto(v, s, vOut, sOut), { device, iterations });
  report(`mergeStates ${dtype} [${L}, ${N}, ${H}, ${D}]`, [L, N, H, D], dtype, v.nbytes + s.nbytes + vOut.nbytes + sOut.nbytes, r);
}

// The public, allocating call on the reference shape (outputs from the stream-ordered pool).
{
  const [L, N, H, D] = [128, 16, 32, 128];
  using v = fi.randn([L, N, H, D], { dtype: "bfloat16", device, seed: 1 });
  using s = lse([L, N, H]);
  const r = fi.benchDeviceTime(() => {
    const out = fi.mergeStates(v, s);
    out.v.dispose();
    out.s.dispose();
  }, { device, iterations });
  report(`fi.mergeStates (allocating) bfloat16 [${L}, ${N}, ${H}, ${D}]`, [L, N, H, D], "bfloat16", v.nbytes + s.nbytes + (L * H * D * 2) + L * H * 4, r);
}

// ---- mergeState / mergeStateInPlace: [seqLen, numHeads, headDim]
for (const [L, H, D, dtype] of [[4096, 32, 128, "bfloat16"], [16384, 32, 128, "bfloat16"], [4096, 32, 128, "float32"]] as [number, number, number, fi.DType][]) {
  using vA = fi.randn([L, H, D], { dtype, device, seed: 3 });
  using vB = fi.randn([L, H, D], { dtype, device, seed: 4 });
  using sA = lse([L, H]);
  using sB = lse([L, H]);
  using vOut = fi.empty([L, H, D], { dtype, device });
  using sOut = fi.empty([L, H], { device });
  const bytes = 3 * vA.nbytes + 3 * sA.nbytes;
  const r = fi.benchDeviceTime(() => mergeStateInto(vA, sA, vB, sB, vOut, sOut), { device, iterations });
  report(`mergeState ${dtype} [${L}, ${H}, ${D}]`, [L, H, D], dtype, bytes, r);
  const rIn = fi.benchDeviceTime(() => fi.mergeStateInPlace(vA, sA, vB, sB), { device, iterations });
  report(`mergeStateInPlace ${dtype} [${L}, ${H}, ${D}]`, [L, H, D], dtype, bytes, rIn);
}

// ---- shared-prefix batch decode (issue 12): batch 64, a shared prefix of 32768 tokens + 512 own
// tokens each, bf16, 32/8 heads, d 128, page 16. Plain paged batch decode reads the prefix once
// per request; the 2-level cascade reads it once for all 64 rows (one prefill request) and merges.
{
  const batch = 64, prefix = 32768, ownLen = 512, P = 16, Hq = 32, Hkv = 8, D = 128, dt = "bfloat16" as const;
  const prefixPages = prefix / P, ownPages = ownLen / P, pages = prefixPages + batch * ownPages;
  using cache = fi.randn([pages, 2, P, Hkv, D], { dtype: dt, device, seed: 5 });
  using q = fi.randn([batch, Hq, D], { dtype: dt, device, seed: 6 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  using ws = fi.empty([512 << 20], { dtype: "uint8", device });
  const shared = Array.from({ length: prefixPages }, (_, i) => i);
  const own = (r: number) => Array.from({ length: ownPages }, (_, i) => prefixPages + r * ownPages + i);
  const seq = (n: number, step: number) => Int32Array.from({ length: n + 1 }, (_, i) => i * step);
  using flat = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
  flat.plan({ indptr: seq(batch, prefixPages + ownPages), indices: Int32Array.from(Array.from({ length: batch }, (_, r) => [...shared, ...own(r)]).flat()),
    lastPageLen: new Int32Array(batch).fill(P), numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
  const flatUs = fi.benchDeviceTime(() => flat.run(q, cache, { out }), { device, iterations: 10 }).medianMs * 1e3;
  const name = `shared-prefix decode batch ${batch}, prefix ${prefix} + ${ownLen} own, ${Hq}/${Hkv} d ${D} ${dt}`;
  figures.push({ name: `${name}, plain paged decode`, value: flatUs, unit: "us (median)" });
  for (const backend of ["auto", "fa3"] as const) {
    using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, ws.slice(0), "NHD", { backend });
    try {
      cascade.plan({ qoIndptrArr: [Int32Array.from([0, batch]), seq(batch, 1)], pagedKvIndptrArr: [Int32Array.from([0, prefixPages]), seq(batch, ownPages)],
        pagedKvIndicesArr: [Int32Array.from(shared), Int32Array.from(Array.from({ length: batch }, (_, r) => own(r)).flat())],
        pagedKvLastPageLenArr: [[P], new Int32Array(batch).fill(P)], numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
    } catch (e) {
      console.log(`  ${name} [${backend}]: not planned (${(e as Error).message})`);
      continue;
    }
    const cascadeUs = fi.benchDeviceTime(() => cascade.run(q, cache, { out }), { device, iterations: 10 }).medianMs * 1e3;
    const speedup = flatUs / cascadeUs;
    console.log(`  ${name} [${backend}]: plain paged decode ${flatUs.toFixed(0)} us, 2-level cascade ${cascadeUs.toFixed(0)} us, ${speedup.toFixed(1)}x (target 20x: ${speedup >= 20 ? "met" : "MISSED"})`);
    figures.push({ name: `${name}, 2-level cascade [${backend}]`, value: cascadeUs, unit: "us (median)", speedup, target: "20x", met: speedup >= 20 });
  }
  // Where the cascade's time goes: each level alone on each kernel, and the merge (each wrapper
  // on its own workspace: all are planned before any runs).
  const parts: [string, () => unknown][] = [];
  const newWs = () => fi.empty([64 << 20], { dtype: "uint8", device }); // freed at exit
  using lse = fi.empty([batch, Hq], { device });
  for (const backend of ["fa2", "fa3"] as const) {
    const w = new fi.BatchPrefillWithPagedKVCacheWrapper(newWs(), "NHD", { backend });
    w.plan({ qoIndptr: [0, batch], pagedKvIndptr: [0, prefixPages], pagedKvIndices: shared, pagedKvLastPageLen: [P], pageSize: P, numQoHeads: Hq,
      numKvHeads: Hkv, headDimQk: D, qDataType: dt });
    parts.push([`prefix level (${batch} rows x ${prefix} keys) on prefill [${backend}]`, () => w.run(q, cache, { out, lse })]);
  }
  {
    const ownTable = { pagedKvIndptr: seq(batch, ownPages), pagedKvIndices: Int32Array.from(Array.from({ length: batch }, (_, r) => own(r)).flat()),
      pagedKvLastPageLen: new Int32Array(batch).fill(P) };
    const prefillOwn = new fi.BatchPrefillWithPagedKVCacheWrapper(newWs(), "NHD", { backend: "fa2" });
    prefillOwn.plan({ ...ownTable, qoIndptr: seq(batch, 1), pageSize: P, numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: dt });
    parts.push([`own level (${batch} x ${ownLen} keys) on prefill [fa2]`, () => prefillOwn.run(q, cache, { out, lse })]);
    const decodeOwn = new fi.BatchDecodeWithPagedKVCacheWrapper(newWs(), "NHD");
    decodeOwn.plan({ indptr: ownTable.pagedKvIndptr, indices: ownTable.pagedKvIndices, lastPageLen: ownTable.pagedKvLastPageLen, numQoHeads: Hq,
      numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
    parts.push([`own level (${batch} x ${ownLen} keys) on decode`, () => decodeOwn.run(q, cache, { out, lse })]);
  }
  using out2 = fi.zeros(q.shape, { dtype: dt, device });
  using lse2 = fi.zeros([batch, Hq], { device });
  parts.push([`mergeStateInPlace [${batch}, ${Hq}, ${D}]`, () => fi.mergeStateInPlace(out, lse, out2, lse2)]);
  for (const [what, fn] of parts) {
    const us = fi.benchDeviceTime(fn, { device, iterations: 10 }).medianMs * 1e3;
    console.log(`  ${name}: ${what} ${us.toFixed(1)} us`);
    figures.push({ name: `${name}, ${what}`, value: us, unit: "us (median)" });
  }
}

// ---- parallel generation at the operator level (issue 12): one prompt of 4096 tokens, n = 16
// samples. (a) The prefill of the n suffixes (256 tokens each, causal) over the shared prompt:
// a flat paged prefill (each request's table lists the prompt's pages, read once per request)
// against a 2-level cascade (the prompt's pages read once for all 16 x 256 rows). (b) 256 decode
// steps, each sample adding a token: flat paged decode against the cascade (prompt level on the
// prefill kernels, own level on the decode kernels), each step planned as a server would, device
// time of each run summed (L2 overwritten before each run: between steps the other layers run).
{
  const n = 16, prompt = 4096, suffix = 256, steps = 256, P = 16, Hq = 32, Hkv = 8, D = 128, dt = "bfloat16" as const;
  const promptPages = prompt / P, ownCap = Math.ceil((suffix + steps) / P);
  using cache = fi.randn([promptPages + n * ownCap, 2, P, Hkv, D], { dtype: dt, device, seed: 7 });
  // Flat and cascade plans live side by side (each step plans both, then runs both).
  using wsFlat = fi.empty([256 << 20], { dtype: "uint8", device });
  using wsCascade = fi.empty([256 << 20], { dtype: "uint8", device });
  const shared = Array.from({ length: promptPages }, (_, i) => i);
  const ownPages = (r: number, len: number) => Array.from({ length: Math.ceil(len / P) }, (_, i) => promptPages + r * ownCap + i);
  const lastLen = (len: number) => len - (Math.ceil(len / P) - 1) * P;
  const cumsum = (xs: number[]) => Int32Array.from([0, ...xs.map(((t) => (x: number) => (t += x))(0))]);
  const time = (fn: () => unknown, iterations = 3) => fi.benchDeviceTime(fn, { device, iterations, warmup: 1 }).medianMs * 1e3;
  const label = `parallel generation, prompt ${prompt}, n ${n}, ${Hq}/${Hkv} d ${D} ${dt}`;
  // (a) suffix prefill.
  {
    using q = fi.randn([n * suffix, Hq, D], { dtype: dt, device, seed: 8 });
    using out = fi.empty(q.shape, { dtype: dt, device });
    const qoIndptr = Int32Array.from({ length: n + 1 }, (_, i) => i * suffix);
    using flat = new fi.BatchPrefillWithPagedKVCacheWrapper(wsFlat, "NHD");
    const lists = Array.from({ length: n }, (_, r) => [...shared, ...ownPages(r, suffix)]);
    flat.plan({ qoIndptr, pagedKvIndptr: cumsum(lists.map((l) => l.length)), pagedKvIndices: Int32Array.from(lists.flat()),
      pagedKvLastPageLen: new Int32Array(n).fill(lastLen(suffix)), pageSize: P, numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: dt });
    using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, wsCascade, "NHD");
    const own = Array.from({ length: n }, (_, r) => ownPages(r, suffix));
    cascade.plan({ qoIndptrArr: [[0, n * suffix], qoIndptr], pagedKvIndptrArr: [[0, promptPages], cumsum(own.map((l) => l.length))],
      pagedKvIndicesArr: [shared, Int32Array.from(own.flat())], pagedKvLastPageLenArr: [[P], new Int32Array(n).fill(lastLen(suffix))],
      numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, causal: true, qDataType: dt });
    const flatUs = time(() => flat.run(q, cache, { out }), 10), cascadeUs = time(() => cascade.run(q, cache, { out }), 10);
    console.log(`  ${label}: prefill of the ${n} suffixes of ${suffix}: flat ${flatUs.toFixed(0)} us, cascade ${cascadeUs.toFixed(0)} us, ${(flatUs / cascadeUs).toFixed(2)}x`);
    figures.push({ name: `${label}, prefill of ${n} suffixes of ${suffix}, flat paged prefill`, value: flatUs, unit: "us (median)" });
    figures.push({ name: `${label}, prefill of ${n} suffixes of ${suffix}, 2-level cascade`, value: cascadeUs, unit: "us (median)", speedup: flatUs / cascadeUs });
  }
  // (b) decode steps.
  {
    using q = fi.randn([n, Hq, D], { dtype: dt, device, seed: 9 });
    using out = fi.empty(q.shape, { dtype: dt, device });
    using flat = new fi.BatchDecodeWithPagedKVCacheWrapper(wsFlat, "NHD");
    using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, wsCascade, "NHD");
    // The cascade's run() issues two attention runs and a merge from the host, so its event time
    // measures the host too when the host is slower than the ~50 us of device work; replayed from
    // a CUDA graph captured after each plan, the same step is device time only.
    let flatUs = 0, cascadeUs = 0, graphUs = 0;
    let graphError: string | null = null;
    for (let step = 0; step < steps; ++step) {
      const len = suffix + step + 1; // each sample's own tokens so far
      const own = Array.from({ length: n }, (_, r) => ownPages(r, len));
      const lists = own.map((l) => [...shared, ...l]);
      flat.plan({ indptr: cumsum(lists.map((l) => l.length)), indices: Int32Array.from(lists.flat()), lastPageLen: new Int32Array(n).fill(lastLen(len)),
        numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
      cascade.plan({ qoIndptrArr: [[0, n], Int32Array.from({ length: n + 1 }, (_, i) => i)], pagedKvIndptrArr: [[0, promptPages], cumsum(own.map((l) => l.length))],
        pagedKvIndicesArr: [shared, Int32Array.from(own.flat())], pagedKvLastPageLenArr: [[P], new Int32Array(n).fill(lastLen(len))],
        numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
      flatUs += time(() => flat.run(q, cache, { out }));
      cascadeUs += time(() => cascade.run(q, cache, { out }));
      if (graphError === null) {
        try {
          using graph = new fi.CudaGraph({ device });
          graph.capture(() => cascade.run(q, cache, { out }));
          graphUs += time(() => graph.replay());
        } catch (e) {
          graphError = (e as Error).message;
        }
      }
    }
    console.log(`  ${label}: ${steps} decode steps: flat ${(flatUs / 1e3).toFixed(2)} ms, cascade ${(cascadeUs / 1e3).toFixed(2)} ms, ${(flatUs / cascadeUs).toFixed(2)}x` +
      (graphError === null ? `; cascade replayed from CUDA graphs ${(graphUs / 1e3).toFixed(2)} ms, ${(flatUs / graphUs).toFixed(2)}x` : `; CUDA graph capture failed: ${graphError}`));
    figures.push({ name: `${label}, ${steps} decode steps (own ${suffix + 1}..${suffix + steps}), flat paged decode, total`, value: flatUs, unit: "us (sum of medians)" });
    figures.push({ name: `${label}, ${steps} decode steps (own ${suffix + 1}..${suffix + steps}), 2-level cascade, total`, value: cascadeUs, unit: "us (sum of medians)",
      speedup: flatUs / cascadeUs });
    if (graphError === null)
      figures.push({ name: `${label}, ${steps} decode steps (own ${suffix + 1}..${suffix + steps}), 2-level cascade replayed from CUDA graphs, total`, value: graphUs,
        unit: "us (sum of medians)", speedup: flatUs / graphUs });
  }
}

if (!process.argv.includes("--no-record")) {
  recordFigures("cascade", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/cascade.jsonl`);
}

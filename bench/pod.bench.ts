// POD attention benchmark (issue 15): a chunked-prefill step of a serving engine, one 2048-token
// chunk over an 8192-token context (causal, keys in the paged cache) beside 128 decode requests of
// 4096 tokens, Llama-3.1-8B attention shapes (32 / 8 heads, head dim 128, bf16, pages of 16).
// POD in one launch (both parts one plan on the Hopper kernel), with the queries and outputs of
// both parts as row ranges of one tensor (an engine's batch) and as separate tensors (staged
// through the wrapper's buffers), and POD as two launches (oneLaunch: false: the decode launch
// forked to a second stream), all against the two parts back to back on one stream, same run; the
// issue's target is POD >= 15% faster. Device time (events), L2 flushed. Figures go to
// bench/results/pod.jsonl.   bun bench/pod.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("POD bench: no GPU here (nothing to measure)");
  process.exit(0);
}
const Hq = 32, Hkv = 8, D = 128, P = 16, dtype = "bfloat16" as const;
const chunk = 2048, context = 8192, batch = 128, decodeLen = 4096;
const decodeTable = scatteredPageTable(batch, decodeLen, P);
const prefillPages = Math.ceil(context / P);
// The prefill request's pages follow the decode requests' in the cache.
const prefillIndices = Int32Array.from({ length: prefillPages }, (_, i) => decodeTable.pages + i);
const lastPrefill = context - (prefillPages - 1) * P;
using cache = fi.randn([decodeTable.pages + prefillPages, 2, P, Hkv, D], { dtype, device, seed: 1 });
// One tensor of both parts' rows (the engine's layout) and separate copies.
using q = fi.randn([chunk + batch, Hq, D], { dtype, device, seed: 2 });
using qPrefillView = q.slice(0, 0, chunk), qDecodeView = q.slice(0, chunk);
using qPrefill = qPrefillView.clone(), qDecode = qDecodeView.clone();
using out = fi.empty(q.shape, { dtype, device });
using outPrefillView = out.slice(0, 0, chunk), outDecodeView = out.slice(0, chunk);
using outPrefill = fi.empty(qPrefill.shape, { dtype, device });
using outDecode = fi.empty(qDecode.shape, { dtype, device });
const dims = { numQoHeads: Hq, numKvHeads: Hkv, pageSize: P, qDataType: dtype };
const podParams = { ...dims, headDim: D, indptr: decodeTable.indptr, indices: decodeTable.indices, lastPageLen: decodeTable.lastPageLen,
  prefillQoLen: chunk, prefillPages: { indices: prefillIndices, lastPageLen: lastPrefill } };

using ws = fi.empty([512 << 20], { dtype: "uint8", device });
using pod = new fi.PODWithPagedKVCacheWrapper(ws);
pod.plan(podParams);
using wsTwo = fi.empty([512 << 20], { dtype: "uint8", device });
using podTwo = new fi.PODWithPagedKVCacheWrapper(wsTwo, "NHD", { oneLaunch: false });
podTwo.plan(podParams);
// The separate wrappers, planned alike.
using ws1 = fi.empty([256 << 20], { dtype: "uint8", device });
using ws2 = fi.empty([256 << 20], { dtype: "uint8", device });
using prefill = new fi.BatchPrefillWithPagedKVCacheWrapper(ws1);
prefill.plan({ ...dims, headDimQk: D, causal: true, qoIndptr: [0, chunk], pagedKvIndptr: [0, prefillPages], pagedKvIndices: prefillIndices,
  pagedKvLastPageLen: [lastPrefill] });
using decode = new fi.BatchDecodeWithPagedKVCacheWrapper(ws2);
decode.plan({ ...dims, headDim: D, indptr: decodeTable.indptr, indices: decodeTable.indices, lastPageLen: decodeTable.lastPageLen });

const iterations = 50;
const time = (fn: () => void) => fi.benchDeviceTime(fn, { device, iterations }).medianMs * 1e3;
const prefillUs = time(() => prefill.run(qPrefill, cache, { out: outPrefill }));
const decodeUs = time(() => decode.run(qDecode, cache, { out: outDecode }));
const serialUs = time(() => {
  prefill.run(qPrefill, cache, { out: outPrefill });
  decode.run(qDecode, cache, { out: outDecode });
});
const podUs = time(() => pod.run(qPrefillView, null, null, qDecodeView, cache, { outPrefill: outPrefillView, outDecode: outDecodeView }));
const stagedUs = time(() => pod.run(qPrefill, null, null, qDecode, cache, { outPrefill, outDecode }));
const twoUs = time(() => podTwo.run(qPrefill, null, null, qDecode, cache, { outPrefill, outDecode }));
const info = pod.planInfo!, infoTwo = podTwo.planInfo!;
const gain = (us: number) => serialUs / us - 1;
const shape = { chunk, context, batch, decodeLen, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, dtype };
const separate = { ...shape, prefillKernel: infoTwo.prefill.kernel, decodeKernel: infoTwo.decode.kernel };
const joint = { ...shape, oneLaunch: info.oneLaunch, kernel: info.prefill.kernel };
const figures: Figure[] = [
  { name: "pod prefill part alone", value: prefillUs, unit: "us", ...separate },
  { name: "pod decode part alone", value: decodeUs, unit: "us", ...separate },
  { name: "pod parts back to back", value: serialUs, unit: "us", ...separate },
  { name: "pod one launch, rows of one tensor", value: podUs, unit: "us", ...joint, speedupOverSerial: gain(podUs), target: 0.15, met: gain(podUs) >= 0.15 },
  { name: "pod one launch, separate tensors (staged)", value: stagedUs, unit: "us", ...joint, speedupOverSerial: gain(stagedUs) },
  { name: "pod two launches side by side", value: twoUs, unit: "us", ...separate, speedupOverSerial: gain(twoUs) },
];
const pct = (us: number) => `${(gain(us) * 100).toFixed(1)}%`;
console.log(`POD on ${fi.deviceProperties(device).name}: prefill ${prefillUs.toFixed(1)} us (${infoTwo.prefill.kernel}), decode ${decodeUs.toFixed(1)} us ` +
  `(${infoTwo.decode.kernel}), back to back ${serialUs.toFixed(1)} us; one launch (${info.prefill.kernel}) ${podUs.toFixed(1)} us: ${pct(podUs)} faster ` +
  `(target 15%), staged ${stagedUs.toFixed(1)} us (${pct(stagedUs)}), two streams ${twoUs.toFixed(1)} us (${pct(twoUs)})`);
if (!process.argv.includes("--no-record")) recordFigures("pod", device, figures);

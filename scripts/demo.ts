// `npm run demo`: what this build of flashinfer-bun can do on the default device: device facts,
// tensors, copies and their bandwidth, and one decode-attention step over a paged KV cache.
import * as fi from "../lib/index.ts";

const device = fi.defaultDevice();
const props = fi.deviceProperties(device);
console.log(`flashinfer-bun ${fi.version()} (CUDA backend ${fi.hasCudaBackend() ? "built" : "not built"}, ${fi.deviceCount()} CUDA device(s))`);
console.log(`device: ${device}  ${props.name}`);
if (device !== "cpu") {
  console.log(`  ${props.smCount} SMs, compute capability ${props.computeCapability.join(".")}, ` +
    `${(props.totalMemory / 2 ** 30).toFixed(1)} GiB, L2 ${(props.l2CacheSize / 2 ** 20).toFixed(0)} MiB, ` +
    `peak DRAM ${(props.peakMemoryBandwidth / 1e12).toFixed(2)} TB/s`);
} else {
  console.log(`  ${props.smCount} cores, ${(props.totalMemory / 2 ** 30).toFixed(1)} GiB`);
}

// A small tensor round trip, with a cast.
using x = fi.randn([2, 3], { seed: 42, device });
using xh = x.to({ dtype: "bfloat16" });
console.log(`randn([2, 3], seed 42) on ${device}:`, Array.from(x.toFloat32Array(), (v) => +v.toFixed(4)));
console.log(`  as bfloat16 back to float32:`, Array.from(xh.toFloat32Array(), (v) => +v.toFixed(4)));

// Copy bandwidth: bytes read + bytes written per second, median of timed runs.
const bytes = device === "cpu" ? 64 << 20 : 1 << 30;
const n = bytes / 4;
using src = fi.rand([n], { device, seed: 1 });
using dst = fi.empty([n], { device });
const rows: [string, number, number][] = [];
const copy = fi.benchDeviceTime(() => dst.copy_(src), { device, iterations: 20, flushL2: false });
rows.push([`${device} -> ${device} copy`, bytes, 2 * bytes / (copy.medianMs / 1e3)]);
using half = fi.empty([n], { device, dtype: "float16" });
const cast = fi.benchDeviceTime(() => half.copy_(src), { device, iterations: 20, flushL2: false });
rows.push([`${device} float32 -> float16 cast`, bytes, (bytes + bytes / 2) / (cast.medianMs / 1e3)]);
if (device !== "cpu") {
  const hostBytes = 256 << 20;
  using host = fi.rand([hostBytes / 4], { device: "cpu", seed: 2 });
  using dev = fi.empty([hostBytes / 4], { device });
  const h2d = fi.benchDeviceTime(() => dev.copy_(host), { device: "cpu", iterations: 5 });
  rows.push([`cpu (page-locked) -> ${device}`, hostBytes, hostBytes / (h2d.medianMs / 1e3)]);
  const d2h = fi.benchDeviceTime(() => host.copy_(dev), { device: "cpu", iterations: 5 });
  rows.push([`${device} -> cpu (page-locked)`, hostBytes, hostBytes / (d2h.medianMs / 1e3)]);
}
console.log("copy bandwidth (bytes read + written per second; host links count one way):");
for (const [what, size, bw] of rows) {
  console.log(`  ${what.padEnd(34)} ${(size / 2 ** 20).toFixed(0).padStart(5)} MiB  ${(bw / 1e9).toFixed(1).padStart(8)} GB/s`);
}
// One decode step of attention over a paged KV cache (Llama-3-8B-like heads), then the same
// request through single decode as a cross-check.
{
  const [batch, kvLen, pageSize, qoHeads, kvHeads, headDim] = device === "cpu" ? [4, 512, 16, 8, 2, 128] : [64, 4096, 16, 32, 8, 128];
  const pagesPer = Math.ceil(kvLen / pageSize);
  const indptr = Int32Array.from({ length: batch + 1 }, (_, i) => i * pagesPer);
  const indices = Int32Array.from({ length: batch * pagesPer }, (_, i) => (i * 7919) % (batch * pagesPer)); // scattered pages
  const lastPageLen = new Int32Array(batch).fill(kvLen - (pagesPer - 1) * pageSize);
  using cache = fi.randn([batch * pagesPer, 2, pageSize, kvHeads, headDim], { dtype: "bfloat16", device, seed: 3 });
  using q = fi.randn([batch, qoHeads, headDim], { dtype: "bfloat16", device, seed: 4 });
  using out = fi.empty(q.shape, { dtype: "bfloat16", device });
  using workspace = fi.empty([64 << 20], { dtype: "uint8", device });
  using decode = new fi.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD");
  decode.plan({ indptr, indices, lastPageLen, numQoHeads: qoHeads, numKvHeads: kvHeads, headDim, pageSize, qDataType: "bfloat16" });
  const r = fi.benchDeviceTime(() => decode.run(q, cache, { out }), { device, iterations: device === "cpu" ? 3 : 20, warmup: 1 });
  const kvBytes = batch * kvLen * kvHeads * headDim * 2 * 2;
  console.log(`decode step: batch ${batch} x ${kvLen} tokens, ${qoHeads}/${kvHeads} heads, head dim ${headDim}, bf16, page ${pageSize}: ` +
    `${(r.medianMs * 1e3).toFixed(1)} us, ${(kvBytes / (r.medianMs / 1e3) / 1e9).toFixed(1)} GB/s of KV read`);
  // Request 0 again through single decode: its pages gathered into one contiguous [kvLen, heads, dim] K and V.
  const pages0 = fi.tensor(indices.subarray(0, pagesPer), undefined, { device });
  using k0 = fi.empty([pagesPer, pageSize, kvHeads, headDim], { dtype: "bfloat16", device });
  using v0 = fi.empty([pagesPer, pageSize, kvHeads, headDim], { dtype: "bfloat16", device });
  const order = pages0.toArray() as Int32Array;
  pages0.dispose();
  order.forEach((page, i) => {
    using kp = cache.select(0, page).select(0, 0), vp = cache.select(0, page).select(0, 1);
    using kd = k0.select(0, i), vd = v0.select(0, i);
    kd.copy_(kp);
    vd.copy_(vp);
  });
  using k0flat = k0.view([-1, kvHeads, headDim]), v0flat = v0.view([-1, kvHeads, headDim]);
  using q0 = q.select(0, 0);
  using single = fi.singleDecodeWithKVCache(q0, k0flat.slice(0, 0, kvLen), v0flat.slice(0, 0, kvLen)) as fi.Tensor;
  using batch0 = out.select(0, 0);
  const a = single.toFloat32Array(), b = batch0.toFloat32Array();
  let maxDiff = 0;
  for (let i = 0; i < a.length; ++i) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
  console.log(`  request 0 through singleDecodeWithKVCache: max |difference| ${maxDiff.toExponential(2)}`);
  if (!(maxDiff < 2e-2)) {
    console.log("DECODE MISMATCH");
    process.exit(1);
  }
}

const check = dst.toFloat32Array();
const ref = src.toFloat32Array();
let same = check.length === ref.length;
for (let i = 0; same && i < ref.length; i += 9973) same = check[i] === ref[i];
console.log(same ? "copies verified" : "COPY MISMATCH");
if (!same) process.exit(1);

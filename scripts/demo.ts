// `npm run demo`: what this build of flashinfer-bun can do on the default device.
// At this stage: device facts, tensors, copies and their achieved bandwidth.
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
const check = dst.toFloat32Array();
const ref = src.toFloat32Array();
let same = check.length === ref.length;
for (let i = 0; same && i < ref.length; i += 9973) same = check[i] === ref[i];
console.log(same ? "copies verified" : "COPY MISMATCH");
if (!same) process.exit(1);

// Host cost per call of the ops a serving step issues, on the GPU machine: 500 calls issued back
// to back with no sync inside the loop ("host"), then one sync ("wall"); where host exceeds the
// device time of the op, a step of such ops is host-bound. Also the native share of the decode
// run (fi_prefill_run timed through a wrapper around the FFI symbol). Nothing is recorded.
//   source .device/env.sh && bun scripts/host-cost.ts
import * as fi from "../lib/index.ts";
import { lib } from "../lib/ffi/library.ts";
const device = "cuda:0";
if (!fi.cudaAvailable()) throw new Error("host-cost: needs a CUDA device");
const host = (name: string, fn: () => unknown) => {
  for (let i = 0; i < 50; ++i) fn();
  fi.synchronize(device);
  const t0 = performance.now();
  for (let i = 0; i < 500; ++i) fn();
  const t1 = performance.now();
  fi.synchronize(device);
  const t2 = performance.now();
  console.log(`${name.padEnd(40)} host ${((t1 - t0) * 2).toFixed(1).padStart(6)} us/call, wall ${((t2 - t0) * 2).toFixed(1).padStart(6)} us/call`);
};
using ws = fi.empty([64 << 20], { dtype: "uint8", device });
const B = 64, L = 1024, P = 16, per = L / P;
using cache = fi.randn([B * per, 2, P, 8, 128], { dtype: "bfloat16", device, seed: 1 });
using q = fi.randn([B, 32, 128], { dtype: "bfloat16", device, seed: 2 });
using out = fi.empty(q.shape, { dtype: "bfloat16", device });
using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD");
w.plan({ indptr: Int32Array.from({ length: B + 1 }, (_, r) => r * per), indices: Int32Array.from({ length: B * per }, (_, i) => i), lastPageLen: new Int32Array(B).fill(P),
  numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: P, qDataType: "bfloat16" });
const L_ = lib() as unknown as Record<string, (...a: unknown[]) => unknown>;
let native = 0, calls = 0;
const orig = L_.fi_prefill_run!;
try {
  L_.fi_prefill_run = (...a: unknown[]) => { const t = performance.now(); const r = orig(...a); native += performance.now() - t; ++calls; return r; };
} catch (e) { console.log("cannot wrap fi_prefill_run:", String(e)); }
host("decode run 64 x 1024 (32/8, d 128)", () => w.run(q, cache, { out }));
if (calls) console.log(`  of which fi_prefill_run: ${(native * 1e3 / calls).toFixed(1)} us/call`);
using x = fi.randn([B, 4096], { dtype: "bfloat16", device, seed: 3 });
using wq = fi.randn([6144, 4096], { dtype: "bfloat16", device, seed: 4 });
using nw = fi.randn([4096], { dtype: "bfloat16", device, seed: 5 });
using res = fi.randn([B, 4096], { dtype: "bfloat16", device, seed: 6 });
host("gemm [64,4096] x [6144,4096]^T", () => fi.gemm(x, wq, { transB: true }).dispose());
host("rmsnorm [64,4096]", () => fi.rmsnorm(x, nw).dispose());
host("fusedAddRmsnorm [64,4096]", () => fi.fusedAddRmsnorm(x, res, nw));
using gu = fi.randn([B, 2 * 14336], { dtype: "bfloat16", device, seed: 7 });
host("siluAndMul [64, 28672]", () => fi.siluAndMul(gu).dispose());
using qk = fi.randn([B, 48, 128], { dtype: "bfloat16", device, seed: 8 });
using pos = fi.tensor(Int32Array.from({ length: B }, () => 1000), [B], { dtype: "int32", device });
host("applyRopePosIdsInplace (device pos)", () => fi.applyRopePosIdsInplace(qk.slice(1, 0, 32), qk.slice(1, 32, 40), pos));
host("empty [64,4096] + dispose", () => fi.empty([B, 4096], { dtype: "bfloat16", device }).dispose());
host("fi.tensor(Int32Array(64)) upload", () => fi.tensor(Int32Array.from({ length: B }, () => 1), [B], { dtype: "int32", device }).dispose());

// Throwaway profiling probe (not committed): one case per process, run 3 times so ncu can skip 2.
import * as fi from "../../lib/index.ts";
import { scatteredPageTable } from "../harness.ts";
const device = fi.defaultDevice();
const dt = "bfloat16" as const, Hq = 32, Hkv = 8, D = 128;
const ws = fi.empty([512 << 20], { dtype: "uint8", device });
const which = process.argv[2]!;
const timeOnly = process.argv.includes("--time");
let run: () => unknown = () => {};
let flops = 0, bytes = 0;
if (which === "d256" || which === "d256fa2") {
  // Issue 14's head dim 256 row: one 8192-token causal prefill, 16 / 16 heads, on fa3 (or fa2).
  const n = 8192, H = 16, D256 = 256;
  const q = fi.randn([n, H, D256], { dtype: dt, device, seed: 1 });
  const k = fi.randn([n, H, D256], { dtype: dt, device, seed: 2 });
  const v = fi.randn([n, H, D256], { dtype: dt, device, seed: 3 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { backend: which === "d256" ? "fa3" : "fa2" });
  w.plan({ qoIndptr: [0, n], kvIndptr: [0, n], numQoHeads: H, numKvHeads: H, headDimQk: D256, qDataType: dt, causal: true });
  run = () => w.run(q, k, v, { out }); flops = (n * n * 4 * H * D256) / 2;
} else if (which === "short") {
  // 256 requests of 32 query tokens x 832 own keys (ragged, non-causal): the items of the 10% BSR
  // (6.5 tiles) without its gathers.
  const n = 256, ql = 32, kl = 832;
  const q = fi.randn([n * ql, Hq, D], { dtype: dt, device, seed: 1 });
  const k = fi.randn([n * kl, Hkv, D], { dtype: dt, device, seed: 2 });
  const v = fi.randn([n * kl, Hkv, D], { dtype: dt, device, seed: 3 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { backend: "fa3" });
  w.plan({ qoIndptr: Int32Array.from({ length: n + 1 }, (_, i) => i * ql), kvIndptr: Int32Array.from({ length: n + 1 }, (_, i) => i * kl),
    numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: dt });
  console.log("short planInfo", JSON.stringify(w.planInfo));
  run = () => w.run(q, k, v, { out }); flops = n * ql * kl * 4 * Hq * D;
} else if (which === "bsr" || which === "bsr100" || which === "dense" || which === "densec") {
  const M = 8192, N = 8192, R = 64, C = 64, density = which === "bsr100" ? 1.0 : 0.1;
  let s = 12345;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const indptr = [0], indices: number[] = [];
  for (let i = 0; i < M / R; ++i) { for (let j = 0; j < N / C; ++j) if (rand() < density) indices.push(j); indptr.push(indices.length); }
  const q = fi.randn([M, Hq, D], { dtype: dt, device, seed: 1 });
  const k = fi.randn([N, Hkv, D], { dtype: dt, device, seed: 2 });
  const v = fi.randn([N, Hkv, D], { dtype: dt, device, seed: 3 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  if (which === "dense" || which === "densec") {
    const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { backend: "fa3" });
    w.plan({ qoIndptr: [0, M], kvIndptr: [0, N], numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: dt, causal: which === "densec" });
    run = () => w.run(q, k, v, { out }); flops = M * N * 4 * Hq * D / (which === "densec" ? 2 : 1);
  } else {
    const w = new fi.BlockSparseAttentionWrapper(ws.slice(0), { backend: "fa3" });
    w.plan({ indptr, indices, M, N, R, C, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, qDataType: dt });
    run = () => w.run(q, k, v, { out }); flops = indices.length * R * C * 4 * Hq * D;
    console.log("bsr planInfo", JSON.stringify(w.planInfo));
  }
} else if (which === "vsp1" || which === "vsp16") {
  const batch = 16, len = 1024, P = which === "vsp1" ? 1 : 16;
  const q = fi.randn([batch * len, Hq, D], { dtype: dt, device, seed: 1 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  const qoIndptr = Int32Array.from({ length: batch + 1 }, (_, i) => i * len);
  const t = scatteredPageTable(batch, len, P);
  const cache = fi.randn([t.pages, 2, P, Hkv, D], { dtype: dt, device, seed: 4 });
  const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend: "fa3" });
  w.plan({ qoIndptr, pagedKvIndptr: t.indptr, pagedKvIndices: t.indices, pagedKvLastPageLen: t.lastPageLen, pageSize: P, numQoHeads: Hq,
    numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: dt });
  run = () => w.run(q, cache, { out }); flops = (batch * 4 * len * len * Hq * D) / 2;
} else if (which === "prefix" || which === "own") {
  const batch = 64, prefix = 32768, ownLen = 512, P = 16;
  const prefixPages = prefix / P, ownPages = ownLen / P, pages = prefixPages + batch * ownPages;
  const cache = fi.randn([pages, 2, P, Hkv, D], { dtype: dt, device, seed: 5 });
  const q = fi.randn([batch, Hq, D], { dtype: dt, device, seed: 6 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  const lse = fi.empty([batch, Hq], { device });
  const shared = Array.from({ length: prefixPages }, (_, i) => i);
  const seq = (n: number, step: number) => Int32Array.from({ length: n + 1 }, (_, i) => i * step);
  if (which === "prefix") {
    const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend: "fa3" });
    w.plan({ qoIndptr: [0, batch], pagedKvIndptr: [0, prefixPages], pagedKvIndices: shared, pagedKvLastPageLen: [P], pageSize: P, numQoHeads: Hq,
      numKvHeads: Hkv, headDimQk: D, qDataType: dt });
    console.log("prefix planInfo", JSON.stringify(w.planInfo));
    run = () => w.run(q, cache, { out, lse }); flops = batch * Hq * prefix * D * 4; bytes = prefix * Hkv * D * 4;
  } else {
    const w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
    w.plan({ indptr: seq(batch, ownPages), indices: Int32Array.from({ length: batch * ownPages }, (_, i) => prefixPages + i),
      lastPageLen: new Int32Array(batch).fill(P), numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
    console.log("own planInfo", JSON.stringify(w.planInfo));
    run = () => w.run(q, cache, { out, lse }); bytes = batch * ownLen * Hkv * D * 4;
  }
} else if (which.startsWith("fused")) {
  // Both cascade levels in one prefill plan: q stacked twice (rows 0-63 see the prefix, rows 64-127 their own keys).
  const backend = (which.split("_")[1] ?? "fa3") as "fa3" | "fa2" | "auto";
  const batch = 64, prefix = 32768, ownLen = 512, P = 16;
  const prefixPages = prefix / P, ownPages = ownLen / P, pages = prefixPages + batch * ownPages;
  const cache = fi.randn([pages, 2, P, Hkv, D], { dtype: dt, device, seed: 5 });
  const q = fi.randn([2 * batch, Hq, D], { dtype: dt, device, seed: 6 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  const lse = fi.empty([2 * batch, Hq], { device });
  const qoIndptr = Int32Array.from({ length: batch + 2 }, (_, i) => (i === 0 ? 0 : batch + i - 1));
  const kvIndptr = Int32Array.from({ length: batch + 2 }, (_, i) => (i === 0 ? 0 : prefixPages + (i - 1) * ownPages));
  const indices = Int32Array.from({ length: pages }, (_, i) => i);
  const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend });
  w.plan({ qoIndptr, pagedKvIndptr: kvIndptr, pagedKvIndices: indices, pagedKvLastPageLen: new Int32Array(batch + 1).fill(P), pageSize: P,
    numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: dt });
  console.log("fused planInfo", JSON.stringify(w.planInfo));
  run = () => w.run(q, cache, { out, lse }); bytes = (prefix + batch * ownLen) * Hkv * D * 4;
} else if (which === "topp5" || which === "topp9" || which === "topk") {
  const logits = fi.randn([128, 128256], { device, seed: 7 });
  const probs = fi.softmax(logits, { temperature: 1 });
  run = which === "topk" ? () => fi.topKSamplingFromProbs(probs, 50, { seed: 1 }).dispose()
    : () => fi.topPSamplingFromProbs(probs, which === "topp5" ? 0.5 : 0.9, { seed: 1 }).dispose();
  bytes = 128 * 128256 * 4;
} else if (which === "fp8") {
  const t = scatteredPageTable(128, 4096, 16);
  const c16 = fi.randn([t.pages, 2, 16, Hkv, D], { dtype: dt, device, seed: 1 });
  const cache = c16.to({ dtype: "float8_e4m3fn" });
  const q = fi.randn([128, Hq, D], { dtype: dt, device, seed: 2 });
  const out = fi.empty(q.shape, { dtype: dt, device });
  const w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
  w.plan({ ...t, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: 16, qDataType: dt, kvDataType: "float8_e4m3fn" });
  console.log("fp8 planInfo", JSON.stringify(w.planInfo));
  run = () => w.run(q, cache, { out }); bytes = 128 * 4096 * Hkv * D * 2;
}
if (timeOnly) {
  const r = fi.benchDeviceTime(run, { device, iterations: 20, warmup: 3 });
  const us = r.medianMs * 1e3;
  console.log(`TIME ${which}: ${us.toFixed(1)} us` + (flops ? `  ${(flops / us / 1e6).toFixed(1)} TFLOP/s` : "") + (bytes ? `  ${(bytes / us / 1e6).toFixed(2)} TB/s` : ""));
} else {
  for (let i = 0; i < 3; ++i) run();
  fi.synchronize(device);
}

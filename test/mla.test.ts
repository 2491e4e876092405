// MLA (lib/mla.ts; CPU backend and the CUDA kernel native/src/attention/mla.cu) against a float64
// reference written from the definition:
//   logits = (qNope . ckv + qPe . kpe) * smScale, softmax over visible keys, out = p @ ckv
// on fresh random inputs: decode and prefill rows (causal), odd lengths, empty requests, pages of
// 1 and 64, 128 and 16 heads, a cache given as slices of one [pages, pageSize, 576] buffer.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectClose, expectFlashInferError, gpu, withContext } from "./helpers.ts";

const seed = () => Math.floor(Math.random() * 2 ** 31);
const f64 = (t: fi.Tensor) => Float64Array.from(t.toFloat32Array());

/** The definition, for request rows i of [qoLen] over its kvLen tokens (ckv [kvLen, C], kpe [kvLen, R]). */
function mlaReference(qNope: Float64Array, qPe: Float64Array, ckv: Float64Array, kpe: Float64Array, qoLen: number, kvLen: number, H: number,
  C: number, R: number, scale: number, causal: boolean): { out: Float64Array; lse: Float64Array } {
  const out = new Float64Array(qoLen * H * C), lse = new Float64Array(qoLen * H).fill(-Infinity);
  for (let i = 0; i < qoLen; ++i) {
    for (let h = 0; h < H; ++h) {
      const logits: number[] = [];
      for (let j = 0; j < kvLen; ++j) {
        if (causal && j > i + kvLen - qoLen) break;
        let dot = 0;
        for (let c = 0; c < C; ++c) dot += qNope[(i * H + h) * C + c]! * ckv[j * C + c]!;
        for (let r = 0; r < R; ++r) dot += qPe[(i * H + h) * R + r]! * kpe[j * R + r]!;
        logits.push(dot * scale);
      }
      if (logits.length === 0) continue;
      const m = Math.max(...logits);
      const w = logits.map((x) => Math.exp(x - m)), sum = w.reduce((a, b) => a + b, 0);
      lse[i * H + h] = m + Math.log(sum);
      w.forEach((p, j) => {
        for (let c = 0; c < C; ++c) out[(i * H + h) * C + c]! += (p / sum) * ckv[j * C + c]!;
      });
    }
  }
  return { out, lse };
}

/** Plans and runs MLA on `device` for one batch, and checks out and lse against the definition. */
function checkMla(device: fi.Device, H: number, P: number, qoLens: number[], kvLens: number[], dtype: "bfloat16" | "float16" = "bfloat16",
  backend: fi.PrefillBackend = "auto"): void {
  const C = 512, R = 64;
  const batch = qoLens.length, totalQo = qoLens.reduce((a, b) => a + b, 0);
  const pagesPer = kvLens.map((l) => Math.ceil(l / P)), pages = pagesPer.reduce((a, b) => a + b, 0) + 1;
  // One buffer [pages, P, C + R]: ckv and kpe are slices (strided views), pages in reverse order.
  using latent = fi.randn([pages, P, C + R], { dtype, seed: seed(), device });
  using ckv = latent.slice(2, 0, C), kpe = latent.slice(2, C, C + R);
  using qNope = fi.randn([totalQo, H, C], { dtype, seed: seed(), device });
  using qPe = fi.randn([totalQo, H, R], { dtype, seed: seed(), device });
  const kvIndptr = [0];
  const kvIndices: number[] = [];
  let next = pages - 1;
  pagesPer.forEach((n) => {
    for (let i = 0; i < n; ++i) kvIndices.push(next--);
    kvIndptr.push(kvIndices.length);
  });
  const qoIndptr = [0, ...qoLens.map(((s) => (x: number) => (s += x))(0))];
  const scale = 1 / Math.sqrt(192); // DeepSeek's: the pre-absorption head dim
  const causal = qoLens.some((n) => n > 1);
  using ws = fi.empty([64 << 20], { dtype: "uint8", device });
  using mla = new fi.BatchMLAPagedAttentionWrapper(ws, { backend });
  mla.plan({ qoIndptr, kvIndptr, kvIndices, kvLen: kvLens, numHeads: H, headDimCkv: C, headDimKpe: R, pageSize: P, causal, smScale: scale,
    qDataType: dtype });
  if (backend !== "auto") expect(mla.planInfo!.kernel).toBe(backend);
  // Split rows on the wgmma kernel: pieces start on its 64-key tile (whole pages by TMA).
  if (mla.planInfo!.kernel === "fa3" && mla.planInfo!.chunkTokens > 0) expect(mla.planInfo!.chunkTokens % 64).toBe(0);
  // Poisoned outputs: every element must be written.
  using out = fi.full([totalQo, H, C], NaN, { dtype, device });
  using lse = fi.full([totalQo, H], NaN, { device });
  mla.run(qNope, qPe, ckv, kpe, { out, lse });
  const lat = f64(latent), qn = f64(qNope), qp = f64(qPe), got = f64(out), gotLse = f64(lse);
  expect(got.every(Number.isFinite)).toBe(true);
  for (let r = 0; r < batch; ++r) {
    // The request's tokens from its pages.
    const len = kvLens[r]!, c = new Float64Array(len * C), k = new Float64Array(len * R);
    for (let j = 0; j < len; ++j) {
      const page = kvIndices[kvIndptr[r]! + Math.floor(j / P)]!, at = (page * P + (j % P)) * (C + R);
      c.set(lat.subarray(at, at + C), j * C);
      k.set(lat.subarray(at + C, at + C + R), j * R);
    }
    const q0 = qoIndptr[r]!, n = qoLens[r]!;
    const ref = mlaReference(qn.subarray(q0 * H * C, (q0 + n) * H * C), qp.subarray(q0 * H * R, (q0 + n) * H * R), c, k, n, len, H, C, R, scale, causal);
    withContext(`request ${r} (qo ${n}, kv ${len})`, () => {
      expectClose(got.subarray(q0 * H * C, (q0 + n) * H * C), ref.out, 1e-2, 1e-2);
      const l = gotLse.subarray(q0 * H, (q0 + n) * H);
      if (len === 0) expect(Array.from(l).every((x) => x === -Infinity)).toBe(true);
      else expectClose(l, ref.lse, 1e-3, 1e-3);
    });
  }
}

const devices = gpu ? (["cpu", "cuda:0"] as const) : (["cpu"] as const);
const hopper = gpu && fi.deviceProperties("cuda:0").computeCapability[0] === 9;
// The CUDA kernels: mma.sync ("fa2") on every GPU, wgmma ("fa3") on Hopper.
const cudaBackends = [...(gpu ? ["fa2" as const] : []), ...(hopper ? ["fa3" as const] : [])];

describe("BatchMLAPagedAttentionWrapper", () => {
  test.each(devices)("decode and causal prefill rows, odd lengths, an empty request; pages of 1 and 64; 16 and 128 heads; a latent buffer split into ckv / kpe views [%s]", (device) => {
    for (const [H, P, qoLens, kvLens] of [
      [16, 64, [1, 1, 1, 1], [1, 130, 0, 64]], // decode
      [16, 1, [3, 1, 5], [3, 9, 20]], // prefill / speculative rows, causal
      [128, 64, [2, 1], [70, 1]],
    ] as [number, number, number[], number[]][]) {
      withContext(`${H} heads, page ${P}, qo ${qoLens}, kv ${kvLens} on ${device}`, () => checkMla(device, H, P, qoLens, kvLens));
    }
  });

  test.skipIf(!gpu)("CUDA: long requests split across SMs and merged (batch 1 x 3001, 128 heads), many short ones, page 1, float16, prefill rows over a long cache [cuda]", () => {
    for (const [H, P, qoLens, kvLens, dtype] of [
      [128, 64, [1], [3001], "bfloat16"],
      [16, 1, [1, 1, 1, 1, 1, 1, 1], [517, 2, 64, 65, 0, 1, 333], "bfloat16"],
      [128, 64, [1, 1, 1], [1000, 77, 2049], "float16"],
      [16, 64, [7, 33], [900, 40], "bfloat16"], // speculative / chunked prefill rows, causal
    ] as [number, number, number[], number[], "bfloat16" | "float16"][]) {
      withContext(`${H} heads, page ${P}, qo ${qoLens}, kv ${kvLens}, ${dtype}`, () => checkMla("cuda:0", H, P, qoLens, kvLens, dtype));
    }
  });

  // Every kernel on the shapes that stress it: the wgmma one's two warpgroups split the output
  // columns and trade P and the rescale factors per 64-key tile (many tiles, partial last tiles,
  // causal diagonals inside a tile, split rows merged, rows of a tile spanning query tokens).
  test.skipIf(!gpu).each(cudaBackends as ("fa2" | "fa3")[])("CUDA %s kernel: decode and prefill rows, pages 1 and 64, split and merged, 16 / 128 heads, float16 [cuda]", (backend) => {
    for (const [H, P, qoLens, kvLens, dtype] of [
      [128, 64, [1, 1, 1, 1], [4096, 63, 0, 129], "bfloat16"],
      [128, 1, [1], [3001], "bfloat16"],
      [16, 64, [5, 1, 17], [5, 700, 300], "bfloat16"], // causal: 64-row tiles of 4 query tokens x 16 heads
      [128, 64, [2, 1], [1000, 65], "float16"],
      [128, 16, [1, 3], [777, 200], "bfloat16"], // pages of 16: four a 64-key tile
    ] as [number, number, number[], number[], "bfloat16" | "float16"][]) {
      withContext(`${backend}: ${H} heads, page ${P}, qo ${qoLens}, kv ${kvLens}, ${dtype}`, () => checkMla("cuda:0", H, P, qoLens, kvLens, dtype, backend));
    }
  });

  test.each(devices)("an fp8 latent cache (e4m3) with kScale / vScale against the definition on the dequantized cache [%s]", (device) => {
    const C = 512, R = 64, H = 16, P = 64, lens = [70, 1, 0];
    const pagesPer = lens.map((l) => Math.ceil(l / P)), pages = pagesPer.reduce((a, b) => a + b, 0);
    using latent32 = fi.randn([pages, P, C + R], { seed: seed(), device });
    using latent = latent32.to({ dtype: "float8_e4m3fn" });
    using ckv = latent.slice(2, 0, C), kpe = latent.slice(2, C, C + R);
    using qNope = fi.randn([lens.length, H, C], { dtype: "bfloat16", seed: seed(), device });
    using qPe = fi.randn([lens.length, H, R], { dtype: "bfloat16", seed: seed(), device });
    const kvIndptr = [0, ...pagesPer.map(((s) => (x: number) => (s += x))(0))];
    const kScale = 0.75, vScale = 1.5, scale = 0.05;
    using ws = fi.empty([16 << 20], { dtype: "uint8", device });
    using mla = new fi.BatchMLAPagedAttentionWrapper(ws);
    mla.plan({ qoIndptr: [0, 1, 2, 3], kvIndptr, kvIndices: Array.from({ length: pages }, (_, i) => i), kvLen: lens, numHeads: H, headDimCkv: C,
      headDimKpe: R, pageSize: P, smScale: scale, qDataType: "bfloat16", kvDataType: "float8_e4m3fn" });
    using out = mla.run(qNope, qPe, ckv, kpe, { kScale, vScale }) as fi.Tensor;
    const lat = f64(latent), qn = f64(qNope), qp = f64(qPe), got = f64(out);
    let page = 0;
    lens.forEach((len, r) => {
      // Logits use k * kScale (ckv and kpe alike); the output is (p @ ckv) * vScale.
      const c = new Float64Array(len * C), k = new Float64Array(len * R);
      for (let j = 0; j < len; ++j) {
        const at = ((page + Math.floor(j / P)) * P + (j % P)) * (C + R);
        c.set(lat.subarray(at, at + C), j * C);
        k.set(lat.subarray(at + C, at + C + R), j * R);
      }
      page += pagesPer[r]!;
      const ref = mlaReference(qn.subarray(r * H * C, (r + 1) * H * C), qp.subarray(r * H * R, (r + 1) * H * R), c, k, 1, len, H, C, R, scale * kScale, false);
      withContext(`request ${r} (kv ${len})`, () => expectClose(got.subarray(r * H * C, (r + 1) * H * C), ref.out.map((x) => x * vScale), 1e-2, 1e-2));
    });
  });

  test("bad input names the argument; nothing written", () => {
    using ws = fi.empty([8 << 20], { dtype: "uint8", device: "cpu" });
    using mla = new fi.BatchMLAPagedAttentionWrapper(ws);
    const plan = { qoIndptr: [0, 1], kvIndptr: [0, 1], kvIndices: [0], kvLen: [5], numHeads: 4, headDimCkv: 512, headDimKpe: 64, pageSize: 64 };
    using q = fi.zeros([1, 4, 512], { dtype: "bfloat16", device: "cpu" });
    using qPe = fi.zeros([1, 4, 64], { dtype: "bfloat16", device: "cpu" });
    using ckv = fi.zeros([2, 64, 512], { dtype: "bfloat16", device: "cpu" });
    using kpe = fi.zeros([2, 64, 64], { dtype: "bfloat16", device: "cpu" });
    expectFlashInferError(() => mla.run(q, qPe, ckv, kpe), "invalid_argument", /run: call plan\(\) first/);
    expectFlashInferError(() => mla.plan({ ...plan, kvLen: [65] }), "invalid_argument", /kvLen\[0\]: 65 tokens need 2 pages of 64, but kvIndptr gives request 0 1/);
    expectFlashInferError(() => mla.plan({ ...plan, headDimKpe: 0 }), "invalid_argument", /headDimKpe: expected a positive integer/);
    mla.plan(plan);
    using out = fi.full([1, 4, 512], 7, { dtype: "bfloat16", device: "cpu" });
    using kpeBad = fi.zeros([2, 64, 32], { dtype: "bfloat16", device: "cpu" });
    expectFlashInferError(() => mla.run(q, qPe, ckv, kpeBad, { out }), "invalid_argument", /kpeCache: its last dim must be rope_dim = 64/);
    using qPeBad = fi.zeros([1, 3, 64], { dtype: "bfloat16", device: "cpu" });
    expectFlashInferError(() => mla.run(q, qPeBad, ckv, kpe, { out }), "invalid_argument", /qPe: expected \[1, 4, 64\]/);
    using ckvF16 = fi.zeros([2, 64, 512], { dtype: "float16", device: "cpu" });
    expectFlashInferError(() => mla.run(q, qPe, ckvF16, kpe, { out }), "invalid_argument", /ckvCache: dtype float16 differs from the plan's kv data type bfloat16/);
    expect(Array.from(out.toFloat32Array()).every((x) => x === 7)).toBe(true);
  });

  test.skipIf(!gpu)("CUDA: what the kernel is not built for is refused at plan with a FlashInferError [cuda]", () => {
    using ws = fi.empty([8 << 20], { dtype: "uint8", device: "cuda:0" });
    using mla = new fi.BatchMLAPagedAttentionWrapper(ws);
    const plan = { qoIndptr: [0, 1], kvIndptr: [0, 1], kvIndices: [0], kvLen: [5], numHeads: 4, headDimCkv: 512, headDimKpe: 64, pageSize: 64 };
    expectFlashInferError(() => mla.plan({ ...plan, headDimKpe: 32 }), "unsupported", /headDimCkv, headDimKpe: the CUDA MLA kernel is built for 512 and 64/);
    expectFlashInferError(() => mla.plan({ ...plan, qDataType: "float16", kvDataType: "bfloat16" }), "unsupported", /kvDataType: expected qNope's dtype \(float16\)/);
    mla.plan(plan); // and the supported one plans: auto takes the wgmma kernel on Hopper
    expect(mla.planInfo!.kernel).toBe(hopper ? "fa3" : "fa2");
    // An fp8 latent runs on the mma.sync kernel; fa3 refuses it (and refuses every plan off Hopper).
    mla.plan({ ...plan, kvDataType: "float8_e4m3fn" });
    expect(mla.planInfo!.kernel).toBe("fa2");
    using mla3 = new fi.BatchMLAPagedAttentionWrapper(ws, { backend: "fa3" });
    expectFlashInferError(() => mla3.plan({ ...plan, kvDataType: "float8_e4m3fn" }), "unsupported", /backend: fa3 cannot serve this MLA plan: its latent must be of qNope's dtype \(bfloat16\), got float8_e4m3fn/);
    if (!hopper) expectFlashInferError(() => mla3.plan(plan), "unsupported", /backend: fa3 cannot serve this MLA plan: the device is not a Hopper GPU/);
  });
});

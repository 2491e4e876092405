// POD attention (lib/pod.ts): a prefill chunk and a decode batch planned together and run side by
// side; each part must equal the separate wrapper's result bit for bit (same plans, same kernels)
// and the float64 definition; the CUDA fork / join must replay from a CUDA graph.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectClose, expectFlashInferError, gpu, testOnDevices, withContext } from "./helpers.ts";
import { variantPrefillReference } from "./reference/prefill.ts";

const seed = () => Math.floor(Math.random() * 2 ** 31);
const f64 = (t: fi.Tensor) => Float64Array.from(t.toFloat32Array());
const cumsum = (a: number[]) => Int32Array.from([0, ...a.map(((s) => (x: number) => (s += x))(0))]);

/** A step: a prefill chunk (qoLen rows at the end of kvLen keys) and decode requests of these lengths, pages in order in one cache. */
function step(device: fi.Device, Hq: number, Hkv: number, D: number, P: number, qoLen: number, kvLen: number, decodeLens: number[]) {
  const lens = [kvLen, ...decodeLens];
  const counts = lens.map((l) => Math.ceil(l / P)), pages = counts.reduce((a, b) => a + b, 0);
  const firstPage = cumsum(counts);
  const cache = fi.randn([pages, 2, P, Hkv, D], { dtype: "float16", seed: seed(), device: "cpu" });
  const c64 = f64(cache);
  // Request r's keys and values as [len, Hkv, D] float64, and as contiguous float16 (the ragged prefill keys).
  const kv = (r: number) => {
    const len = lens[r]!, k = new Float64Array(len * Hkv * D), v = new Float64Array(len * Hkv * D);
    for (let j = 0; j < len; ++j) {
      const base = ((firstPage[r]! + Math.floor(j / P)) * 2 * P + (j % P)) * Hkv * D;
      k.set(c64.subarray(base, base + Hkv * D), j * Hkv * D);
      v.set(c64.subarray(base + P * Hkv * D, base + P * Hkv * D + Hkv * D), j * Hkv * D);
    }
    return { k, v };
  };
  const last = (l: number) => (l === 0 ? 0 : l - (Math.ceil(l / P) - 1) * P);
  const pagesOf = (r: number) => Array.from({ length: counts[r]! }, (_, i) => firstPage[r]! + i);
  const prefillKv = kv(0);
  return {
    cache: cache.to(device),
    qPrefill: fi.randn([qoLen, Hq, D], { dtype: "float16", seed: seed(), device }),
    qDecode: fi.randn([decodeLens.length, Hq, D], { dtype: "float16", seed: seed(), device }),
    kPrefill: fi.tensor(Float32Array.from(prefillKv.k), [kvLen, Hkv, D], { device }).to({ dtype: "float16" }),
    vPrefill: fi.tensor(Float32Array.from(prefillKv.v), [kvLen, Hkv, D], { device }).to({ dtype: "float16" }),
    kv,
    decodeTable: {
      indptr: cumsum(counts.slice(1)),
      indices: Int32Array.from(decodeLens.flatMap((_, r) => pagesOf(r + 1))),
      lastPageLen: decodeLens.map(last),
    },
    prefillPages: { indices: Int32Array.from(pagesOf(0)), lastPageLen: last(kvLen) },
    dispose() {
      cache.dispose();
      this.cache.dispose();
      this.qPrefill.dispose();
      this.qDecode.dispose();
      this.kPrefill.dispose();
      this.vPrefill.dispose();
    },
  };
}

describe("PODWithPagedKVCacheWrapper", () => {
  testOnDevices("each part equals its separate wrapper bit for bit and the float64 definition: ragged and paged prefill keys, odd lengths, an empty decode request", (device) => {
    const Hq = 8, Hkv = 2, D = 64, P = 16, qoLen = 37, kvLen = 100, decodeLens = [1, 17, 0, 300, 64];
    const s = step(device, Hq, Hkv, D, P, qoLen, kvLen, decodeLens);
    try {
      const dims = { numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: "float16" as const };
      for (const paged of [false, true]) {
        withContext(paged ? "paged prefill keys" : "ragged prefill keys", () => {
          using ws = fi.empty([32 << 20], { dtype: "uint8", device });
          using pod = new fi.PODWithPagedKVCacheWrapper(ws);
          pod.plan({ ...dims, ...s.decodeTable, prefillQoLen: qoLen, ...(paged ? { prefillPages: s.prefillPages } : { prefillKvLen: kvLen }), logitsSoftCap: 30 });
          const info = pod.planInfo!;
          expect(info.decode.kernel).toBe(device === "cpu" ? "cpu" : "decode_tc");
          expect(info.prefill.totalQo).toBe(qoLen);
          const { prefill, decode } = pod.run(s.qPrefill, paged ? null : s.kPrefill, paged ? null : s.vPrefill, s.qDecode, s.cache, { returnLse: true }) as
            { prefill: { out: fi.Tensor; lse: fi.Tensor }; decode: { out: fi.Tensor; lse: fi.Tensor } };
          try {
            // The separate wrappers.
            using ws1 = fi.empty([16 << 20], { dtype: "uint8", device });
            using ws2 = fi.empty([16 << 20], { dtype: "uint8", device });
            using d = new fi.BatchDecodeWithPagedKVCacheWrapper(ws1);
            d.plan({ ...dims, ...s.decodeTable, logitsSoftCap: 30 });
            const dr = d.run(s.qDecode, s.cache, { returnLse: true }) as { out: fi.Tensor; lse: fi.Tensor };
            using p = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws2);
            p.plan({ numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: "float16", qoIndptr: [0, qoLen], kvIndptr: [0, kvLen], causal: true, logitsSoftCap: 30 });
            const pr = p.run(s.qPrefill, s.kPrefill, s.vPrefill, { returnLse: true }) as { out: fi.Tensor; lse: fi.Tensor };
            try {
              expect(Array.from(decode.out.toFloat32Array())).toEqual(Array.from(dr.out.toFloat32Array()));
              expect(Array.from(decode.lse.toFloat32Array())).toEqual(Array.from(dr.lse.toFloat32Array()));
              // Paged and ragged keys take the same tiles on the CPU; on CUDA the loads differ, not the math.
              if (!paged || device === "cpu") expect(Array.from(prefill.out.toFloat32Array())).toEqual(Array.from(pr.out.toFloat32Array()));
              else expectClose(f64(prefill.out), f64(pr.out), 2e-3, 1e-3);
            } finally {
              for (const t of [dr.out, dr.lse, pr.out, pr.lse]) t.dispose();
            }
            // The definition (soft cap 30 on the natural logits).
            const cap = (x: number) => 30 * Math.tanh(x / 30);
            const pk = s.kv(0);
            expectClose(f64(prefill.out), variantPrefillReference(f64(s.qPrefill), pk.k, pk.v, { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, headDimVo: D },
              { causal: true, transform: cap }), 3e-3, 1e-2);
            const qd = f64(s.qDecode), got = f64(decode.out);
            decodeLens.forEach((len, r) => {
              const { k, v } = s.kv(r + 1);
              withContext(`decode request ${r} (kvLen ${len})`, () =>
                expectClose(got.subarray(r * Hq * D, (r + 1) * Hq * D),
                  variantPrefillReference(qd.subarray(r * Hq * D, (r + 1) * Hq * D), k, v, { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, headDimVo: D }, { transform: cap }),
                  3e-3, 1e-2));
            });
          } finally {
            for (const t of [prefill.out, prefill.lse, decode.out, decode.lse]) t.dispose();
          }
        });
      }
    } finally {
      s.dispose();
    }
  });

  test.skipIf(!gpu)("CUDA: the fork and join replay from a CUDA graph, equal to the eager run [cuda]", () => {
    const device = "cuda:0";
    const s = step(device, 32, 8, 128, 16, 256, 1024, [4096, 1, 333, 2048]);
    try {
      using ws = fi.empty([64 << 20], { dtype: "uint8", device });
      using pod = new fi.PODWithPagedKVCacheWrapper(ws);
      pod.plan({ numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, qDataType: "float16", ...s.decodeTable, prefillQoLen: 256, prefillPages: s.prefillPages });
      using outPrefill = fi.empty(s.qPrefill.shape, { dtype: "float16", device });
      using outDecode = fi.empty(s.qDecode.shape, { dtype: "float16", device });
      pod.run(s.qPrefill, null, null, s.qDecode, s.cache, { outPrefill, outDecode });
      const eager = [Array.from(outPrefill.toFloat32Array()), Array.from(outDecode.toFloat32Array())];
      outPrefill.fill_(NaN);
      outDecode.fill_(NaN);
      using graph = new fi.CudaGraph({ device });
      graph.capture(() => pod.run(s.qPrefill, null, null, s.qDecode, s.cache, { outPrefill, outDecode }));
      graph.replay();
      expect(Array.from(outPrefill.toFloat32Array())).toEqual(eager[0]!);
      expect(Array.from(outDecode.toFloat32Array())).toEqual(eager[1]!);
    } finally {
      s.dispose();
    }
  });

  test("bad input names the argument: keys given twice or not at all, run before plan, ragged keys for a paged plan [cpu]", () => {
    using ws = fi.empty([8 << 20], { dtype: "uint8", device: "cpu" });
    using pod = new fi.PODWithPagedKVCacheWrapper(ws);
    const base = { numQoHeads: 4, numKvHeads: 2, headDim: 64, pageSize: 16, indptr: [0, 1], indices: [1], lastPageLen: [5], prefillQoLen: 3 };
    using q = fi.zeros([3, 4, 64], { dtype: "float16" });
    using qd = fi.zeros([1, 4, 64], { dtype: "float16" });
    using cache = fi.zeros([2, 2, 16, 2, 64], { dtype: "float16" });
    expectFlashInferError(() => pod.run(q, null, null, qd, cache), "invalid_argument", /run: call plan\(\) first/);
    expectFlashInferError(() => pod.plan(base), "invalid_argument", /prefillKvLen, prefillPages: give exactly one/);
    expectFlashInferError(() => pod.plan({ ...base, prefillKvLen: 3, prefillPages: { indices: [0], lastPageLen: 3 } }), "invalid_argument", /give exactly one/);
    expectFlashInferError(() => pod.plan({ ...base, prefillQoLen: 0, prefillKvLen: 3 }), "invalid_argument", /prefillQoLen: expected a positive integer/);
    expectFlashInferError(() => pod.plan({ ...base, prefillKvLen: 3, indices: [-1] }), "invalid_argument", /indices\[0\]: page index must be >= 0/);
    pod.plan({ ...base, prefillPages: { indices: [0], lastPageLen: 3 } });
    expectFlashInferError(() => pod.run(q, q, q, qd, cache), "invalid_argument", /kPrefill, vPrefill: the plan's prefill keys are pages of pagedKvCache; pass null/);
  });
});

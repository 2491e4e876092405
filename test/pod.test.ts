// POD attention (lib/pod.ts): a prefill chunk and a decode batch planned together and run side by
// side, in one launch (paged prefill keys) or as two (ragged keys, or oneLaunch: false). Each part
// must equal the float64 definition and the separate wrapper's result: bit for bit where the same
// plan computes it (two launches), within rounding where the decode rows are scheduled as prefill
// rows (one launch: other kernels on CUDA, other KV splits on the CPU). Runs replay from CUDA graphs.
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
  testOnDevices("each part equals its separate wrapper and the float64 definition: ragged and paged prefill keys, odd lengths, an empty decode request", (device) => {
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
          // One launch for paged prefill keys (on CUDA where the Hopper kernel serves): one plan of both parts.
          const one = info.oneLaunch;
          if (!paged || device === "cpu") expect(one).toBe(paged);
          expect(info.decode.kernel).toBe(device === "cpu" ? "cpu" : one ? "fa3" : "decode_tc");
          expect(info.prefill.totalQo).toBe(one ? qoLen + decodeLens.length : qoLen);
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
              if (!one) {
                expect(Array.from(decode.out.toFloat32Array())).toEqual(Array.from(dr.out.toFloat32Array()));
                expect(Array.from(decode.lse.toFloat32Array())).toEqual(Array.from(dr.lse.toFloat32Array()));
              } else {
                expectClose(f64(decode.out), f64(dr.out), 2e-3, 1e-3);
                expectClose(f64(decode.lse), f64(dr.lse), 1e-3, 1e-4);
              }
              // Paged and ragged keys take the same tiles on the CPU (unless the joint plan splits
              // the chunk's keys otherwise); on CUDA the loads differ, not the math.
              if (!paged || (device === "cpu" && !one)) expect(Array.from(prefill.out.toFloat32Array())).toEqual(Array.from(pr.out.toFloat32Array()));
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

  testOnDevices("one launch: queries and outputs joined in place (one batch tensor), staged (separate tensors) or left to run() give the same parts; oneLaunch: false runs two", (device) => {
    const Hq = 8, Hkv = 2, D = 64, P = 16, qoLen = 45, kvLen = 211, decodeLens = [300, 1, 77, 0, 129, 16];
    const s = step(device, Hq, Hkv, D, P, qoLen, kvLen, decodeLens);
    const B = decodeLens.length, rows = qoLen + B;
    try {
      const params = { numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: "float16" as const, ...s.decodeTable, prefillQoLen: qoLen, prefillPages: s.prefillPages };
      using ws = fi.empty([32 << 20], { dtype: "uint8", device });
      using pod = new fi.PODWithPagedKVCacheWrapper(ws);
      pod.plan(params);
      if (device === "cpu") expect(pod.planInfo!.oneLaunch).toBe(true);
      // The engine's layout: both parts' rows in one tensor, outputs likewise (poisoned: every row must be written).
      using q = fi.empty([rows, Hq, D], { dtype: "float16", device });
      using qp = q.slice(0, 0, qoLen), qd = q.slice(0, qoLen);
      qp.copy_(s.qPrefill);
      qd.copy_(s.qDecode);
      using out = fi.full([rows, Hq, D], NaN, { dtype: "float16", device });
      using op = out.slice(0, 0, qoLen), od = out.slice(0, qoLen);
      const lse = pod.run(qp, null, null, qd, s.cache, { outPrefill: op, outDecode: od, returnLse: true }) as { prefill: { out: fi.Tensor; lse: fi.Tensor }; decode: { out: fi.Tensor; lse: fi.Tensor } };
      const joined = Array.from(out.toFloat32Array());
      expect(joined.some(Number.isNaN)).toBe(false);
      expect(lse.prefill.out).toBe(op);
      expect(lse.decode.out).toBe(od);
      expect(lse.prefill.lse.shape).toEqual([qoLen, Hq]);
      expect(lse.decode.lse.shape).toEqual([B, Hq]);
      const lseJoined = [...Array.from(lse.prefill.lse.toFloat32Array()), ...Array.from(lse.decode.lse.toFloat32Array())];
      for (const t of [lse.prefill.lse, lse.decode.lse]) t.dispose();
      // Separate tensors (staged through the wrapper's buffers), given outputs poisoned.
      using sp = fi.full([qoLen, Hq, D], NaN, { dtype: "float16", device }), sd = fi.full([B, Hq, D], NaN, { dtype: "float16", device });
      pod.run(s.qPrefill, null, null, s.qDecode, s.cache, { outPrefill: sp, outDecode: sd });
      expect([...Array.from(sp.toFloat32Array()), ...Array.from(sd.toFloat32Array())]).toEqual(joined);
      // No outputs given: views of one new tensor.
      const fresh = pod.run(s.qPrefill, null, null, s.qDecode, s.cache, { returnLse: true }) as { prefill: { out: fi.Tensor; lse: fi.Tensor }; decode: { out: fi.Tensor; lse: fi.Tensor } };
      try {
        expect([...Array.from(fresh.prefill.out.toFloat32Array()), ...Array.from(fresh.decode.out.toFloat32Array())]).toEqual(joined);
        expect([...Array.from(fresh.prefill.lse.toFloat32Array()), ...Array.from(fresh.decode.lse.toFloat32Array())]).toEqual(lseJoined);
      } finally {
        for (const t of [fresh.prefill.out, fresh.prefill.lse, fresh.decode.out, fresh.decode.lse]) t.dispose();
      }
      // Two launches: the separate wrappers' plans, the same attention within rounding.
      using ws2 = fi.empty([32 << 20], { dtype: "uint8", device });
      using two = new fi.PODWithPagedKVCacheWrapper(ws2, "NHD", { oneLaunch: false });
      two.plan(params);
      expect(two.planInfo!.oneLaunch).toBe(false);
      const parts = two.run(s.qPrefill, null, null, s.qDecode, s.cache) as { prefill: fi.Tensor; decode: fi.Tensor };
      try {
        expectClose([...Array.from(parts.prefill.toFloat32Array()), ...Array.from(parts.decode.toFloat32Array())], joined, 2e-3, 1e-3);
      } finally {
        parts.prefill.dispose();
        parts.decode.dispose();
      }
      // A new plan of another shape (one decode request fewer) restages: the same rows as before.
      const fewer = { ...params, indptr: s.decodeTable.indptr.slice(0, B), lastPageLen: s.decodeTable.lastPageLen.slice(0, B - 1) };
      fewer.indices = s.decodeTable.indices.slice(0, fewer.indptr[B - 1]);
      pod.plan(fewer);
      using qd2 = s.qDecode.slice(0, 0, B - 1);
      const again = pod.run(s.qPrefill, null, null, qd2, s.cache) as { prefill: fi.Tensor; decode: fi.Tensor };
      try {
        // (Within rounding: another batch may be split otherwise.)
        expectClose([...Array.from(again.prefill.toFloat32Array()), ...Array.from(again.decode.toFloat32Array())], joined.slice(0, (rows - 1) * Hq * D), 2e-3, 1e-3);
      } finally {
        again.prefill.dispose();
        again.decode.dispose();
      }
      pod.plan(params);
      // Bad input at run: a query of the wrong rows, an output of the wrong shape; nothing written.
      using bad = fi.zeros([qoLen + 1, Hq, D], { dtype: "float16", device });
      expectFlashInferError(() => pod.run(bad, null, null, s.qDecode, s.cache), "invalid_argument", /qPrefill: expected \[45 \(prefillQoLen\)/);
      sp.fill_(NaN);
      expectFlashInferError(() => pod.run(s.qPrefill, null, null, s.qDecode, s.cache, { outPrefill: sp, outDecode: bad }), "invalid_argument", /outDecode: expected a float16 tensor/);
      expect(Array.from(sp.toFloat32Array()).every(Number.isNaN)).toBe(true);
    } finally {
      s.dispose();
    }
  });

  test.skipIf(!gpu)("CUDA: one launch (and its staging copies) replays from a CUDA graph, equal to the eager run [cuda]", () => {
    const device = "cuda:0";
    const s = step(device, 32, 8, 128, 16, 256, 1024, [4096, 1, 333, 2048]);
    try {
      using ws = fi.empty([64 << 20], { dtype: "uint8", device });
      using pod = new fi.PODWithPagedKVCacheWrapper(ws);
      pod.plan({ numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, qDataType: "float16", ...s.decodeTable, prefillQoLen: 256, prefillPages: s.prefillPages });
      // One launch on Hopper (the staged queries and outputs: separate tensors).
      if (fi.deviceProperties(device).computeCapability[0] >= 9) expect(pod.planInfo!.oneLaunch).toBe(true);
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
      // A wrapper that has not staged yet refuses to allocate its staging inside a capture.
      if (pod.planInfo!.oneLaunch) {
        using ws2 = fi.empty([64 << 20], { dtype: "uint8", device });
        using fresh = new fi.PODWithPagedKVCacheWrapper(ws2);
        fresh.plan({ numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, qDataType: "float16", ...s.decodeTable, prefillQoLen: 256, prefillPages: s.prefillPages });
        using graph2 = new fi.CudaGraph({ device });
        expectFlashInferError(() => graph2.capture(() => fresh.run(s.qPrefill, null, null, s.qDecode, s.cache, { outPrefill, outDecode })),
          "invalid_argument", /qPrefill, qDecode: separate tensors go through a staging buffer/);
      }
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

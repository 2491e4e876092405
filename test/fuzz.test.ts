// Bad input across the public API, by mutation: each template below is a valid call; the fuzz
// replaces one argument, or one field or element inside it (parameter objects, index arrays), by a value from a pool of
// bad ones (wrong numbers, non-integers, values outside int32, wrong types, disposed, empty,
// strided, broadcast or wrongly typed tensors, NaN) and requires that the call either succeeds or
// throws a FlashInferError: any other exception (a TypeError from a cleanup path, say) is a bug,
// and a crash ends the run. Fixed seeds, so a failure reproduces; every template is first checked
// to succeed as written, so the mutations start from calls that work.
import { describe, expect } from "bun:test";
import * as fi from "../lib/index.ts";
import { testOnDevices } from "./helpers.ts";

type Template = [name: string, make: (d: fi.Device) => unknown[], call: (d: fi.Device, ...args: any[]) => unknown];

const randn = (d: fi.Device, shape: number[], dtype: fi.DType = "float32") => fi.randn(shape, { dtype, device: d });
const ints = (d: fi.Device, values: number[]) => fi.tensor(new Int32Array(values), [values.length], { device: d });
const workspace = (d: fi.Device) => fi.empty([16 << 20], { dtype: "uint8", device: d });
const probs = (d: fi.Device, rows: number, vocab: number) => fi.softmax(randn(d, [rows, vocab]));

const TEMPLATES: Template[] = [
  ["rmsnorm", (d) => [randn(d, [3, 8], "float16"), randn(d, [8], "float16"), { eps: 1e-6 }], (_, ...a) => fi.rmsnorm(a[0], a[1], a[2])],
  ["fusedAddRmsnorm", (d) => [randn(d, [3, 8], "float16"), randn(d, [3, 8], "float16"), randn(d, [8], "float16"), { eps: 1e-6 }],
    (_, ...a) => fi.fusedAddRmsnorm(a[0], a[1], a[2], a[3])],
  ["layernorm", (d) => [randn(d, [3, 8], "bfloat16"), randn(d, [8]), randn(d, [8]), 1e-5], (_, ...a) => fi.layernorm(a[0], a[1], a[2], a[3])],
  ["siluAndMul", (d) => [randn(d, [3, 16], "float16"), {}], (_, ...a) => fi.siluAndMul(a[0], a[1])],
  ["applyRope", (d) => [randn(d, [5, 4, 16], "float16"), randn(d, [5, 2, 16], "float16"), ints(d, [0, 2, 5]), ints(d, [0, 3]), {}],
    (_, ...a) => fi.applyRope(a[0], a[1], a[2], a[3], a[4])],
  ["applyRopePosIdsInplace", (d) => [randn(d, [5, 4, 16], "float16"), randn(d, [5, 2, 16], "float16"), ints(d, [0, 1, 2, 3, 4]), {}],
    (_, ...a) => fi.applyRopePosIdsInplace(a[0], a[1], a[2], a[3])],
  ["applyRopeWithCosSinCache", (d) => [ints(d, [0, 1, 2]), randn(d, [3, 64], "float16"), randn(d, [3, 32], "float16"), 16, randn(d, [8, 16]), { isNeox: true }],
    (_, ...a) => fi.applyRopeWithCosSinCache(a[0], a[1], a[2], a[3], a[4], a[5])],
  ["appendPagedKvCache", (d) => [randn(d, [3, 2, 16], "float16"), randn(d, [3, 2, 16], "float16"), ints(d, [0, 0, 1]), ints(d, [0, 1, 2]),
    [randn(d, [4, 4, 2, 16], "float16"), randn(d, [4, 4, 2, 16], "float16")], ints(d, [0, 1, 2, 3]), ints(d, [0, 2, 4]), ints(d, [2, 1]), "NHD", {}],
    (_, ...a) => fi.appendPagedKvCache(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])],
  ["segmentPackbits", (d) => [fi.zeros([20], { dtype: "uint8", device: d }), ints(d, [0, 9, 20]), "big"], (_, ...a) => fi.segmentPackbits(a[0], a[1], a[2])],
  ["mergeState", (d) => [randn(d, [3, 4, 16], "float16"), randn(d, [3, 4]), randn(d, [3, 4, 16], "float16"), randn(d, [3, 4])],
    (_, ...a) => fi.mergeState(a[0], a[1], a[2], a[3])],
  ["mergeStates", (d) => [randn(d, [3, 2, 4, 16], "float16"), randn(d, [3, 2, 4])], (_, ...a) => fi.mergeStates(a[0], a[1])],
  ["softmax", (d) => [randn(d, [2, 11]), { temperature: 0.7 }], (_, ...a) => fi.softmax(a[0], a[1])],
  ["topKRenormProbs", (d) => [probs(d, 2, 11), 3], (_, ...a) => fi.topKRenormProbs(a[0], a[1])],
  ["topKMaskLogits", (d) => [randn(d, [2, 11]), 4], (_, ...a) => fi.topKMaskLogits(a[0], a[1])],
  ["topKTopPSamplingFromProbs", (d) => [probs(d, 2, 11), 3, 0.9, { seed: 1, filterApplyOrder: "joint" }],
    (_, ...a) => fi.topKTopPSamplingFromProbs(a[0], a[1], a[2], a[3])],
  ["minPSamplingFromProbs", (d) => [probs(d, 2, 11), 0.2, { seed: 2, offset: 5, indices: new Int32Array([0, 1, 1]) }],
    (_, ...a) => fi.minPSamplingFromProbs(a[0], a[1], a[2])],
  ["chainSpeculativeSampling", (d) => [probs(d, 4, 7).view([2, 2, 7]), ints(d, [1, 2, 3, 4]).view([2, 2]), probs(d, 6, 7).view([2, 3, 7]), { seed: 3 }],
    (_, ...a) => fi.chainSpeculativeSampling(a[0], a[1], a[2], a[3])],
  ["singleDecodeWithKVCache", (d) => [randn(d, [4, 16], "float16"), randn(d, [9, 2, 16], "float16"), randn(d, [9, 2, 16], "float16"), { returnLse: true }],
    (_, ...a) => fi.singleDecodeWithKVCache(a[0], a[1], a[2], a[3])],
  ["singlePrefillWithKVCache", (d) => [randn(d, [5, 4, 16], "bfloat16"), randn(d, [9, 2, 16], "bfloat16"), randn(d, [9, 2, 16], "bfloat16"), { causal: true }],
    (_, ...a) => fi.singlePrefillWithKVCache(a[0], a[1], a[2], a[3])],
  ["BatchDecodeWithPagedKVCacheWrapper", (d) => [{ indptr: [0, 2, 3, 5], indices: [0, 1, 2, 3, 4], lastPageLen: [4, 1, 3], numQoHeads: 4, numKvHeads: 2,
    headDim: 16, pageSize: 4, qDataType: "float16", windowLeft: 6 }, randn(d, [3, 4, 16], "float16"), randn(d, [5, 2, 4, 2, 16], "float16"), { returnLse: true }],
    (d, params, q, kv, opts) => {
      using w = new fi.BatchDecodeWithPagedKVCacheWrapper(workspace(d), "NHD");
      w.plan(params);
      w.run(q, kv, opts);
    }],
  ["BatchPrefillWithRaggedKVCacheWrapper", (d) => [{ qoIndptr: [0, 3, 7], kvIndptr: [0, 5, 9], numQoHeads: 4, numKvHeads: 2, headDimQk: 16, causal: true,
    qDataType: "bfloat16" }, randn(d, [7, 4, 16], "bfloat16"), randn(d, [9, 2, 16], "bfloat16"), randn(d, [9, 2, 16], "bfloat16"), { out: randn(d, [7, 4, 16], "bfloat16") }],
    (d, params, q, k, v, opts) => {
      using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(workspace(d), "NHD");
      w.plan(params);
      w.run(q, k, v, opts);
    }],
  ["BatchMLAPagedAttentionWrapper", (d) => [{ qoIndptr: [0, 1, 2], kvIndptr: [0, 2, 5], kvIndices: [0, 1, 2, 3, 4], kvLen: [5, 9], numHeads: 16, headDimCkv: 512,
    headDimKpe: 64, pageSize: 4, smScale: 0.1, qDataType: "float16", kvDataType: "float16" }, randn(d, [2, 16, 512], "float16"), randn(d, [2, 16, 64], "float16"),
    randn(d, [5, 4, 512], "float16"), randn(d, [5, 4, 64], "float16")],
    (d, params, qNope, qPe, ckv, kpe) => {
      using w = new fi.BatchMLAPagedAttentionWrapper(workspace(d));
      w.plan(params);
      w.run(qNope, qPe, ckv, kpe);
    }],
  ["BlockSparseAttentionWrapper", (d) => [{ indptr: [0, 1, 2], indices: [0, 1], M: 8, N: 8, R: 4, C: 4, numQoHeads: 4, numKvHeads: 2, headDim: 16, qDataType: "float16" },
    randn(d, [8, 4, 16], "float16"), randn(d, [8, 2, 16], "float16"), randn(d, [8, 2, 16], "float16")],
    (d, params, q, k, v) => {
      using w = new fi.BlockSparseAttentionWrapper(workspace(d));
      w.plan(params);
      w.run(q, k, v);
    }],
  ["PODWithPagedKVCacheWrapper", (d) => [{ indptr: [0, 1, 3], indices: [2, 3, 4], lastPageLen: [4, 2], numQoHeads: 4, numKvHeads: 2, headDim: 16, pageSize: 4,
    qDataType: "float16", prefillQoLen: 3, prefillPages: { indices: [0, 1], lastPageLen: 3 } }, randn(d, [3, 4, 16], "float16"), randn(d, [2, 4, 16], "float16"),
    randn(d, [5, 2, 4, 2, 16], "float16"), { returnLse: true }],
    (d, params, qPrefill, qDecode, cache, opts) => {
      using w = new fi.PODWithPagedKVCacheWrapper(workspace(d));
      w.plan(params);
      w.run(qPrefill, null, null, qDecode, cache, opts);
    }],
  ["MultiLevelCascadeAttentionWrapper", (d) => [{ qoIndptrArr: [[0, 3], [0, 1, 3]], pagedKvIndptrArr: [[0, 2], [0, 1, 2]], pagedKvIndicesArr: [[0, 1], [2, 3]],
    pagedKvLastPageLenArr: [[4], [2, 3]], numQoHeads: 4, numKvHeads: 2, headDim: 16, pageSize: 4, qDataType: "float16" }, randn(d, [3, 4, 16], "float16"),
    randn(d, [4, 2, 4, 2, 16], "float16"), {}],
    (d, params, q, cache, opts) => {
      using w = new fi.MultiLevelCascadeAttentionWrapper(2, workspace(d), "NHD");
      w.plan(params);
      w.run(q, cache, opts);
    }],
  ["SegmentGEMMWrapper", (d) => [randn(d, [5, 8]), randn(d, [2, 6, 8]), 2, true, { segLens: [2, 3], weightIndices: [1, 0] }],
    (_, ...a) => new fi.SegmentGEMMWrapper().run(a[0], a[1], a[2], a[3], a[4])],
  ["VariableBlockSparseAttentionWrapper", (d) => [{ blockMaskMap: [true, false, true, true], blockRowSz: [3, 2], blockColSz: [4, 3], numQoHeads: 2, numKvHeads: 1,
    headDim: 16, qDataType: "float16" }, randn(d, [2, 5, 16], "float16"), randn(d, [1, 7, 16], "float16"), randn(d, [1, 7, 16], "float16")],
    (d, params, q, k, v) => {
      using w = new fi.VariableBlockSparseAttentionWrapper(workspace(d));
      w.plan(params);
      w.run(q, k, v);
    }],
  ["getBatchIndicesPositions", (d) => [ints(d, [0, 2, 5]), ints(d, [4, 3]), 5], (_, ...a) => fi.getBatchIndicesPositions(a[0], a[1], a[2])],
  ["mergeStateInPlace", (d) => [randn(d, [3, 4, 16], "float16"), randn(d, [3, 4]), randn(d, [3, 4, 16], "float16"), randn(d, [3, 4]), null],
    (_, ...a) => fi.mergeStateInPlace(a[0], a[1], a[2], a[3], a[4])],
  ["jit.attentionVariant", () => [{ name: "scaled", params: { scale: "float" }, logitsTransform: "return logits * params.scale;" }],
    (_, spec) => fi.jit.attentionVariant(spec)],
  ["applyLlama31Rope", (d) => [randn(d, [5, 4, 16], "bfloat16"), randn(d, [5, 2, 16], "bfloat16"), ints(d, [0, 2, 5]), ints(d, [0, 3]),
    { ropeScale: 8, ropeTheta: 5e5, lowFreqFactor: 1, highFreqFactor: 4, oldContextLen: 8192 }], (_, ...a) => fi.applyLlama31Rope(a[0], a[1], a[2], a[3], a[4])],
  // The shape stays fixed: a size from the pool (2^31) would be a valid request for gigabytes.
  ["normal / rand / manualSeed", () => [0.5, 2, { dtype: "float16", seed: 7 }, 123],
    (d, mean, std, opts, seed) => {
      fi.manualSeed(seed);
      fi.normal([3, 5], mean, std, { ...opts, device: d });
      fi.rand([3, 5], { ...opts, device: d });
    }],
  ["deviceProperties / memoryInfo", (d) => [d], (_, device) => {
    fi.deviceProperties(device);
    fi.memoryInfo(device);
  }],
  ["Tensor.select / unsqueeze / expand / reshape / to / clone", (d) => [1, 2, [3, 4, 6], [6, 4], { dtype: "bfloat16" }],
    (d, index, dim, expandShape, shape, toOpts) => {
      const t = randn(d, [4, 6]);
      t.select(0, index);
      t.unsqueeze(dim);
      t.unsqueeze(0).expand(expandShape);
      t.reshape(shape);
      t.to({ device: d, ...toOpts }).clone();
    }],
  ["gemm", (d) => [randn(d, [3, 8]), randn(d, [5, 8]), { transB: true, alpha: 0.5 }], (_, ...a) => fi.gemm(a[0], a[1], a[2])],
  ["gatherRows", (d) => [randn(d, [6, 8]), [0, 5, 2], {}], (_, ...a) => fi.gatherRows(a[0], a[1], a[2])],
  ["tensor", (d) => [new Float32Array(6), [2, 3], { dtype: "float16", device: d }], (_, ...a) => fi.tensor(a[0], a[1], a[2])],
  ["Tensor.view / slice / permute / copy_", (d) => [[3, 8], 1, 3, [1, 0], randn(d, [4, 6], "float16")],
    (d, shape, start, end, order, src) => {
      const t = randn(d, [4, 6]);
      t.view(shape);
      t.slice(0, start, end);
      t.permute(order);
      t.copy_(src);
    }],
];

/** A fresh pool of bad values (tensors among them are made on `d`). */
function badValues(d: fi.Device): unknown[] {
  const disposed = randn(d, [4, 8]);
  disposed.dispose();
  return [-1, 0, 1, 3, 2 ** 31, 2 ** 32 + 1, -(2 ** 31) - 1, 1e300, NaN, Infinity, -Infinity, 0.5, "8", "", null, true, false, [], [0], [-1], [1, 0],
    [0, 2 ** 32], [0.5, 1], new Int32Array(0), new Int32Array([0, -5]), new Float32Array([0, 1]), {}, 10n, Symbol("bad"), disposed, randn(d, []),
    randn(d, [0, 8]), randn(d, [3]), randn(d, [4, 8]).transpose(0, 1), randn(d, [4, 8], "float16"), randn(d, [2, 3, 4], "bfloat16"),
    fi.zeros([4, 8], { dtype: "int32", device: d }), fi.zeros([4, 8], { dtype: "uint8", device: d }), randn(d, [1, 8]).expand([4, 8]),
    ints(d, [0, 1, 2]), ints(d, [5, -1]), fi.full([2, 8], NaN, { device: d })];
}

/** A linear congruential generator: the fuzz is the same on every run. */
function generator(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
}

const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  x !== null && typeof x === "object" && !(x instanceof fi.Tensor) && !ArrayBuffer.isView(x) && !Array.isArray(x);

function describeValue(v: unknown): string {
  if (v instanceof fi.Tensor) return v.disposed ? "a disposed tensor" : `a ${v.dtype} tensor [${v.shape}]${v.isContiguous() ? "" : " (strided)"}`;
  if (Array.isArray(v)) return `[${v.map(String)}]`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name} [${Array.from(v as Int32Array)}]`;
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "symbol") return "a symbol";
  return isPlainObject(v) ? "{}" : String(v);
}

describe("bad input anywhere in the public API throws FlashInferError (mutation fuzz)", () => {
  testOnDevices("every template succeeds as written", (device) => {
    for (const [name, make, call] of TEMPLATES) {
      fi.scope(() => {
        try {
          call(device, ...make(device));
        } catch (e) {
          throw new Error(`template ${name}: ${(e as Error).message}`);
        }
      });
    }
  });

  testOnDevices("one argument or field replaced by a bad value: a FlashInferError or success, never another exception", (device) => {
    const random = generator(device === "cpu" ? 20261208 : 8121026);
    const bugs: string[] = [];
    for (let round = 0; round < (device === "cpu" ? 600 : 60); ++round) {
      for (const [name, make, call] of TEMPLATES) {
        fi.scope(() => {
          const args = make(device), pool = badValues(device);
          const value = pool[Math.floor(random() * pool.length)];
          // The replaced place: an argument, or a field or element inside plain objects and arrays
          // (parameter objects, page-table arrays, nested options), or a field no template gives.
          let holder: Record<string | number, unknown> = args as unknown as Record<number, unknown>;
          let key: string | number = Math.floor(random() * args.length), path = `argument ${key}`;
          for (;;) {
            const inner: unknown = holder[key];
            const nested = isPlainObject(inner) || (Array.isArray(inner) && inner.length > 0);
            if (!nested || random() < 0.3) break;
            const copy = (Array.isArray(inner) ? [...inner] : { ...inner }) as Record<string | number, unknown>;
            holder[key] = copy;
            holder = copy;
            const keys = Object.keys(copy);
            key = Array.isArray(inner) ? Math.floor(random() * inner.length)
              : random() < 0.9 ? keys[Math.floor(random() * keys.length)]! : ["out", "lse", "returnLse", "seed", "indices", "eps"][Math.floor(random() * 6)]!;
            path += Array.isArray(inner) ? `[${key}]` : `.${key}`;
          }
          holder[key] = value;
          const what = `${name}: ${path} = ${describeValue(value)}`;
          try {
            call(device, ...args);
          } catch (e) {
            if (!(e instanceof fi.FlashInferError)) bugs.push(`${what}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
          }
        });
      }
    }
    expect(bugs).toEqual([]);
  });
});

// Parallel generation over a shared prompt (fi.MultiLevelCascadeAttentionWrapper): 8 samples share
// a 256-token prompt (level 0) and each has 40 tokens of its own (level 1); one decode step reads
// the prompt once for all 8, instead of once per sample as a flat paged decode does. Both answers
// are compared.
//   bun examples/shared_prefix.ts
import * as fi from "../lib/index.ts";

const device = fi.defaultDevice();
const n = 8, prompt = 256, own = 40, P = 16, Hq = 8, Hkv = 2, D = 64;
const promptPages = prompt / P, ownPages = Math.ceil(own / P), lastLen = own - (ownPages - 1) * P;
using cache = fi.randn([promptPages + n * ownPages, 2, P, Hkv, D], { dtype: "float16", device, seed: 1 });
using q = fi.randn([n, Hq, D], { dtype: "float16", device, seed: 2 });
const shared = Array.from({ length: promptPages }, (_, i) => i);
const ownOf = (s: number) => Array.from({ length: ownPages }, (_, i) => promptPages + s * ownPages + i);
const seq = (count: number, step: number) => Array.from({ length: count + 1 }, (_, i) => i * step);
using ws = fi.empty([64 << 20], { dtype: "uint8", device });

using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, ws, "NHD");
cascade.plan({
  qoIndptrArr: [[0, n], seq(n, 1)],                        // level 0: all 8 rows share the prompt
  pagedKvIndptrArr: [[0, promptPages], seq(n, ownPages)],
  pagedKvIndicesArr: [shared, Array.from({ length: n }, (_, s) => ownOf(s)).flat()],
  pagedKvLastPageLenArr: [[P], new Array(n).fill(lastLen)],
  numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: "float16",
});
using viaCascade = cascade.run(q, cache) as fi.Tensor;
const a = viaCascade.toFloat32Array();

using ws2 = fi.empty([64 << 20], { dtype: "uint8", device });
using flat = new fi.BatchDecodeWithPagedKVCacheWrapper(ws2, "NHD");
flat.plan({ indptr: seq(n, promptPages + ownPages), indices: Array.from({ length: n }, (_, s) => [...shared, ...ownOf(s)]).flat(),
  lastPageLen: new Array(n).fill(lastLen), numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: "float16" });
using viaFlat = flat.run(q, cache) as fi.Tensor;
const b = viaFlat.toFloat32Array();
const maxDiff = a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);
console.log(`cascade vs flat paged decode over the same cache: max |difference| ${maxDiff.toExponential(2)} over ${a.length} values`);

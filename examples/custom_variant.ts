// A custom attention variant from TypeScript (fi.jit): sigmoid attention (no softmax) with two
// parameters, compiled on first use and cached; run through the batch prefill wrapper on the
// default device (a CUDA build with nvcc on a GPU, the host C++ compiler on cpu).
//   bun examples/custom_variant.ts
import * as fi from "../lib/index.ts";

const device = fi.defaultDevice();
const sigmoid = fi.jit.attentionVariant({
  name: "sigmoid_attention",
  params: { logitsScale: "float", sigmoidBias: "float" },
  logitsTransform: "return 1.0f / (1.0f + expf(-(logits * params.logitsScale + params.sigmoidBias)));",
  useSoftmax: false,
});

// Two requests: 5 and 3 query rows over 9 and 12 keys; 4 query heads sharing 2 kv heads.
const qoIndptr = [0, 5, 8], kvIndptr = [0, 9, 21];
using q = fi.randn([8, 4, 64], { dtype: "float16", device, seed: 1 });
using k = fi.randn([21, 2, 64], { dtype: "float16", device, seed: 2 });
using v = fi.randn([21, 2, 64], { dtype: "float16", device, seed: 3 });
using workspace = fi.empty([16 << 20], { dtype: "uint8", device });
using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", { variant: sigmoid });
const t0 = performance.now();
w.plan({ qoIndptr, kvIndptr, numQoHeads: 4, numKvHeads: 2, headDimQk: 64, causal: true, variantParams: { logitsScale: 1, sigmoidBias: -2 } });
console.log(`planned (compiled or loaded "${sigmoid.name}" for ${device}) in ${(performance.now() - t0).toFixed(0)} ms; cache: ${fi.jit.cacheDir()}`);
using out = w.run(q, k, v) as fi.Tensor;
const o = out.toFloat32Array();
console.log(`out [8, 4, 64]: first row, head 0: ${Array.from(o.subarray(0, 6), (x) => x.toFixed(3)).join(", ")} ...`);
console.log(`finite: ${o.every(Number.isFinite)}`);

// The decode split cases of bench/decode.bench.ts (batch 1 x 32768 and 16 x 8192, 32/8 heads, d 128,
// bf16, page 16), planned once and run six times, for a per-kernel timing under Nsight Compute:
// the decode kernel and the merge separately, for this tree or another (a baseline built from a
// git archive, as scripts/gpu-compare.sh makes). Prints each plan's schedule.
//   ncu --print-summary per-kernel --metrics gpu__time_duration.sum bun scripts/decode-probe.ts [tree root]
const root = process.argv[2] ?? `${import.meta.dir}/..`;
const fi = await import(`${root}/lib/index.ts`);
const { scatteredPageTable } = await import(`${root}/bench/harness.ts`);
const device = "cuda:0";
using ws = fi.empty([256 << 20], { dtype: "uint8", device });
for (const [batch, kvLen] of [[1, 32768], [16, 8192]] as const) {
  const t = scatteredPageTable(batch, kvLen, 16);
  using cache = fi.randn([t.pages, 2, 16, 8, 128], { dtype: "bfloat16", device, seed: 1 });
  using q = fi.randn([batch, 32, 128], { dtype: "bfloat16", device, seed: 2 });
  using out = fi.empty(q.shape, { dtype: "bfloat16", device });
  const w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
  w.plan({ ...t, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, qDataType: "bfloat16" });
  const { kernel, numWork, chunkTokens } = w.planInfo;
  console.log(`batch ${batch} x ${kvLen}: kernel ${kernel}, ${numWork} work items, chunk ${chunkTokens}`);
  for (let i = 0; i < 6; ++i) w.run(q, cache, { out });
  fi.synchronize(device);
  w.dispose();
}

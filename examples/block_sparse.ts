// Block-sparse attention over a BSR pattern (fi.BlockSparseAttentionWrapper): 4 block rows of 16
// query rows, 6 block columns of 16 keys, each block row attending to a few block columns.
//   bun examples/block_sparse.ts
import * as fi from "../lib/index.ts";

const device = fi.defaultDevice();
const R = 16, C = 16, M = 4 * R, N = 6 * C;
// Block row i attends to block columns indices[indptr[i] .. indptr[i + 1]).
const indptr = [0, 2, 3, 5, 5], indices = [0, 3, 1, 2, 5];
using q = fi.randn([M, 8, 128], { dtype: "bfloat16", device, seed: 1 });
using k = fi.randn([N, 2, 128], { dtype: "bfloat16", device, seed: 2 });
using v = fi.randn([N, 2, 128], { dtype: "bfloat16", device, seed: 3 });
using workspace = fi.empty([32 << 20], { dtype: "uint8", device });
using bsr = new fi.BlockSparseAttentionWrapper(workspace);
bsr.plan({ indptr, indices, M, N, R, C, numQoHeads: 8, numKvHeads: 2, headDim: 128, qDataType: "bfloat16" });
const { out, lse } = bsr.run(q, k, v, { returnLse: true }) as { out: fi.Tensor; lse: fi.Tensor };
const l = lse.toFloat32Array();
// Block row 3 (rows 48..63) has no blocks: zeros and lse = -Infinity.
console.log(`plan: ${JSON.stringify(bsr.planInfo)}`);
console.log(`lse of row 0, head 0: ${l[0]!.toFixed(3)}; of row 50 (an empty block row): ${l[50 * 8]}`);
console.log(`out [${out.shape}] ${out.dtype} on ${out.device}`);
out.dispose();
lse.dispose();

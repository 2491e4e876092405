// MLA, DeepSeek's multi-head latent attention (FlashInfer's BatchMLAPagedAttentionWrapper): the
// cache keeps one compressed latent per token (ckv, head dim 512) and its RoPE part (kpe, 64),
// shared by every query head; queries come split the same way (qNope against ckv, qPe against
// kpe). With the weights absorbed:
//   logits = (qNope . ckv + qPe . kpe) * smScale,  out = softmax(logits) @ ckv  (head dim 512)
// It runs on the attention engine as a plan of one KV head (the latent) with head dims
// (512 + 64, 512): the same plan, scheduler, masks and merge; the engine reads the rope parts of
// q and k from their own tensors (fi_prefill_run_args.q_rope / k_rope), so nothing is copied.
// Decode (one query row per request) and prefill / speculative rows (causal) share the plan.
// CUDA, for headDimCkv 512 and headDimKpe 64: native/src/attention/mla.cu, the mma.sync kernel
// (backend "fa2": sm_80+, a latent of q's dtype or fp8 with kScale / vScale) and the Hopper wgmma
// one (mla_sm90.cuh, backend "fa3": a latent of q's dtype; auto's choice wherever it serves);
// other dims plan on the CPU backend only.
import type { DType } from "./dtype.ts";
import { FlashInferError, argCheck } from "./errors.ts";
import { hostInt32 } from "./attention.ts";
import { AttentionWrapperBase, type PrefillBackend, type PrefillRunOptions, argNames } from "./prefill.ts";
import { Tensor } from "./tensor.ts";

export interface MLAPlanParams {
  /** [batch + 1] query rows of each request. */
  qoIndptr: Int32Array | number[] | Tensor;
  /** FlashInfer's page table of the latent cache: pages of each request, and each request's length in tokens. */
  kvIndptr: Int32Array | number[] | Tensor;
  kvIndices: Int32Array | number[] | Tensor;
  kvLen: Int32Array | number[] | Tensor;
  numHeads: number;
  /** 512 and 64 in DeepSeek V2/V3. */
  headDimCkv: number;
  headDimKpe: number;
  pageSize: number;
  /** Key j visible to row i only when j <= i + kvLen - qoLen. Default false. */
  causal?: boolean;
  /** Default 1 / sqrt(headDimCkv + headDimKpe) (pass the model's: DeepSeek scales by the pre-absorption head dim). */
  smScale?: number;
  /** Default "bfloat16". */
  qDataType?: DType;
  /** Default qDataType. */
  kvDataType?: DType;
}

const MLA_NAMES = argNames({ kv_indptr: "kvIndptr", kv_indices: "kvIndices", kv_last_page_len: "kvLen", num_qo_heads: "numHeads",
  head_dim_qk: "headDimCkv + headDimKpe", head_dim_vo: "headDimCkv", q: "qNope", k: "ckvCache", v: "ckvCache", q_rope: "qPe", k_rope: "kpeCache" });

export class BatchMLAPagedAttentionWrapper extends AttentionWrapperBase {
  constructor(workspace: Tensor, opts: { backend?: PrefillBackend } = {}) {
    super(workspace, "NHD", opts, MLA_NAMES);
  }

  plan(params: MLAPlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const { numHeads, headDimCkv, headDimKpe, pageSize } = params;
    for (const [name, x] of [["numHeads", numHeads], ["headDimCkv", headDimCkv], ["headDimKpe", headDimKpe], ["pageSize", pageSize]] as const)
      argCheck(Number.isInteger(x) && x >= 1, () => `${name}: expected a positive integer, got ${String(x)}`);
    if (this.device !== "cpu" && (headDimCkv !== 512 || headDimKpe !== 64))
      throw new FlashInferError("unsupported", `headDimCkv, headDimKpe: the CUDA MLA kernel is built for 512 and 64, got ${headDimCkv} and ${headDimKpe} (the CPU backend takes any)`);
    const kvIndptr = hostInt32(params.kvIndptr, "kvIndptr");
    const kvLen = hostInt32(params.kvLen, "kvLen");
    const batch = kvIndptr.length - 1;
    argCheck(kvLen.length === batch, () => `kvLen: expected ${batch} entries (one per request), got ${kvLen.length}`);
    // The engine's last-page lengths, from each request's length and page count.
    const lastPageLen = new Int32Array(batch);
    for (let r = 0; r < batch; ++r) {
      const pages = kvIndptr[r + 1]! - kvIndptr[r]!, len = kvLen[r]!;
      argCheck(Number.isInteger(len) && len >= 0 && Math.ceil(len / pageSize) === pages,
        () => `kvLen[${r}]: ${len} tokens need ${Math.ceil(len / pageSize)} pages of ${pageSize}, but kvIndptr gives request ${r} ${pages}`);
      lastPageLen[r] = len === 0 ? 0 : len - (pages - 1) * pageSize;
    }
    const qDataType = params.qDataType ?? "bfloat16";
    this.planPaged({ qoIndptr: params.qoIndptr, pagedKvIndptr: kvIndptr, pagedKvIndices: params.kvIndices, pagedKvLastPageLen: lastPageLen, pageSize,
      numQoHeads: numHeads, numKvHeads: 1, headDimQk: headDimCkv + headDimKpe, headDimVo: headDimCkv, causal: params.causal ?? false,
      smScale: params.smScale, qDataType, kvDataType: params.kvDataType ?? qDataType });
  }

  /**
   * qNope [totalQo, numHeads, headDimCkv] and qPe [totalQo, numHeads, headDimKpe] over ckvCache
   * [pages, pageSize, headDimCkv] and kpeCache [pages, pageSize, headDimKpe] (any strides, last
   * axis contiguous: slices of one [pages, pageSize, 576] buffer work as they are). Returns out
   * [totalQo, numHeads, headDimCkv] in q's dtype, or { out, lse } with returnLse.
   */
  run(qNope: Tensor, qPe: Tensor, ckvCache: Tensor, kpeCache: Tensor, opts: PrefillRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    if (!this.planInfo) throw new FlashInferError("invalid_argument", "run: call plan() first");
    for (const [t, name] of [[qNope, "qNope"], [qPe, "qPe"], [ckvCache, "ckvCache"], [kpeCache, "kpeCache"]] as const) {
      argCheck(t instanceof Tensor && !t.disposed, () => `${name}: expected a live Tensor`);
      argCheck(t.ndim === 3, () => `${name}: expected 3 dimensions, got [${t.shape}]`);
    }
    // The latent cache as the engine's [pages, pageSize, 1 kv head, dim] views: k and v are both ckv.
    const k = ckvCache.unsqueeze(2), v = ckvCache.unsqueeze(2);
    using kRope = kpeCache.unsqueeze(2);
    return this.runNative(qNope, k, v, opts, { q: qPe, k: kRope });
  }
}

// Decode attention over a paged KV cache: fi.singleDecodeWithKVCache and
// fi.BatchDecodeWithPagedKVCacheWrapper (FlashInfer's names and semantics). One engine: a decode
// plan is a paged prefill plan with one query row per request (lib/prefill.ts's
// AttentionWrapperBase, fi_prefill_plan / fi_prefill_run); the plan picks the decode kernels for
// it on CUDA (planInfo.kernel "decode" or "decode_tc") and the CPU backend on the CPU.
import { type AttentionVariantOptions, GROW_WORKSPACE, hostInt32 } from "./attention.ts";
import type { Device } from "./device.ts";
import type { DType } from "./dtype.ts";
import { argCheck, checkOptions } from "./errors.ts";
import type { AttentionVariant } from "./jit.ts";
import { type KVLayout, pagedKvViews, singleRequestKv } from "./kv_cache.ts";
import { AttentionWrapperBase, type PrefillBackend, type PrefillRunOptions, type SplitOptions, argNames, checkUseCudaGraph } from "./prefill.ts";
import { Tensor, empty } from "./tensor.ts";

export type { KVLayout };

export type { PosEncodingMode } from "./attention.ts";

/**
 * Options shared by single and batch decode. ROPE_LLAMA rotates q at position kvLen - 1 and each
 * key at its own position; the window keeps keys at positions >= kvLen - 1 - windowLeft.
 */
export interface DecodeOptions extends AttentionVariantOptions {}

export interface DecodeRunOptions extends PrefillRunOptions {}

export interface SingleDecodeOptions extends DecodeOptions, Omit<DecodeRunOptions, "out" | "lse"> {
  /** Layout of k and v: "NHD" [kvLen, numKvHeads, headDim] (default) or "HND" [numKvHeads, kvLen, headDim]. */
  kvLayout?: KVLayout;
}

export interface DecodePlanParams extends DecodeOptions, SplitOptions {
  /** FlashInfer's CSR page table: Int32Array, number[] or an int32 Tensor (any device). */
  indptr: Int32Array | number[] | Tensor;
  indices: Int32Array | number[] | Tensor;
  lastPageLen: Int32Array | number[] | Tensor;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  /** Default "float16", as FlashInfer. */
  qDataType?: DType;
  /** Default qDataType. */
  kvDataType?: DType;
  /** The parameters of the wrapper's variant (fi.jit), by name. */
  variantParams?: Record<string, number | Tensor>;
}

export interface BatchDecodeWrapperOptions {
  /** Keep launch shapes fixed across plans of one batch size so a captured CUDA graph replays run() (CUDA only; the decode kernels). */
  useCudaGraph?: boolean;
  /**
   * Use the tensor-core kernel for every group size (16-bit caches, head dim <= 128, no
   * ROPE_LLAMA). Without it, groups of 4 or more already use tensor cores and smaller groups the
   * CUDA-core kernel.
   */
  useTensorCores?: boolean;
  /**
   * Which kernels run the plans (as the prefill wrappers' option; default "auto"): "auto" and
   * "fa2" the decode kernels on CUDA (the mma.sync prefill kernel for what they do not serve),
   * "fa3" the Hopper prefill kernel, "cpu" the CPU backend. planInfo.kernel says which one a plan got.
   */
  backend?: PrefillBackend;
  /**
   * A generated attention variant (fi.jit.attentionVariant); plan() takes its parameters as
   * variantParams. The plan's kernel is built with its hooks: on CUDA the decode kernels
   * (CUDA-core and tensor-core, chosen as without a variant), on the CPU the CPU backend.
   */
  variant?: AttentionVariant;
}

// Native argument names as the decode API calls them.
const DECODE_NAMES = argNames({
  kv_indptr: "indptr", kv_indices: "indices", kv_last_page_len: "lastPageLen", head_dim_qk: "headDim", head_dim_vo: "headDim",
  fixed_grid: "useCudaGraph", use_tensor_cores: "useTensorCores",
});

/** The options checked before the engine takes the workspace (a refused wrapper keeps nothing). */
function checkDecodeOptions(workspace: Tensor, opts: BatchDecodeWrapperOptions): BatchDecodeWrapperOptions {
  checkOptions(opts);
  checkUseCudaGraph(workspace, opts);
  argCheck(typeof (opts.useTensorCores ?? false) === "boolean", () => `useTensorCores: expected a boolean, got ${String(opts.useTensorCores)}`);
  return opts;
}

/** FlashInfer's BatchDecodeWithPagedKVCacheWrapper: plan once per step, run once per layer. */
export class BatchDecodeWithPagedKVCacheWrapper extends AttentionWrapperBase {
  readonly useCudaGraph: boolean;
  readonly useTensorCores: boolean;

  constructor(workspace: Tensor, kvLayout: KVLayout = "NHD", opts: BatchDecodeWrapperOptions & { [GROW_WORKSPACE]?: true } = {}) {
    super(workspace, kvLayout, checkDecodeOptions(workspace, opts), DECODE_NAMES);
    this.useCudaGraph = opts.useCudaGraph ?? false;
    this.useTensorCores = opts.useTensorCores ?? false;
  }

  /** Validates the page table and schedules the batch (one query row per request); one plan serves every layer. */
  plan(params: DecodePlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const indptr = hostInt32(params.indptr, "indptr");
    const batch = indptr.length - 1;
    argCheck(batch >= 1, "indptr: expected batch + 1 >= 2 entries");
    const { posEncodingMode, logitsSoftCap, windowLeft, smScale, ropeScale, ropeTheta, fixedSplitSize, disableSplitKv } = params;
    const plan = () => this.planPaged({
      posEncodingMode, logitsSoftCap, windowLeft, smScale, ropeScale, ropeTheta, fixedSplitSize, disableSplitKv,
      qoIndptr: oneRowPerRequest(batch),
      pagedKvIndptr: indptr,
      pagedKvIndices: params.indices,
      pagedKvLastPageLen: params.lastPageLen,
      numQoHeads: params.numQoHeads,
      numKvHeads: params.numKvHeads,
      headDimQk: params.headDim,
      pageSize: params.pageSize,
      qDataType: params.qDataType,
      kvDataType: params.kvDataType,
      variantParams: params.variantParams,
    }, { fixedGrid: this.useCudaGraph, useTensorCores: this.useTensorCores });
    if (this.useCudaGraph) this.planKeepingBatch(batch, "indptr", plan);
    else plan();
  }

  /**
   * Attention of q [batch, numQoHeads, headDim] over the planned paged KV cache (one Tensor
   * [pages, 2, pageSize, numKvHeads, headDim] or a pair [k, v]; "HND" swaps pageSize and
   * numKvHeads). Returns out (q's dtype) or { out, lse } with returnLse.
   */
  run(q: Tensor, pagedKvCache: Tensor | [Tensor, Tensor], opts: DecodeRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    return this.runNative(q, ...pagedKvViews(pagedKvCache, this.kvLayout), opts);
  }
}

// qo_indptr of a decode plan, 0..batch (one query row per request), kept per batch size: plan()
// runs every step, and the native plan only reads it.
const qoIndptrs = new Map<number, Int32Array>();
function oneRowPerRequest(batch: number): Int32Array {
  let a = qoIndptrs.get(batch);
  if (!a) {
    a = new Int32Array(batch + 1);
    for (let i = 0; i <= batch; ++i) a[i] = i;
    if (qoIndptrs.size < 64) qoIndptrs.set(batch, a);
  }
  return a;
}

// One wrapper and workspace per device for single-request decode.
const singleWrappers = new Map<Device, BatchDecodeWithPagedKVCacheWrapper>();
const SINGLE_WORKSPACE_BYTES = 8 << 20; // grows when a plan needs more

/**
 * Decode attention of one request: q [numQoHeads, headDim] over k, v ([kvLen, numKvHeads,
 * headDim] for "NHD", [numKvHeads, kvLen, headDim] for "HND"). Returns the output (q's dtype)
 * or { out, lse } with returnLse (lse: natural-log log-sum-exp, float32 [numQoHeads]). kvLen 0
 * gives out 0 and lse -inf.
 */
export function singleDecodeWithKVCache(q: Tensor, k: Tensor, v: Tensor, opts: SingleDecodeOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
  const { layout, kvLen, numKvHeads } = singleRequestKv(q, k, v, opts, ["numQoHeads", "headDim"]);
  argCheck(k.shape.every((n, d) => n === v.shape[d]), () => `v: shape [${v.shape}] must equal k's [${k.shape}]`);
  const [numQoHeads, headDim] = q.shape as [number, number];
  argCheck(k.shape[2] === headDim, () => `k: head dim ${k.shape[2]} differs from q's ${headDim}`);
  argCheck(numKvHeads >= 1 && numQoHeads % numKvHeads === 0, () => `q: numQoHeads (${numQoHeads}) is not a multiple of numKvHeads (${numKvHeads})`);
  let wrapper = singleWrappers.get(q.device);
  if (!wrapper) {
    const workspace = empty([SINGLE_WORKSPACE_BYTES], { dtype: "uint8", device: q.device });
    try {
      wrapper = new BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", { [GROW_WORKSPACE]: true });
    } finally {
      workspace.dispose(); // the wrapper holds its own view
    }
    singleWrappers.set(q.device, wrapper);
  }
  // The sequence as one page of kvLen keys, or (kvLen 0) as no page at all: the engine checks an
  // empty request as any other and gives it out 0, lse -inf.
  const pages = kvLen === 0 ? 0 : 1;
  const { kvLayout: _, returnLse, kScale, vScale, ...attention } = opts;
  wrapper.plan({
    ...attention, indptr: [0, pages], indices: pages ? [0] : [], lastPageLen: [kvLen], numQoHeads, numKvHeads, headDim, pageSize: Math.max(kvLen, 1),
    qDataType: q.dtype, kvDataType: k.dtype,
  });
  // [pages, pageSize, numKvHeads, headDim] views: [1, kvLen, ...], or [0, 1, ...] for kvLen 0.
  const asPage = (t: Tensor) => {
    const nhd = layout === "NHD" ? t.slice(0) : t.transpose(0, 1);
    try {
      return nhd.unsqueeze(pages === 1 ? 0 : 1);
    } finally {
      nhd.dispose();
    }
  };
  using q3 = q.unsqueeze(0);
  using k4 = asPage(k);
  using v4 = asPage(v);
  const result = wrapper.run(q3, [k4, v4], { returnLse, kScale, vScale });
  const first = (t: Tensor) => {
    try {
      return t.select(0, 0);
    } finally {
      t.dispose();
    }
  };
  return result instanceof Tensor ? first(result) : { out: first(result.out), lse: first(result.lse) };
}

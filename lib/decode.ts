// Decode attention over a paged KV cache: fi.singleDecodeWithKVCache and
// fi.BatchDecodeWithPagedKVCacheWrapper (FlashInfer's names and semantics).
import {
  type AttentionVariantOptions,
  GROW_WORKSPACE,
  POS_ENCODING_ALIBI,
  PlanBuffers,
  type ResolvedVariant,
  checkScale,
  hostInt32,
  resolveVariant,
  runOutputs,
} from "./attention.ts";
import { type Device, deviceIndex } from "./device.ts";
import { type DType, checkDType, dtypeCode } from "./dtype.ts";
import { FlashInferError, argCheck } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import {
  type DecodePlanInfo,
  newDecodePlanInfo,
  readDecodePlanInfo,
  writeDecodePlanArgs,
  writeDecodeRunArgs,
} from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";
import { type KVLayout, pagedKvViews } from "./kv_cache.ts";
import { AttentionVariant, type PlannedVariant, disposeVariantParams, keepVariantParams, planVariant } from "./jit.ts";
import { runDecodeVariant } from "./ffi/variant.ts";
import { Tensor, empty, full } from "./tensor.ts";

export type { KVLayout };

export type { PosEncodingMode } from "./attention.ts";

/**
 * Options shared by single and batch decode. ROPE_LLAMA rotates q at position kvLen - 1 and each
 * key at its own position; the window keeps keys at positions >= kvLen - 1 - windowLeft.
 */
export interface DecodeOptions extends AttentionVariantOptions {}

export interface DecodeRunOptions {
  out?: Tensor;
  lse?: Tensor;
  returnLse?: boolean;
  /** Dequantization scales of an fp8 KV cache (default 1): logits use k * kScale, output v * vScale. */
  kScale?: number;
  vScale?: number;
}

export interface SingleDecodeOptions extends DecodeOptions, Omit<DecodeRunOptions, "out" | "lse"> {
  /** Layout of k and v: "NHD" [kvLen, numKvHeads, headDim] (default) or "HND" [numKvHeads, kvLen, headDim]. */
  kvLayout?: KVLayout;
}

export interface DecodePlanParams extends DecodeOptions {
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
  /** Keep launch shapes fixed across plans of one batch size so a captured CUDA graph replays run(). */
  useCudaGraph?: boolean;
  /**
   * Use the tensor-core kernel for every group size (16-bit caches, head dim <= 128). Without it,
   * groups of 4 or more already use tensor cores and smaller groups the CUDA-core kernel.
   */
  useTensorCores?: boolean;
  /**
   * A generated attention variant (fi.jit.attentionVariant); plan() takes its parameters as
   * variantParams. The decode engine is built with its hooks: on CUDA the decode kernels
   * (CUDA-core and tensor-core, chosen as without a variant), on the CPU the CPU backend.
   */
  variant?: AttentionVariant;
}

/** FlashInfer's BatchDecodeWithPagedKVCacheWrapper: plan once per step, run once per layer. */
export class BatchDecodeWithPagedKVCacheWrapper {
  readonly kvLayout: KVLayout;
  readonly device: Device;
  readonly useCudaGraph: boolean;
  readonly useTensorCores: boolean;
  #buffers: PlanBuffers;
  #plan: DecodePlanInfo | null = null;
  #options: ResolvedVariant | null = null;
  #graphBatch = 0;
  // With a variant: the variant, and its library and parameters for the current plan.
  #variant: AttentionVariant | null = null;
  #variantParams: PlannedVariant | null = null;

  constructor(workspace: Tensor, kvLayout: KVLayout = "NHD", opts: BatchDecodeWrapperOptions & { [GROW_WORKSPACE]?: true } = {}) {
    argCheck(kvLayout === "NHD" || kvLayout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(kvLayout)}`);
    this.#buffers = new PlanBuffers(workspace, opts[GROW_WORKSPACE] === true);
    this.kvLayout = kvLayout;
    this.device = workspace.device;
    this.useCudaGraph = opts.useCudaGraph ?? false;
    this.useTensorCores = opts.useTensorCores ?? false;
    argCheck(!this.useCudaGraph || this.device !== "cpu", "useCudaGraph: needs a CUDA workspace");
    if (opts.variant !== undefined) {
      argCheck(opts.variant instanceof AttentionVariant, "variant: expected an AttentionVariant from fi.jit.attentionVariant");
      argCheck(!this.useCudaGraph, "useCudaGraph: not offered with a variant (its parameters would be captured with the graph)");
      this.#variant = opts.variant;
    }
  }

  /** Validates the page table and schedules the batch; one plan serves every layer. */
  plan(params: DecodePlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const { numQoHeads, numKvHeads, headDim, pageSize } = params;
    for (const [name, x] of [["numQoHeads", numQoHeads], ["numKvHeads", numKvHeads], ["headDim", headDim], ["pageSize", pageSize]] as const)
      argCheck(Number.isInteger(x) && x >= 1, () => `${name}: expected a positive integer, got ${String(x)}`);
    argCheck(numQoHeads % numKvHeads === 0, () => `numQoHeads: ${numQoHeads} is not a multiple of numKvHeads (${numKvHeads})`);
    const qDataType = checkDType(params.qDataType ?? "float16", "qDataType");
    const kvDataType = checkDType(params.kvDataType ?? qDataType, "kvDataType");
    const options = resolveVariant(params, headDim);
    if (!this.#variant) argCheck(params.variantParams === undefined, "variantParams: this wrapper has no variant");
    const indptr = hostInt32(params.indptr, "indptr");
    const indices = hostInt32(params.indices, "indices");
    const lastPageLen = hostInt32(params.lastPageLen, "lastPageLen");
    const batch = indptr.length - 1;
    argCheck(batch >= 1, "indptr: expected batch + 1 >= 2 entries");
    argCheck(lastPageLen.length === batch, () => `lastPageLen: expected ${batch} entries (one per request), got ${lastPageLen.length}`);
    argCheck(indptr[batch]! <= indices.length, () => `indices: indptr[${batch}] = ${indptr[batch]} exceeds its ${indices.length} entries`);
    if (this.useCudaGraph) {
      argCheck(this.#graphBatch === 0 || this.#graphBatch === batch, () =>
        `indptr: a CUDA-graph wrapper keeps its batch size (${this.#graphBatch}); got ${batch}. Make a new wrapper for another batch size`);
    }

    // The variant's library and parameters first: a compile error leaves the current plan as it was.
    const variantParams = this.#variant &&
      planVariant(this.#variant, this.device, { headDimQk: headDim, headDimVo: headDim, qDataType, kvDataType },
        { logitsSoftCap: options.logitsSoftCap, alibi: options.posEncodingMode === POS_ENCODING_ALIBI }, params.variantParams);
    try {
      this.#planNative(params, batch, indptr, indices, lastPageLen, qDataType, kvDataType);
    } catch (e) {
      disposeVariantParams(variantParams);
      throw e;
    }
    this.#options = options;
    disposeVariantParams(this.#variantParams);
    keepVariantParams(variantParams);
    this.#variantParams = variantParams;
    if (this.useCudaGraph) this.#graphBatch = batch;
  }

  #planNative(params: DecodePlanParams, batch: number, indptr: Int32Array, indices: Int32Array, lastPageLen: Int32Array, qDataType: DType,
    kvDataType: DType): void {
    const { numQoHeads, numKvHeads, headDim, pageSize } = params;
    const [indptrAt, indicesAt, lastPageLenAt] = this.#buffers.addresses([indptr, indices, lastPageLen]);
    const infoBytes = newDecodePlanInfo();
    const args = writeDecodePlanArgs({
      indptr: indptrAt!,
      indices: indicesAt!,
      lastPageLen: lastPageLenAt!,
      batchSize: batch,
      numQoHeads,
      numKvHeads,
      headDim,
      pageSize,
      qDtype: dtypeCode(qDataType),
      kvDtype: dtypeCode(kvDataType),
      device: deviceIndex(this.device),
      fixedGrid: this.useCudaGraph,
      useTensorCores: this.useTensorCores,
    });
    const status = this.#buffers.plan(
      (staging, stagingBytes, workspace, workspaceBytes, stream) =>
        lib().fi_decode_plan(args, staging, stagingBytes, workspace, workspaceBytes, stream, infoBytes),
      () => readDecodePlanInfo(infoBytes));
    const info = readDecodePlanInfo(infoBytes);
    check(status, "plan");
    this.#plan = info;
  }

  /** Attention of q over the planned paged KV cache. */
  run(q: Tensor, pagedKvCache: Tensor | [Tensor, Tensor], opts: DecodeRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    const plan = this.#plan, options = this.#options;
    if (!plan || !options) throw new FlashInferError("invalid_argument", "run: call plan() first");
    this.#buffers.requirePlanHeld();
    argCheck(q instanceof Tensor, "q: expected a Tensor");
    const [k, v] = pagedKvViews(pagedKvCache, this.kvLayout);
    const created: Tensor[] = [];
    try {
      const { out, lse } = runOutputs(q, q.shape, [q.shape[0] ?? 0, q.shape[1] ?? 0], opts, created);
      const runArgs = writeDecodeRunArgs({
        q: q.descFields(),
        k: k.descFields(),
        v: v.descFields(),
        out: out.descFields(),
        lse: lse ? lse.descFields() : null,
        plan: plan.bytes,
        workspace: this.#buffers.workspace.dataPtr,
        workspaceBytes: this.#buffers.workspace.nbytes,
        ...options,
        kScale: checkScale(opts.kScale, "kScale"),
        vScale: checkScale(opts.vScale, "vScale"),
      });
      const stream = currentStreamPointer(this.device);
      const vp = this.#variantParams;
      check(this.#variant && vp
        ? runDecodeVariant(runArgs, vp.lib, vp.buffer.dataPtr, this.#variant.useSoftmax, stream)
        : lib().fi_decode_run(runArgs, stream), "run");
      created.length = 0;
      return lse ? { out, lse } : out;
    } finally {
      for (const t of created) t.dispose();
      k.dispose();
      v.dispose();
    }
  }

  /** The current plan's schedule (work items, split chunk size), for inspection and tests. */
  get planInfo(): { batchSize: number; numWork: number; numPartials: number; chunkTokens: number } | null {
    const p = this.#plan;
    return p && { batchSize: p.batchSize, numWork: p.numWork, numPartials: p.numPartials, chunkTokens: p.chunkTokens };
  }

  dispose(): void {
    this.#buffers.dispose();
    disposeVariantParams(this.#variantParams);
    this.#variantParams = null;
    this.#plan = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

// One wrapper and workspace per device for single-request decode.
const singleWrappers = new Map<Device, BatchDecodeWithPagedKVCacheWrapper>();
const SINGLE_WORKSPACE_BYTES = 8 << 20; // grows when a plan needs more

const DECODE_HEAD_DIMS = [64, 128, 256];
const FP8: readonly DType[] = ["float8_e4m3fn", "float8_e5m2"];

/** What the native decode plan/run would reject, for a request with no keys (no native call). */
function checkEmptyDecode(q: Tensor, k: Tensor, v: Tensor, headDim: number, opts: SingleDecodeOptions): void {
  for (const [t, name] of [[q, "q"], [k, "k"], [v, "v"]] as const) argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  if (q.dtype !== "float16" && q.dtype !== "bfloat16")
    throw new FlashInferError("unsupported", `qDataType: expected float16 or bfloat16, got ${q.dtype}`);
  if (k.dtype !== q.dtype && !FP8.includes(k.dtype))
    throw new FlashInferError("unsupported", `kvDataType: expected q's dtype (${q.dtype}) or float8_e4m3fn / float8_e5m2, got ${k.dtype}`);
  argCheck(v.dtype === k.dtype, () => `v: dtype ${v.dtype} differs from k's ${k.dtype}`);
  if (!DECODE_HEAD_DIMS.includes(headDim))
    throw new FlashInferError("unsupported", `headDim: supported values are 64, 128 and 256, got ${headDim}`);
  checkScale(opts.kScale, "kScale");
  checkScale(opts.vScale, "vScale");
}

/**
 * Decode attention of one request: q [numQoHeads, headDim] over k, v ([kvLen, numKvHeads,
 * headDim] for "NHD", [numKvHeads, kvLen, headDim] for "HND"). Returns the output (q's dtype)
 * or { out, lse } with returnLse (lse: natural-log log-sum-exp, float32 [numQoHeads]).
 */
export function singleDecodeWithKVCache(q: Tensor, k: Tensor, v: Tensor, opts: SingleDecodeOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
  argCheck(q instanceof Tensor && k instanceof Tensor && v instanceof Tensor, "q, k, v: expected Tensors");
  const layout = opts.kvLayout ?? "NHD";
  argCheck(layout === "NHD" || layout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(layout)}`);
  argCheck(q.ndim === 2, () => `q: expected [numQoHeads, headDim], got [${q.shape}]`);
  for (const [t, name] of [[k, "k"], [v, "v"]] as const) {
    argCheck(t.ndim === 3, () => `${name}: expected [${layout === "NHD" ? "kvLen, numKvHeads" : "numKvHeads, kvLen"}, headDim], got [${t.shape}]`);
    argCheck(t.device === q.device, () => `${name}: is on ${t.device}, q on ${q.device}`);
  }
  argCheck(k.shape.every((n, d) => n === v.shape[d]), () => `v: shape [${v.shape}] must equal k's [${k.shape}]`);
  const [numQoHeads, headDim] = q.shape as [number, number];
  const kvLen = layout === "NHD" ? k.shape[0]! : k.shape[1]!;
  const numKvHeads = layout === "NHD" ? k.shape[1]! : k.shape[0]!;
  argCheck(k.shape[2] === headDim, () => `k: head dim ${k.shape[2]} differs from q's ${headDim}`);
  argCheck(numQoHeads % numKvHeads === 0, () => `q: numQoHeads (${numQoHeads}) is not a multiple of numKvHeads (${numKvHeads})`);
  if (kvLen === 0) {
    // No native call checks this request, so check here what plan() and run() would.
    resolveVariant(opts, headDim);
    checkEmptyDecode(q, k, v, headDim, opts);
    const out = full(q.shape, 0, { dtype: q.dtype, device: q.device });
    return opts.returnLse ? { out, lse: full([numQoHeads], -Infinity, { device: q.device }) } : out;
  }
  let wrapper = singleWrappers.get(q.device);
  if (!wrapper) {
    const workspace = empty([SINGLE_WORKSPACE_BYTES], { dtype: "uint8", device: q.device });
    wrapper = new BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", { [GROW_WORKSPACE]: true });
    workspace.dispose(); // the wrapper holds its own view
    singleWrappers.set(q.device, wrapper);
  }
  wrapper.plan({
    indptr: [0, 1], indices: [0], lastPageLen: [kvLen], numQoHeads, numKvHeads, headDim, pageSize: kvLen,
    qDataType: q.dtype, kvDataType: k.dtype, ...opts,
  });
  // One page holding the whole sequence: [1, kvLen, numKvHeads, headDim] views.
  const asPage = (t: Tensor) => {
    if (layout === "NHD") return t.unsqueeze(0);
    const nhd = t.transpose(0, 1);
    try {
      return nhd.unsqueeze(0);
    } finally {
      nhd.dispose();
    }
  };
  const q3 = q.unsqueeze(0), k4 = asPage(k), v4 = asPage(v);
  try {
    const result = wrapper.run(q3, [k4, v4], { returnLse: opts.returnLse, kScale: opts.kScale, vScale: opts.vScale });
    if (result instanceof Tensor) {
      try {
        return result.select(0, 0);
      } finally {
        result.dispose();
      }
    }
    try {
      return { out: result.out.select(0, 0), lse: result.lse.select(0, 0) };
    } finally {
      result.out.dispose();
      result.lse.dispose();
    }
  } finally {
    q3.dispose();
    k4.dispose();
    v4.dispose();
  }
}

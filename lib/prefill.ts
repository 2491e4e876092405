// Prefill attention (many query rows per request): fi.singlePrefillWithKVCache,
// fi.BatchPrefillWithRaggedKVCacheWrapper and fi.BatchPrefillWithPagedKVCacheWrapper
// (FlashInfer's names and semantics). Masks: causal (bottom-right aligned when kvLen > qoLen),
// custom (a boolean per (query row, key), flattened per request; stored packed little-endian),
// sliding window; logits soft cap, RoPE on the fly, ALiBi.
//
// AttentionWrapperBase is the one attention engine of the bindings (fi_prefill_plan / _run):
// the decode wrappers (lib/decode.ts) are this engine with one query row per request, and the
// plan picks the kernel (planInfo.kernel: the decode kernels for such plans on CUDA).
import {
  type AttentionVariantOptions,
  POS_ENCODING_ALIBI,
  GROW_WORKSPACE,
  PlanBuffers,
  type ResolvedVariant,
  checkScale,
  hostInt32,
  resolveVariant,
  runOutputs,
} from "./attention.ts";
import { type Device, deviceIndex } from "./device.ts";
import { type DType, checkDType, dtypeCode } from "./dtype.ts";
import { FlashInferError, argCheck, checkOptions, codeOfStatus } from "./errors.ts";
import { lib } from "./ffi/library.ts";
import {
  type PrefillPlanInfo,
  newPrefillPlanInfo,
  readPrefillPlanInfo,
  writePrefillPlanArgs,
  writePrefillRunArgs,
} from "./ffi/structs.ts";
import { type KVLayout, liveTensor, pagedKvViews, singleRequestKv } from "./kv_cache.ts";
import { segmentPackbits } from "./quantization.ts";
import { currentStreamPointer } from "./stream.ts";
import { runPrefillVariant } from "./ffi/variant.ts";
import { AttentionVariant, type PlannedVariant, disposeVariantParams, keepVariantParams, planVariant } from "./jit.ts";
import { Tensor, empty, keep, tensor } from "./tensor.ts";

/**
 * The native library names arguments as the C ABI does; users know the TypeScript names, which
 * differ per wrapper (the ragged, paged and decode wrappers name the KV index arrays and head
 * dims their own way): C name -> TypeScript name.
 */
export type ArgNames = Readonly<Record<string, string>>;
const TS_NAMES: ArgNames = {
  qo_indptr: "qoIndptr", num_qo_heads: "numQoHeads", num_kv_heads: "numKvHeads", head_dim_qk: "headDimQk",
  head_dim_vo: "headDimVo", page_size: "pageSize", q_dtype: "qDataType", kv_dtype: "kvDataType", window_left: "windowLeft",
  kv_indptr: "kvIndptr", kv_indices: "pagedKvIndices", kv_last_page_len: "pagedKvLastPageLen", custom_mask: "customMask",
  pos_encoding_mode: "posEncodingMode", logits_soft_cap: "logitsSoftCap", sm_scale: "smScale", k_scale: "kScale", v_scale: "vScale",
  fixed_split_size: "fixedSplitSize", disable_split_kv: "disableSplitKv",
};
const PAGED_NAMES: ArgNames = { ...TS_NAMES, kv_indptr: "pagedKvIndptr", fixed_grid: "useCudaGraph", max_total_qo: "maxTotalQo" };
/** The names of a wrapper: the prefill wrappers' with `overrides` (C name -> TypeScript name). */
export function argNames(overrides: ArgNames): ArgNames {
  return { ...PAGED_NAMES, ...overrides };
}

/** check() with the native message's argument names translated to the TypeScript ones. */
function checkNamed(status: number, context: string, names: ArgNames): void {
  if (status === 0) return;
  const message = String(lib().fi_last_error()).replace(/\b[a-z_]+\b/g, (w) => names[w] ?? w);
  throw new FlashInferError(codeOfStatus(status), `${context}: ${message}`, status);
}
const MASK_NONE = 0, MASK_CAUSAL = 1, MASK_CUSTOM = 2;

/** A boolean per (query row, key): a bool/uint8 Tensor (any device) or host values. */
export type PrefillMask = Tensor | ArrayLike<boolean | number>;

/**
 * Attention options shared by single and batch prefill (fixed at plan time for the wrappers).
 * ROPE_LLAMA rotates q (row i at position i + kvLen - qoLen) and k (key j at j); the window hides
 * keys before i + kvLen - qoLen - windowLeft from row i.
 */
export interface PrefillOptions extends AttentionVariantOptions {
  /** Key j is visible to query row i only when j <= i + kvLen - qoLen. Default false. */
  causal?: boolean;
  /**
   * Custom mask: for each request, qoLen * kvLen booleans (row-major [qoLen, kvLen]), the requests
   * concatenated. Replaces causal when given (as FlashInfer).
   */
  customMask?: PrefillMask;
  /** The custom mask already packed: per request ceil(qoLen * kvLen / 8) bytes, bitorder "little"
   * (fi.segmentPackbits(mask, indptr, "little"); note fi.packbits defaults to "big"). */
  packedCustomMask?: Tensor | Uint8Array;
}

/** How plan() may split a request's keys across work items (FlashInfer's plan options of these names). */
export interface SplitOptions {
  /**
   * Keys per piece, a positive multiple of 16: every request's keys are cut into pieces of this
   * many (the last shorter), attended separately and merged, whatever the rest of the batch
   * looks like. Default: the scheduler's choice (it splits long requests when the batch alone
   * cannot fill the device). Not with useCudaGraph.
   */
  fixedSplitSize?: number;
  /** Never split: one work item per query tile, no merge. Default false. */
  disableSplitKv?: boolean;
}

/** The split options checked, as the native plan takes them. */
export function resolveSplit(o: SplitOptions): { fixedSplitSize: number; disableSplitKv: boolean } {
  const fixedSplitSize = o.fixedSplitSize ?? 0, disableSplitKv = o.disableSplitKv ?? false;
  argCheck(Number.isInteger(fixedSplitSize) && fixedSplitSize >= 0 && fixedSplitSize % 16 === 0 && fixedSplitSize < 2 ** 31,
    () => `fixedSplitSize: expected a positive multiple of 16 (keys per piece), got ${String(o.fixedSplitSize)}`);
  argCheck(typeof disableSplitKv === "boolean", () => `disableSplitKv: expected a boolean, got ${String(o.disableSplitKv)}`);
  argCheck(fixedSplitSize === 0 || !disableSplitKv, "fixedSplitSize, disableSplitKv: give one of them, not both");
  return { fixedSplitSize, disableSplitKv };
}

export interface PrefillRunOptions {
  out?: Tensor;
  lse?: Tensor;
  returnLse?: boolean;
  /** Dequantization scales of an fp8 KV cache (default 1): logits use k * kScale, output v * vScale. */
  kScale?: number;
  vScale?: number;
}

interface PrefillPlanCommon extends PrefillOptions, SplitOptions {
  /** The parameters of the wrapper's variant (fi.jit), by name: numbers, or cpu tensors for pointer parameters. */
  variantParams?: Record<string, number | Tensor>;
  /** [batch + 1] query rows of each request: Int32Array, number[] or an int32 Tensor (any device). */
  qoIndptr: Int32Array | number[] | Tensor;
  numQoHeads: number;
  numKvHeads: number;
  headDimQk: number;
  /** Default headDimQk. */
  headDimVo?: number;
  /** Default "float16", as FlashInfer. */
  qDataType?: DType;
  /** Default qDataType. */
  kvDataType?: DType;
  /** Default qDataType; must equal it (out has q's dtype). */
  oDataType?: DType;
}

export interface RaggedPrefillPlanParams extends PrefillPlanCommon {
  /** [batch + 1] key rows of each request in k and v. */
  kvIndptr: Int32Array | number[] | Tensor;
}

export interface PagedPrefillPlanParams extends PrefillPlanCommon {
  /** FlashInfer's CSR page table. */
  pagedKvIndptr: Int32Array | number[] | Tensor;
  pagedKvIndices: Int32Array | number[] | Tensor;
  pagedKvLastPageLen: Int32Array | number[] | Tensor;
  pageSize: number;
}

export interface SinglePrefillOptions extends PrefillOptions, Omit<PrefillRunOptions, "out" | "lse">, BatchPrefillWrapperOptions {
  /** "NHD": k, v [kvLen, numKvHeads, headDim] (default); "HND": [numKvHeads, kvLen, headDim]. */
  kvLayout?: KVLayout;
  /** The parameters of `variant` (fi.jit), by name. */
  variantParams?: Record<string, number | Tensor>;
}

/**
 * Which kernel runs the plans of a prefill wrapper (FlashInfer's `backend`). "auto" (default):
 * the CPU backend on a cpu workspace; on CUDA the Hopper kernel ("fa3") for plans it serves whose
 * 128-row query tile fills, else "fa2". "fa2": the mma.sync kernel, every configuration. "fa3": the
 * Hopper wgmma/TMA kernel (16-bit q and kv of one dtype, head dims 64, 128 and 256, no ROPE_LLAMA;
 * MLA plans: its own wgmma kernel, latents of q's dtype); plan()
 * throws an "unsupported" FlashInferError naming what does not fit. "cpu": cpu workspaces only.
 * The chosen one is recorded in the plan (planInfo.backend).
 */
export type PrefillBackend = "auto" | "fa2" | "fa3" | "cpu";
const BACKENDS: PrefillBackend[] = ["auto", "fa2", "fa3", "cpu"]; // index = FI_BACKEND_*

/**
 * The kernel a plan runs on (planInfo.kernel): "cpu" the CPU backend; "decode" the CUDA-core
 * decode kernel and "decode_tc" the tensor-core one (plans with one query row per request over a
 * paged cache, head dims 64, 128 or 256, no custom mask; "auto" and "fa2" pick them); "fa2" the
 * mma.sync prefill kernel (and, for MLA plans, its own mma.sync kernel); "fa3" the Hopper one.
 */
export type AttentionKernel = "cpu" | "decode" | "decode_tc" | "fa2" | "fa3";
const KERNELS: AttentionKernel[] = ["cpu", "decode", "decode_tc", "fa2", "fa3"]; // index = FI_KERNEL_*

/** A wrapper's current plan, for inspection and tests. */
export interface AttentionPlanInfo {
  batchSize: number;
  /** Query rows (batchSize for decode). */
  totalQo: number;
  /** Work items (the launch grid times the KV heads; padded in CUDA-graph mode). */
  numWork: number;
  /** Packed query rows per work item: 16, 64 or 128. */
  ctaTileQ: number;
  /** Partial-state slots of split requests (0: nothing split). */
  numPartials: number;
  /** Most KV chunks of one request (1: nothing split). */
  kvChunksMax: number;
  /** Most keys of one work item of a split request (0: nothing split). */
  chunkTokens: number;
  /** The kernel family the plan runs on ("auto" resolved). */
  backend: PrefillBackend;
  /** The kernel the plan runs on. */
  kernel: AttentionKernel;
}

export interface BatchPrefillWrapperOptions {
  /** Default "auto". */
  backend?: PrefillBackend;
  /**
   * A generated attention variant (fi.jit.attentionVariant): its hooks replace the built-in
   * logits transform (ALiBi, soft cap) and add a mask; plan() takes its parameters as
   * variantParams. Runs on the CPU backend and, built per plan configuration with nvcc, on the
   * CUDA kernels the plan picks: mma.sync ("fa2"), or Hopper wgmma ("fa3") for the configurations
   * that kernel serves.
   */
  variant?: AttentionVariant;
}

type ResolvedOptions = ResolvedVariant & { maskMode: number };

function resolveOptions(o: PrefillOptions, headDimQk: number): ResolvedOptions {
  const variant = resolveVariant(o, headDimQk);
  const causal = o.causal ?? false;
  argCheck(typeof causal === "boolean", () => `causal: expected a boolean, got ${String(causal)}`);
  argCheck(o.customMask === undefined || o.packedCustomMask === undefined, "customMask, packedCustomMask: give one of them, not both");
  const custom = o.customMask !== undefined || o.packedCustomMask !== undefined;
  return { ...variant, maskMode: custom ? MASK_CUSTOM : causal ? MASK_CAUSAL : MASK_NONE };
}

function positiveInt(x: unknown, name: string): number {
  argCheck(Number.isInteger(x) && (x as number) >= 1, () => `${name}: expected a positive integer, got ${String(x)}`);
  return x as number;
}

/** Per-request mask sizes when the index arrays are well formed (else null: the native plan names the fault). */
function maskSegments(qoLen: Int32Array, kvIndptr: Int32Array, pageSize: number, lastPageLen: Int32Array | null): number[] | null {
  const bits: number[] = [];
  for (let r = 0; r < qoLen.length; ++r) {
    const n = kvIndptr[r + 1]! - kvIndptr[r]!;
    if (qoLen[r]! < 0 || n < 0) return null;
    if (pageSize > 0 && n > 0 && !(lastPageLen![r]! >= 1 && lastPageLen![r]! <= pageSize)) return null;
    const kvLen = pageSize === 0 ? n : n === 0 ? 0 : (n - 1) * pageSize + lastPageLen![r]!;
    bits.push(qoLen[r]! * kvLen);
  }
  return bits;
}

/** Packs a custom mask (per-request bit segments, bitorder "little") into a uint8 tensor on `device`. */
function packMask(mask: PrefillMask, bits: number[], device: Device): Tensor {
  const total = bits.reduce((a, b) => a + b, 0);
  argCheck(total < 2 ** 31, () => `customMask: ${total} mask entries exceed 2^31 - 1`);
  if (mask instanceof Tensor) {
    const x = liveTensor(mask, "customMask");
    argCheck(x.dtype === "bool" || x.dtype === "uint8", () => `customMask: dtype must be bool or uint8, got ${x.dtype}`);
    argCheck(x.numel === total, () => `customMask: expected ${total} entries (sum over requests of qoLen * kvLen), got ${x.numel} (shape [${x.shape}])`);
    const flat = x.reshape([total]);
    const onDevice = flat.to(device);
    flat.dispose();
    const indptr = new Int32Array(bits.length + 1);
    bits.forEach((b, i) => (indptr[i + 1] = indptr[i]! + b));
    try {
      const { y, indptrNew } = segmentPackbits(onDevice, indptr, "little");
      indptrNew.dispose();
      return y;
    } finally {
      onDevice.dispose();
    }
  }
  argCheck(mask !== null && typeof mask === "object" && typeof (mask as ArrayLike<unknown>).length === "number",
    "customMask: expected a bool/uint8 Tensor or an array of booleans");
  argCheck(mask.length === total, () => `customMask: expected ${total} entries (sum over requests of qoLen * kvLen), got ${mask.length}`);
  const bytes = new Uint8Array(bits.reduce((a, b) => a + Math.ceil(b / 8), 0));
  let src = 0, dst = 0;
  for (const n of bits) {
    for (let j = 0; j < n; ++j) if (mask[src + j]) bytes[dst + (j >> 3)]! |= 1 << (j & 7);
    src += n;
    dst += Math.ceil(n / 8);
  }
  return tensor(bytes, [bytes.length], { dtype: "uint8", device });
}

/** A packed mask given by the caller: ceil(qoLen * kvLen / 8) bytes per request, moved to `device`. */
function takePackedMask(mask: Tensor | Uint8Array, bits: number[], device: Device): Tensor {
  const want = bits.reduce((a, b) => a + Math.ceil(b / 8), 0);
  if (mask instanceof Uint8Array) {
    argCheck(mask.length === want, () => `packedCustomMask: expected ${want} bytes (sum over requests of ceil(qoLen * kvLen / 8)), got ${mask.length}`);
    return tensor(mask, [want], { dtype: "uint8", device });
  }
  const x = liveTensor(mask, "packedCustomMask");
  argCheck(x.dtype === "uint8" && x.ndim === 1, () => `packedCustomMask: expected a 1-d uint8 tensor, got ${x.dtype} of shape [${x.shape}]`);
  argCheck(x.numel === want, () => `packedCustomMask: expected ${want} bytes (sum over requests of ceil(qoLen * kvLen / 8)), got ${x.numel}`);
  if (x.device === device && x.isContiguous()) return x.slice(0);
  const c = x.isContiguous() ? x.slice(0) : x.contiguous();
  try {
    return c.to(device);
  } finally {
    c.dispose();
  }
}

interface NativePlan {
  /** CUDA-graph mode (the wrappers' useCudaGraph). */
  fixedGrid?: boolean;
  /** CUDA-graph prefill: the most query rows a plan may have (the paged prefill wrapper's maxTotalQo). */
  maxTotalQo?: number;
  /** Tensor-core decode for any group size (the decode wrapper's useTensorCores); "never" for a variant with element transforms. */
  useTensorCores?: boolean | "never";
  qoIndptr: Int32Array;
  kvIndptr: Int32Array;
  kvIndices: Int32Array | null;
  kvLastPageLen: Int32Array | null;
  numQoHeads: number;
  numKvHeads: number;
  headDimQk: number;
  headDimVo: number;
  pageSize: number;
  qDataType: DType;
  kvDataType: DType;
}

/** The attention engine: scheduling, workspace and mask handling of every batch attention wrapper (prefill and decode). */
export abstract class AttentionWrapperBase {
  readonly kvLayout: KVLayout;
  readonly device: Device;
  #buffers: PlanBuffers;
  #plan: PrefillPlanInfo | null = null;
  #options: ResolvedOptions | null = null;
  #mask: Tensor | null = null;
  readonly backend: PrefillBackend;
  readonly variant: AttentionVariant | null;
  #variantParams: PlannedVariant | null = null;
  readonly #names: ArgNames;
  // CUDA-graph mode: the batch size of the first plan, which later plans keep (0: none yet).
  #graphBatch = 0;

  constructor(workspace: Tensor, kvLayout: KVLayout, opts: BatchPrefillWrapperOptions & { [GROW_WORKSPACE]?: true }, names: ArgNames) {
    argCheck(kvLayout === "NHD" || kvLayout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(kvLayout)}`);
    checkOptions(opts);
    const backend = opts.backend ?? "auto";
    argCheck(BACKENDS.includes(backend), () => `backend: expected "auto", "fa2", "fa3" or "cpu", got ${String(backend)}`);
    this.backend = backend;
    this.variant = opts.variant ?? null;
    if (this.variant) argCheck(this.variant instanceof AttentionVariant, "variant: expected an AttentionVariant from fi.jit.attentionVariant");
    this.#buffers = new PlanBuffers(workspace, opts[GROW_WORKSPACE] === true);
    this.kvLayout = kvLayout;
    this.device = workspace.device;
    this.#names = names;
  }

  /**
   * CUDA-graph mode: runs `plan` for a batch of `batch` requests, which must be the batch size of
   * this wrapper's first plan (`name`: the index array that gives it), and keeps it.
   */
  protected planKeepingBatch(batch: number, name: string, plan: () => void): void {
    argCheck(this.#graphBatch === 0 || this.#graphBatch === batch, () =>
      `${name}: a CUDA-graph wrapper keeps its batch size (${this.#graphBatch}); got ${batch}. Make a new wrapper for another batch size`);
    plan();
    this.#graphBatch = batch;
  }

  protected planCommon(params: PrefillPlanCommon): { qoIndptr: Int32Array; numQoHeads: number; numKvHeads: number; headDimQk: number; headDimVo: number; qDataType: DType; kvDataType: DType } {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const names = this.#names;
    const numQoHeads = positiveInt(params.numQoHeads, "numQoHeads");
    const numKvHeads = positiveInt(params.numKvHeads, "numKvHeads");
    const headDimQk = positiveInt(params.headDimQk, names.head_dim_qk!);
    const headDimVo = positiveInt(params.headDimVo ?? headDimQk, names.head_dim_vo!);
    argCheck(numQoHeads % numKvHeads === 0, () => `numQoHeads: ${numQoHeads} is not a multiple of numKvHeads (${numKvHeads})`);
    const qDataType = checkDType(params.qDataType ?? "float16", "qDataType");
    const kvDataType = checkDType(params.kvDataType ?? qDataType, "kvDataType");
    const oDataType = checkDType(params.oDataType ?? qDataType, "oDataType");
    if (oDataType !== qDataType)
      throw new FlashInferError("unsupported", `oDataType: the output has q's dtype (${qDataType}); got ${oDataType}`);
    const qoIndptr = hostInt32(params.qoIndptr, "qoIndptr");
    argCheck(qoIndptr.length >= 2, "qoIndptr: expected batch + 1 >= 2 entries");
    return { qoIndptr, numQoHeads, numKvHeads, headDimQk, headDimVo, qDataType, kvDataType };
  }

  /** Validates a paged plan's page table (FlashInfer's CSR form) and plans it. */
  protected planPaged(params: PagedPrefillPlanParams, extra: Pick<NativePlan, "fixedGrid" | "maxTotalQo" | "useTensorCores"> = {}): void {
    const c = this.planCommon(params);
    const names = this.#names;
    const pageSize = positiveInt(params.pageSize, "pageSize");
    const kvIndptr = hostInt32(params.pagedKvIndptr, names.kv_indptr!);
    const kvIndices = hostInt32(params.pagedKvIndices, names.kv_indices!);
    const kvLastPageLen = hostInt32(params.pagedKvLastPageLen, names.kv_last_page_len!);
    this.planNative({ ...c, ...extra, kvIndptr, kvIndices, kvLastPageLen, pageSize }, params);
  }

  protected planNative(n: NativePlan, opts: PrefillOptions & SplitOptions & { variantParams?: Record<string, unknown> }): void {
    const options = resolveOptions(opts, n.headDimQk);
    const split = resolveSplit(opts);
    const variantParams = this.#planVariant(n, options, opts.variantParams);
    const batch = n.qoIndptr.length - 1;
    const names = this.#names;
    argCheck(n.kvIndptr.length === batch + 1, () => `${names.kv_indptr}: expected ${batch + 1} entries (as qoIndptr), got ${n.kvIndptr.length}`);
    if (n.kvLastPageLen)
      argCheck(n.kvLastPageLen.length === batch, () => `${names.kv_last_page_len}: expected ${batch} entries (one per request), got ${n.kvLastPageLen!.length}`);
    if (n.kvIndices)
      argCheck(n.kvIndptr[batch]! <= n.kvIndices.length, () => `${names.kv_indices}: ${names.kv_indptr}[${batch}] = ${n.kvIndptr[batch]} exceeds its ${n.kvIndices!.length} entries`);

    // The custom mask, packed on this wrapper's device, checked against the request sizes first
    // (a bad mask must not replace the current plan).
    let mask: Tensor | null = null;
    if (options.maskMode === MASK_CUSTOM) {
      const qoLen = Int32Array.from({ length: batch }, (_, r) => n.qoIndptr[r + 1]! - n.qoIndptr[r]!);
      const bits = maskSegments(qoLen, n.kvIndptr, n.pageSize, n.kvLastPageLen);
      if (bits) mask = opts.customMask !== undefined ? packMask(opts.customMask, bits, this.device) : takePackedMask(opts.packedCustomMask!, bits, this.device);
    }
    try {
      const [qoIndptrAt, kvIndptrAt, kvIndicesAt, kvLastPageLenAt] =
        this.#buffers.addresses([n.qoIndptr, n.kvIndptr, n.kvIndices, n.kvLastPageLen]);
      const args = writePrefillPlanArgs({
        qoIndptr: qoIndptrAt!,
        kvIndptr: kvIndptrAt!,
        kvIndices: kvIndicesAt!,
        kvLastPageLen: kvLastPageLenAt!,
        batchSize: batch,
        numQoHeads: n.numQoHeads,
        numKvHeads: n.numKvHeads,
        headDimQk: n.headDimQk,
        headDimVo: n.headDimVo,
        pageSize: n.pageSize,
        qDtype: dtypeCode(n.qDataType),
        kvDtype: dtypeCode(n.kvDataType),
        device: deviceIndex(this.device),
        maskMode: options.maskMode,
        windowLeft: options.windowLeft,
        // auto keeps a variant with element transforms on fa2: the Hopper kernel's transform
        // passes (Q and each K tile rewritten in shared memory) are not measured yet; backend
        // "fa3" asks for them.
        backend: BACKENDS.indexOf(this.variant?.hasElementTransforms && this.backend === "auto" && this.device !== "cpu" ? "fa2" : this.backend),
        posEncodingMode: options.posEncodingMode,
        fixedGrid: n.fixedGrid ?? false,
        maxTotalQo: n.maxTotalQo ?? 0,
        // The tensor-core decode kernel has no element-transform hooks: such a variant plans the CUDA-core one.
        useTensorCores: this.variant?.hasElementTransforms ? "never" : n.useTensorCores ?? false,
        ...split,
      });
      const infoBytes = newPrefillPlanInfo();
      const status = this.#buffers.plan(
        (staging, stagingBytes, workspace, workspaceBytes, stream) =>
          lib().fi_prefill_plan(args, staging, stagingBytes, workspace, workspaceBytes, stream, infoBytes),
        () => readPrefillPlanInfo(infoBytes));
      const info = readPrefillPlanInfo(infoBytes);
      checkNamed(status, "plan", names);
      this.#mask?.dispose();
      this.#mask = mask && keep(mask);
      mask = null;
      this.#plan = info;
      this.#options = options;
      disposeVariantParams(this.#variantParams);
      keepVariantParams(variantParams);
      this.#variantParams = variantParams;
    } catch (e) {
      disposeVariantParams(variantParams);
      throw e;
    } finally {
      mask?.dispose();
    }
  }

  /** The wrapper's variant for this plan (fi.jit.planVariant), or null without one. */
  #planVariant(n: NativePlan, options: ResolvedOptions, values: Record<string, unknown> | undefined): PlannedVariant | null {
    if (!this.variant) {
      argCheck(values === undefined, "variantParams: this wrapper has no variant");
      return null;
    }
    return planVariant(this.variant, this.device, { headDimQk: n.headDimQk, headDimVo: n.headDimVo, qDataType: n.qDataType, kvDataType: n.kvDataType },
      { logitsSoftCap: options.logitsSoftCap, alibi: options.posEncodingMode === POS_ENCODING_ALIBI }, values);
  }

  /** Runs the current plan on [k, v] views (which this call disposes). */
  /** rope: MLA's rope parts of q and k (fi_prefill_run_args.q_rope / k_rope); q and k then hold the latent dims. */
  protected runNative(q: Tensor, k: Tensor, v: Tensor, opts: PrefillRunOptions, rope?: { q: Tensor; k: Tensor }): Tensor | { out: Tensor; lse: Tensor } {
    const created: Tensor[] = [];
    try {
      const plan = this.#plan, options = this.#options;
      if (!plan || !options) throw new FlashInferError("invalid_argument", "run: call plan() first");
      this.#buffers.requirePlanHeld();
      argCheck(typeof opts === "object" && opts !== null, "run: options must be an object");
      liveTensor(q, "q");
      argCheck(q.ndim === 3, () => `q: expected [totalQo, numQoHeads, headDimQk], got [${q.shape}]`);
      const { out, lse } = runOutputs(q, [q.shape[0]!, q.shape[1]!, plan.headDimVo], [q.shape[0]!, q.shape[1]!], opts, created);
      const runArgs = writePrefillRunArgs({
        q: q.descFields(),
        k: k.descFields(),
        v: v.descFields(),
        out: out.descFields(),
        lse: lse ? lse.descFields() : null,
        customMask: this.#mask ? this.#mask.descFields() : null,
        qRope: rope ? rope.q.descFields() : null,
        kRope: rope ? rope.k.descFields() : null,
        plan: plan.bytes,
        workspace: this.#buffers.workspace.dataPtr,
        workspaceBytes: this.#buffers.workspace.nbytes,
        ...options,
        kScale: checkScale(opts.kScale, "kScale"),
        vScale: checkScale(opts.vScale, "vScale"),
      });
      const stream = currentStreamPointer(this.device);
      const vp = this.#variantParams;
      const status = this.variant && vp
        ? runPrefillVariant(runArgs, vp.lib, vp.buffer.dataPtr, this.variant.useSoftmax, stream)
        : lib().fi_prefill_run(runArgs, stream);
      checkNamed(status, "run", this.#names);
      created.length = 0;
      return lse ? { out, lse } : out;
    } finally {
      for (const t of created) t.dispose();
      k.dispose();
      v.dispose();
    }
  }

  /** The current plan's schedule and kernel, for inspection and tests. */
  get planInfo(): AttentionPlanInfo | null {
    const p = this.#plan;
    return p && { batchSize: p.batchSize, totalQo: p.totalQo, numWork: p.numWork, ctaTileQ: p.ctaTileQ, numPartials: p.numPartials, kvChunksMax: p.kvChunksMax,
      chunkTokens: p.chunkTokens, backend: BACKENDS[p.backend]!, kernel: KERNELS[p.kernel]! };
  }

  dispose(): void {
    this.#buffers.dispose();
    this.#mask?.dispose();
    this.#mask = null;
    disposeVariantParams(this.#variantParams);
    this.#variantParams = null;
    this.#plan = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** FlashInfer's BatchPrefillWithRaggedKVCacheWrapper: keys and values of all requests in one tensor each. */
export class BatchPrefillWithRaggedKVCacheWrapper extends AttentionWrapperBase {
  constructor(workspace: Tensor, kvLayout: KVLayout = "NHD", opts: BatchPrefillWrapperOptions & { [GROW_WORKSPACE]?: true } = {}) {
    super(workspace, kvLayout, opts, TS_NAMES);
  }

  /** Validates the index arrays (and mask) and schedules the batch; one plan serves every layer. */
  plan(params: RaggedPrefillPlanParams): void {
    const c = this.planCommon(params);
    const kvIndptr = hostInt32(params.kvIndptr, "kvIndptr");
    this.planNative({ ...c, kvIndptr, kvIndices: null, kvLastPageLen: null, pageSize: 0 }, params);
  }

  /**
   * Attention of q [totalQo, numQoHeads, headDimQk] over k [totalKv, numKvHeads, headDimQk] and v
   * [totalKv, numKvHeads, headDimVo] ("HND": [numKvHeads, totalKv, headDim]). Returns out
   * [totalQo, numQoHeads, headDimVo] (q's dtype) or { out, lse } (lse float32, natural log).
   */
  run(q: Tensor, k: Tensor, v: Tensor, opts: PrefillRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    const kt = liveTensor(k, "k"), vt = liveTensor(v, "v");
    for (const [t, name] of [[kt, "k"], [vt, "v"]] as const)
      argCheck(t.ndim === 3, () => `${name}: expected [${this.kvLayout === "NHD" ? "totalKv, numKvHeads" : "numKvHeads, totalKv"}, headDim], got [${t.shape}]`);
    const view = (t: Tensor) => (this.kvLayout === "HND" ? t.transpose(0, 1) : t.slice(0));
    return this.runNative(q, view(kt), view(vt), opts);
  }
}

export interface BatchPagedPrefillWrapperOptions extends BatchPrefillWrapperOptions {
  /**
   * CUDA-graph mode (FlashInfer's use_cuda_graph; CUDA only): launch shapes and workspace offsets
   * depend only on the batch size and maxTotalQo, so a captured run() replays with any later plan
   * of the same batch size. The plan's tile and kernel are chosen from maxTotalQo, keys are never
   * split across work items, and custom masks are not offered.
   */
  useCudaGraph?: boolean;
  /**
   * With useCudaGraph: the most query rows (qoIndptr's last entry) a plan may have. q, out and
   * lse of every run have this many rows; the rows past a plan's own are neither read nor written.
   */
  maxTotalQo?: number;
}

/**
 * A wrapper's useCudaGraph option (the decode and paged prefill wrappers'), checked: a boolean,
 * on a CUDA workspace, without a variant (its parameters would be captured with the graph).
 */
export function checkUseCudaGraph(workspace: Tensor, opts: { useCudaGraph?: boolean; variant?: AttentionVariant }): boolean {
  const useCudaGraph = opts.useCudaGraph ?? false;
  argCheck(typeof useCudaGraph === "boolean", () => `useCudaGraph: expected a boolean, got ${String(useCudaGraph)}`);
  argCheck(!useCudaGraph || !(workspace instanceof Tensor) || workspace.device !== "cpu", "useCudaGraph: needs a CUDA workspace");
  argCheck(!useCudaGraph || opts.variant === undefined, "useCudaGraph: not offered with a variant (its parameters would be captured with the graph)");
  return useCudaGraph;
}

/** The options checked before the engine takes the workspace (a refused wrapper keeps nothing). */
function checkPagedPrefillOptions(workspace: Tensor, opts: BatchPagedPrefillWrapperOptions): BatchPagedPrefillWrapperOptions {
  checkOptions(opts);
  if (checkUseCudaGraph(workspace, opts)) positiveInt(opts.maxTotalQo, "maxTotalQo");
  else argCheck(opts.maxTotalQo === undefined, "maxTotalQo: only with useCudaGraph");
  return opts;
}

/** FlashInfer's BatchPrefillWithPagedKVCacheWrapper: keys and values in a paged cache. */
export class BatchPrefillWithPagedKVCacheWrapper extends AttentionWrapperBase {
  readonly useCudaGraph: boolean;
  /** CUDA-graph mode: the most query rows a plan may have (0 otherwise). */
  readonly maxTotalQo: number;

  constructor(workspace: Tensor, kvLayout: KVLayout = "NHD", opts: BatchPagedPrefillWrapperOptions = {}) {
    super(workspace, kvLayout, checkPagedPrefillOptions(workspace, opts), PAGED_NAMES);
    this.useCudaGraph = opts.useCudaGraph ?? false;
    this.maxTotalQo = opts.maxTotalQo ?? 0;
  }

  /**
   * Validates the page table (and mask) and schedules the batch; one plan serves every layer.
   * A batch of one query row per request (decode) runs on the decode kernels on CUDA where they
   * serve it (planInfo.kernel). A CUDA-graph wrapper keeps the batch size of its first plan.
   */
  plan(params: PagedPrefillPlanParams): void {
    if (!this.useCudaGraph) return this.planPaged(params);
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const qoIndptr = hostInt32(params.qoIndptr, "qoIndptr");
    this.planKeepingBatch(qoIndptr.length - 1, "qoIndptr", () => this.planPaged({ ...params, qoIndptr }, { fixedGrid: true, maxTotalQo: this.maxTotalQo }));
  }

  /**
   * Attention of q [totalQo, numQoHeads, headDimQk] over the planned pages of pagedKvCache (one
   * Tensor [pages, 2, pageSize, numKvHeads, headDim] or a pair [k, v]; "HND" swaps pageSize and
   * numKvHeads). Returns out (q's dtype) or { out, lse }.
   */
  run(q: Tensor, pagedKvCache: Tensor | [Tensor, Tensor], opts: PrefillRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    return this.runNative(q, ...prefillKvViews(pagedKvCache, this.kvLayout), opts);
  }
}

/** pagedKvViews, except that a [k, v] pair may differ in the head dim (headDimQk != headDimVo). */
function prefillKvViews(cache: Tensor | [Tensor, Tensor], layout: KVLayout): [Tensor, Tensor] {
  if (!Array.isArray(cache) || cache.length !== 2) return pagedKvViews(cache, layout);
  const [k, v] = cache;
  if (!(k instanceof Tensor && v instanceof Tensor) || k.ndim !== 4 || v.ndim !== 4 || k.shape[3] === v.shape[3])
    return pagedKvViews(cache, layout);
  argCheck(k.shape.slice(0, 3).every((n, d) => n === v.shape[d]), () => `pagedKvCache[1]: shape [${v.shape.join(", ")}] must equal pagedKvCache[0]'s [${k.shape.join(", ")}] except in the head dim`);
  argCheck(k.dtype === v.dtype, () => `pagedKvCache[1]: dtype ${v.dtype} must equal pagedKvCache[0]'s ${k.dtype}`);
  argCheck(k.device === v.device, () => `pagedKvCache[1]: on ${v.device} but pagedKvCache[0] is on ${k.device}`);
  const [k0, k1] = pagedKvViews([k, k], layout);
  k1.dispose();
  const [v0, v1] = pagedKvViews([v, v], layout);
  v1.dispose();
  return [k0, v0];
}

// One wrapper and workspace per device and backend for single-request prefill (and per variant).
const singleWrappers = new Map<string, BatchPrefillWithRaggedKVCacheWrapper>();
const variantSingleWrappers = new WeakMap<AttentionVariant, Map<string, BatchPrefillWithRaggedKVCacheWrapper>>();
const SINGLE_WORKSPACE_BYTES = 8 << 20; // grows when a plan needs more

/**
 * Prefill attention of one request: q [qoLen, numQoHeads, headDimQk] over k, v ([kvLen,
 * numKvHeads, headDim] for "NHD", [numKvHeads, kvLen, headDim] for "HND"). Returns out
 * [qoLen, numQoHeads, headDimVo] (q's dtype) or { out, lse } with returnLse (lse float32
 * [qoLen, numQoHeads], natural log).
 */
export function singlePrefillWithKVCache(q: Tensor, k: Tensor, v: Tensor, opts: SinglePrefillOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
  const { layout, kvLen, numKvHeads } = singleRequestKv(q, k, v, opts, ["qoLen", "numQoHeads", "headDim"]);
  const [qoLen, numQoHeads, headDimQk] = q.shape as [number, number, number];
  argCheck(k.shape[2] === headDimQk, () => `k: head dim ${k.shape[2]} differs from q's ${headDimQk}`);
  argCheck(v.shape[layout === "NHD" ? 0 : 1] === kvLen && v.shape[layout === "NHD" ? 1 : 0] === numKvHeads,
    () => `v: shape [${v.shape}] must match k's [${k.shape}] except in the head dim`);
  argCheck(numKvHeads >= 1 && numQoHeads % numKvHeads === 0, () => `q: numQoHeads (${numQoHeads}) is not a multiple of numKvHeads (${numKvHeads})`);
  const backend = opts.backend ?? "auto";
  argCheck(BACKENDS.includes(backend), () => `backend: expected "auto", "fa2", "fa3" or "cpu", got ${String(backend)}`);
  // One wrapper per device and backend, and per variant (kept while the variant object lives).
  const variant = opts.variant;
  let wrappers = singleWrappers;
  if (variant !== undefined) {
    argCheck(variant instanceof AttentionVariant, "variant: expected an AttentionVariant from fi.jit.attentionVariant");
    wrappers = variantSingleWrappers.get(variant) ?? new Map();
    variantSingleWrappers.set(variant, wrappers);
  }
  let wrapper = wrappers.get(`${q.device} ${backend}`);
  if (!wrapper) {
    const workspace = empty([SINGLE_WORKSPACE_BYTES], { dtype: "uint8", device: q.device });
    try {
      wrapper = new BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", { [GROW_WORKSPACE]: true, backend, variant });
    } finally {
      workspace.dispose(); // the wrapper holds its own view
    }
    wrappers.set(`${q.device} ${backend}`, wrapper);
  }
  const { kvLayout: _, returnLse, kScale, vScale, backend: __, variant: ___, ...attention } = opts;
  wrapper.plan({
    qoIndptr: [0, qoLen], kvIndptr: [0, kvLen], numQoHeads, numKvHeads, headDimQk, headDimVo: v.shape[2],
    ...attention, qDataType: q.dtype, kvDataType: k.dtype, oDataType: q.dtype,
  });
  const kn = layout === "NHD" ? k.slice(0) : k.transpose(0, 1), vn = layout === "NHD" ? v.slice(0) : v.transpose(0, 1);
  try {
    return wrapper.run(q, kn, vn, { returnLse, kScale, vScale });
  } finally {
    kn.dispose();
    vn.dispose();
  }
}

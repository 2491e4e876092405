// Merging partial attention states (FlashInfer's flashinfer.cascade): attention over a split key
// set (a shared prefix and a per-request suffix, or KV chunks) gives one state per part: v, the
// normalized output, and s, the natural-log log-sum-exp of that part's logits. Merging states
// gives the attention over the union of the parts:
//   s = log(sum_i exp(s_i)),  v = sum_i v_i * exp(s_i - s)
// computed in float32 (float64 on cpu), v rounded to its dtype (nearest even), s float32.
// s = -Infinity is an empty state: it contributes nothing and its v is ignored (may hold
// anything); merging only empty states gives v = 0, s = -Infinity.
import { type DType, isFloating } from "./dtype.ts";
import { FlashInferError, argCheck } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { hostInt32, planOnWorkspaceParts, runOutputs } from "./attention.ts";
import type { KVLayout } from "./kv_cache.ts";
import { BatchPrefillWithPagedKVCacheWrapper, type BatchPrefillWrapperOptions } from "./prefill.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty } from "./tensor.ts";

/** A merged attention state: v [seqLen, numHeads, headDim] (the inputs' v dtype), s [seqLen, numHeads] float32. */
export interface MergedState {
  v: Tensor;
  s: Tensor;
}

const V_DTYPES: readonly DType[] = ["float16", "bfloat16", "float32"];

// ---------------------------------------------------------------- validation (mirrors cascade.cpp)

function live(t: unknown, name: string): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  return t;
}

function checkVDtype(t: Tensor, name: string): void {
  if (V_DTYPES.includes(t.dtype)) return;
  // Other floating dtypes are valid ideas that are not instantiated; integers are mistakes.
  throw new FlashInferError(isFloating(t.dtype) ? "unsupported" : "invalid_argument",
    `${name}: dtype must be float16, bfloat16 or float32, got ${t.dtype}`);
}

function checkDtype(t: Tensor, dtype: DType, name: string, why = ""): void {
  argCheck(t.dtype === dtype, () => `${name}: dtype must be ${dtype}${why}, got ${t.dtype}`);
}

function checkShape(t: Tensor, name: string, shape: readonly number[], dims: string): void {
  const ok = t.ndim === shape.length && shape.every((n, d) => t.shape[d] === n);
  argCheck(ok, () => `${name}: shape must be [${shape.join(", ")}] (${dims}), got [${t.shape.join(", ")}]`);
}

function checkNdim(t: Tensor, name: string, dims: string[]): void {
  argCheck(t.ndim === dims.length, () => `${name}: expected ${dims.length} dimensions [${dims.join(", ")}], got shape [${t.shape.join(", ")}]`);
}

function checkDevice(t: Tensor, name: string, ref: Tensor, refName: string): void {
  argCheck(t.device === ref.device, () => `${name}: on ${t.device} but ${refName} is on ${ref.device}; all tensors must be on one device`);
}

/** A tensor that is written: no two of its indices may share memory. */
function checkWritable(t: Tensor, name: string): void {
  if (t.numel === 0) return; // nothing is written (and contiguous strides may be 0)
  t.shape.forEach((n, d) => {
    argCheck(n <= 1 || t.strides[d] !== 0, () => `${name}: is written, so it must not be a broadcast view (stride 0 in dimension ${d})`);
  });
}

/**
 * Checks one state pair (v [seqLen, numHeads, headDim], s [seqLen, numHeads] float32). With
 * `ref`, v must match ref's shape, dtype and device.
 */
function checkPair(v: unknown, vName: string, s: unknown, sName: string, ref?: { v: Tensor; name: string }): [Tensor, Tensor] {
  const vt = live(v, vName);
  const st = live(s, sName);
  const refV = ref?.v ?? vt, refName = ref?.name ?? vName;
  if (ref) {
    checkShape(vt, vName, ref.v.shape, `[seqLen, numHeads, headDim] of ${ref.name}`);
    checkDtype(vt, ref.v.dtype, vName, ` (the dtype of ${ref.name})`);
    checkDevice(vt, vName, ref.v, ref.name);
  } else {
    checkVDtype(vt, vName);
    checkNdim(vt, vName, ["seqLen", "numHeads", "headDim"]);
  }
  checkShape(st, sName, [refV.shape[0]!, refV.shape[1]!], `[seqLen, numHeads] of ${refName}`);
  checkDtype(st, "float32", sName);
  checkDevice(st, sName, refV, refName);
  return [vt, st];
}

function checkMask(mask: unknown, v: Tensor, vName: string): Tensor | undefined {
  if (mask === undefined || mask === null) return undefined;
  const m = live(mask, "mask");
  argCheck(m.dtype === "bool" || m.dtype === "uint8", () => `mask: dtype must be bool or uint8, got ${m.dtype}`);
  checkShape(m, "mask", [v.shape[0]!], `[seqLen] of ${vName}`);
  checkDevice(m, "mask", v, vName);
  return m;
}

// ---------------------------------------------------------------- native calls

const descs = Array.from({ length: 7 }, () => new TensorDescBuffer());

function callMergeState(vA: Tensor, sA: Tensor, vB: Tensor, sB: Tensor, vOut: Tensor, sOut: Tensor, mask: Tensor | undefined, context: string): void {
  const [a, b, c, d, e, f, g] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];
  check(lib().fi_cascade_merge_state(
    a.write(vA.descFields()), b.write(sA.descFields()), c.write(vB.descFields()), d.write(sB.descFields()),
    e.write(vOut.descFields()), f.write(sOut.descFields()), mask ? g.write(mask.descFields()) : null,
    currentStreamPointer(vA.device),
  ), context);
}

function callMergeStates(v: Tensor, s: Tensor, vOut: Tensor, sOut: Tensor, context: string): void {
  const [a, b, c, d] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];
  check(lib().fi_cascade_merge_states(
    a.write(v.descFields()), b.write(s.descFields()), c.write(vOut.descFields()), d.write(sOut.descFields()),
    currentStreamPointer(v.device),
  ), context);
}

/** Allocates the outputs of a merge, runs `fill` into them, and frees them if it throws. */
function withOutputs(shape: readonly number[], dtype: DType, device: Tensor["device"], fill: (v: Tensor, s: Tensor) => void): MergedState {
  const v = empty(shape, { dtype, device });
  let s: Tensor | undefined;
  try {
    s = empty(shape.slice(0, 2), { dtype: "float32", device });
    fill(v, s);
    return { v, s };
  } catch (e) {
    v.dispose();
    s?.dispose();
    throw e;
  }
}

// ---------------------------------------------------------------- public API

/**
 * Merges two attention states of the same queries: vA, vB [seqLen, numHeads, headDim] (one of
 * float16, bfloat16, float32), sA, sB [seqLen, numHeads] float32 (natural-log log-sum-exp).
 * Returns new contiguous tensors on the inputs' device. Inputs may be any strided views.
 */
export function mergeState(vA: Tensor, sA: Tensor, vB: Tensor, sB: Tensor): MergedState {
  const [va, sa] = checkPair(vA, "vA", sA, "sA");
  const [vb, sb] = checkPair(vB, "vB", sB, "sB", { v: va, name: "vA" });
  return withOutputs(va.shape, va.dtype, va.device, (v, s) => callMergeState(va, sa, vb, sb, v, s, undefined, "mergeState"));
}

/**
 * Merges (vOther, sOther) into (v, s) in place. `mask` (optional, bool or uint8 [seqLen] on the
 * same device): rows whose mask is 0 are left untouched. v and s must not be broadcast views.
 */
export function mergeStateInPlace(v: Tensor, s: Tensor, vOther: Tensor, sOther: Tensor, mask?: Tensor | null): void {
  const [vt, st] = checkPair(v, "v", s, "s");
  const [vo, so] = checkPair(vOther, "vOther", sOther, "sOther", { v: vt, name: "v" });
  const m = checkMask(mask, vt, "v");
  checkWritable(vt, "v");
  checkWritable(st, "s");
  callMergeState(vt, st, vo, so, vt, st, m, "mergeStateInPlace");
}

/**
 * Merges numStates states per row and head: v [seqLen, numStates, numHeads, headDim] (float16,
 * bfloat16 or float32), s [seqLen, numStates, numHeads] float32. Returns v [seqLen, numHeads,
 * headDim] in v's dtype and s [seqLen, numHeads] float32; numStates = 0 gives v = 0, s = -Infinity.
 */
export function mergeStates(v: Tensor, s: Tensor): MergedState {
  const [vt, st] = checkStates(v, s);
  const [seqLen, , numHeads, headDim] = vt.shape as [number, number, number, number];
  return withOutputs([seqLen, numHeads, headDim], vt.dtype, vt.device, (vo, so) => callMergeStates(vt, st, vo, so, "mergeStates"));
}

function checkStates(v: unknown, s: unknown): [Tensor, Tensor] {
  const vt = live(v, "v");
  const st = live(s, "s");
  checkVDtype(vt, "v");
  checkNdim(vt, "v", ["seqLen", "numStates", "numHeads", "headDim"]);
  checkShape(st, "s", vt.shape.slice(0, 3), "[seqLen, numStates, numHeads] of v");
  checkDtype(st, "float32", "s");
  checkDevice(st, "s", vt, "v");
  return [vt, st];
}

// ---------------------------------------------------------------- into caller-owned outputs

/**
 * @internal mergeState into caller-owned outputs vOut [seqLen, numHeads, headDim] (v's dtype)
 * and sOut [seqLen, numHeads] float32, which may be exactly (vA, sA) or (vB, sB) or else must
 * not overlap the inputs; rows whose `mask` is 0 are not written. Used by the tests (poisoned
 * outputs) and the benchmarks (no allocation in the timed loop); not part of the public API.
 */
export function mergeStateInto(vA: Tensor, sA: Tensor, vB: Tensor, sB: Tensor, vOut: Tensor, sOut: Tensor, mask?: Tensor | null): void {
  const [va, sa] = checkPair(vA, "vA", sA, "sA");
  const [vb, sb] = checkPair(vB, "vB", sB, "sB", { v: va, name: "vA" });
  const [vo, so] = checkPair(vOut, "vOut", sOut, "sOut", { v: va, name: "vA" });
  const m = checkMask(mask, va, "vA");
  checkWritable(vo, "vOut");
  checkWritable(so, "sOut");
  callMergeState(va, sa, vb, sb, vo, so, m, "mergeState");
}

/** @internal mergeStates into caller-owned outputs that do not overlap the inputs (see mergeStateInto). */
export function mergeStatesInto(v: Tensor, s: Tensor, vOut: Tensor, sOut: Tensor): void {
  const [vt, st] = checkStates(v, s);
  const [seqLen, , numHeads, headDim] = vt.shape as [number, number, number, number];
  const vo = live(vOut, "vOut");
  const so = live(sOut, "sOut");
  checkShape(vo, "vOut", [seqLen, numHeads, headDim], "[seqLen, numHeads, headDim] of v");
  checkDtype(vo, vt.dtype, "vOut", " (the dtype of v)");
  checkDevice(vo, "vOut", vt, "v");
  checkShape(so, "sOut", [seqLen, numHeads], "[seqLen, numHeads] of v");
  checkDtype(so, "float32", "sOut");
  checkDevice(so, "sOut", vt, "v");
  checkWritable(vo, "vOut");
  checkWritable(so, "sOut");
  callMergeStates(vt, st, vo, so, "mergeStates");
}

// ---------------------------------------------------------------- multi-level cascade attention

export interface CascadePlanParams {
  /** Per level, [requests_l + 1] query rows of each request (levels nest: every boundary of a
   * level is one of the next level's; all end at totalQo). */
  qoIndptrArr: (Int32Array | number[] | Tensor)[];
  /** Per level, FlashInfer's CSR page table into the one paged cache. */
  pagedKvIndptrArr: (Int32Array | number[] | Tensor)[];
  pagedKvIndicesArr: (Int32Array | number[] | Tensor)[];
  pagedKvLastPageLenArr: (Int32Array | number[] | Tensor)[];
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  /** Causal within the last level (a request's own keys); earlier levels (shared prefixes) are fully visible. */
  causal?: boolean;
  logitsSoftCap?: number;
  smScale?: number;
  qDataType?: DType;
  kvDataType?: DType;
}

interface CascadeState {
  lse: Tensor;
  levelOut: Tensor;
  levelLse: Tensor;
  totalQo: number;
  numQoHeads: number;
  headDim: number;
}

/**
 * FlashInfer's MultiLevelCascadeAttentionWrapper: a KV cache shared at several levels (level 0
 * the longest shared prefix, the last level each request's own tokens). Each level is one paged
 * prefill plan whose requests are the groups of query rows sharing that level's keys, so a shared
 * prefix is read once per group, not once per request; the levels' states are merged in place
 * (mergeStateInPlace). A level with one query row per group (decode: each request's own tokens)
 * gets the decode kernels from its plan on CUDA, as any paged prefill plan of that shape
 * (levelEngines). Positions are per level, so RoPE, ALiBi and windows are not offered.
 */
export class MultiLevelCascadeAttentionWrapper {
  readonly numLevels: number;
  readonly kvLayout: KVLayout;
  readonly #workspace: Tensor;
  readonly #opts: BatchPrefillWrapperOptions;
  #levels: BatchPrefillWithPagedKVCacheWrapper[] = [];
  // Plan-time buffers: the running state's lse and one level's state (run allocates nothing).
  #state: CascadeState | null = null;

  /**
   * The workspace is shared out among the levels' plans (one slice each). `opts.backend` as the
   * prefill wrappers' (each level's plan picks its kernel: "auto" and "fa2" run a level of one
   * row per group on the decode kernels, a shared prefix attended by few rows on fa2); "fa3"
   * pins every level to the Hopper kernel.
   */
  constructor(numLevels: number, workspace: Tensor, kvLayout: KVLayout = "NHD", opts: BatchPrefillWrapperOptions = {}) {
    argCheck(Number.isInteger(numLevels) && numLevels >= 1, () => `numLevels: expected an integer >= 1, got ${String(numLevels)}`);
    argCheck(kvLayout === "NHD" || kvLayout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(kvLayout)}`);
    argCheck(workspace instanceof Tensor && !workspace.disposed, "workspace: expected a live Tensor");
    this.numLevels = numLevels;
    this.kvLayout = kvLayout;
    this.#workspace = workspace;
    this.#opts = opts;
  }

  plan(params: CascadePlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const L = this.numLevels;
    for (const key of ["qoIndptrArr", "pagedKvIndptrArr", "pagedKvIndicesArr", "pagedKvLastPageLenArr"] as const)
      argCheck(Array.isArray(params[key]) && params[key].length === L, () => `${key}: expected one entry per level (${L})`);
    const qo = params.qoIndptrArr.map((x, l) => hostInt32(x, `qoIndptrArr[${l}]`));
    const totalQo = qo[0]![qo[0]!.length - 1]!;
    for (let l = 0; l < L; ++l) {
      const a = qo[l]!;
      argCheck(a.length >= 2 && a[0] === 0 && a[a.length - 1] === totalQo,
        () => `qoIndptrArr[${l}]: expected offsets from 0 to the same total as level 0 (${totalQo})`);
      for (let i = 1; i < a.length; ++i) argCheck(a[i]! >= a[i - 1]!, () => `qoIndptrArr[${l}]: must be non-decreasing at entry ${i}`);
      if (l > 0) {
        const finer = new Set(a);
        const missing = qo[l - 1]!.find((b) => !finer.has(b));
        argCheck(missing === undefined, () => `qoIndptrArr[${l}]: levels must nest, but level ${l - 1}'s boundary ${missing} is not one of level ${l}'s`);
      }
    }
    const Hq = params.numQoHeads, D = params.headDim;
    argCheck(Number.isInteger(Hq) && Hq >= 1, () => `numQoHeads: expected an integer >= 1, got ${String(Hq)}`);
    argCheck(Number.isInteger(D) && D >= 1, () => `headDim: expected an integer >= 1, got ${String(D)}`);
    const qDataType = params.qDataType ?? "float16";
    const device = this.#workspace.device;
    const state: CascadeState = { lse: empty([totalQo, Hq], { dtype: "float32", device }), levelOut: empty([totalQo, Hq, D], { dtype: qDataType, device }),
      levelLse: empty([totalQo, Hq], { dtype: "float32", device }), totalQo, numQoHeads: Hq, headDim: D };
    const dropState = (st: CascadeState) => [st.lse, st.levelOut, st.levelLse].forEach((t) => t.dispose());
    let levels: BatchPrefillWithPagedKVCacheWrapper[];
    try {
      // The levels' wrappers of the last plan are planned again (see planOnWorkspaceParts).
      levels = planOnWorkspaceParts(this.#workspace, L, "levels",
        (part) => new BatchPrefillWithPagedKVCacheWrapper(part, this.kvLayout, this.#opts),
        (w, l) => w.plan({ pageSize: params.pageSize, numQoHeads: Hq, numKvHeads: params.numKvHeads, logitsSoftCap: params.logitsSoftCap, smScale: params.smScale,
          qDataType, kvDataType: params.kvDataType, qoIndptr: qo[l]!, pagedKvIndptr: params.pagedKvIndptrArr[l]!, pagedKvIndices: params.pagedKvIndicesArr[l]!,
          pagedKvLastPageLen: params.pagedKvLastPageLenArr[l]!, headDimQk: D, causal: l === L - 1 && (params.causal ?? false) }),
        { previous: this.#levels, broken: () => this.dispose() });
    } catch (e) {
      dropState(state);
      throw e;
    }
    if (this.#state) dropState(this.#state);
    this.#levels = levels;
    this.#state = state;
  }

  /**
   * q [totalQo, numQoHeads, headDim] over the planned pages of pagedKvCache (as the paged prefill
   * wrapper's run). Returns out (q's dtype) or { out, lse } (natural log; -inf for a row that sees nothing).
   */
  run(q: Tensor, pagedKvCache: Tensor | [Tensor, Tensor], opts: { out?: Tensor; lse?: Tensor; returnLse?: boolean } = {}): Tensor | { out: Tensor; lse: Tensor } {
    const s = this.#state;
    if (!s) throw new FlashInferError("invalid_argument", "run: call plan() first");
    argCheck(q instanceof Tensor && !q.disposed, "q: expected a live Tensor");
    argCheck(q.ndim === 3 && q.shape[0] === s.totalQo && q.shape[1] === s.numQoHeads && q.shape[2] === s.headDim,
      () => `q: expected [${s.totalQo}, ${s.numQoHeads}, ${s.headDim}], got [${q.shape}]`);
    const created: Tensor[] = [];
    try {
      const { out, lse: asked } = runOutputs(q, q.shape, [s.totalQo, s.numQoHeads], opts, created);
      const lse = asked ?? s.lse; // the running state's lse, in the plan's buffer when not asked for
      // Level 0 writes the running state; each later level writes its own and is merged into it.
      this.#levels[0]!.run(q, pagedKvCache, { out, lse });
      for (let l = 1; l < this.#levels.length; ++l) {
        this.#levels[l]!.run(q, pagedKvCache, { out: s.levelOut, lse: s.levelLse });
        mergeStateInPlace(out, lse, s.levelOut, s.levelLse);
      }
      created.length = 0;
      return asked ? { out, lse: asked } : out;
    } finally {
      created.forEach((t) => t.dispose());
    }
  }

  /** Which kernels each planned level runs on: "decode" (its plan's kernel is a decode kernel) or "prefill" (any other), for inspection and tests. */
  get levelEngines(): ("prefill" | "decode")[] {
    return this.#levels.map((w) => {
      const kernel = w.planInfo?.kernel;
      return kernel === "decode" || kernel === "decode_tc" ? "decode" : "prefill";
    });
  }

  dispose(): void {
    this.#levels.forEach((w) => w.dispose());
    this.#levels = [];
    if (this.#state) for (const t of [this.#state.lse, this.#state.levelOut, this.#state.levelLse]) t.dispose();
    this.#state = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

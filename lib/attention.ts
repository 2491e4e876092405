// What the attention wrappers (decode, prefill) share: option checks, host index arrays, and the
// buffers behind plan(): the caller's workspace, our page-locked staging buffer, and the event
// that guards it.
import { type Pointer, ffi } from "./ffi/backend.ts";
import type { Device } from "./device.ts";
import { FlashInferError, argCheck, checkOptions, int32ArrayOf } from "./errors.ts";
import { currentStreamPointer, Event } from "./stream.ts";
import { Tensor, empty, keep } from "./tensor.ts";

export type PosEncodingMode = "NONE" | "ROPE_LLAMA" | "ALIBI";

const POS_ENCODING: Record<PosEncodingMode, number> = { NONE: 0, ROPE_LLAMA: 1, ALIBI: 2 };
/** The native code of ALiBi (a generated variant's logitsTransform replaces it). */
export const POS_ENCODING_ALIBI = POS_ENCODING.ALIBI;

/** Logit and position options of every attention kernel. */
export interface AttentionVariantOptions {
  /** Default "NONE". ROPE_LLAMA rotates q and k on the fly; ALIBI adds a per-head linear bias. */
  posEncodingMode?: PosEncodingMode;
  /** tanh soft cap of the logits (cap * tanh(logit / cap)); 0 or undefined = off. */
  logitsSoftCap?: number;
  /** Keys more than windowLeft positions before the query's are masked; -1 (default) = no window. */
  windowLeft?: number;
  /** Default 1 / sqrt(headDim) (headDimQk for prefill). */
  smScale?: number;
  /** RoPE position scale (default 1) and base (default 1e4). */
  ropeScale?: number;
  ropeTheta?: number;
}

/** The options above, checked and with defaults, as the native run arguments take them. */
export interface ResolvedVariant {
  posEncodingMode: number;
  logitsSoftCap: number;
  windowLeft: number;
  smScale: number;
  ropeScale: number;
  ropeTheta: number;
}

export function resolveVariant(o: AttentionVariantOptions, headDim: number): ResolvedVariant {
  const mode = o.posEncodingMode ?? "NONE";
  argCheck(typeof mode === "string" && mode in POS_ENCODING, () => `posEncodingMode: expected "NONE", "ROPE_LLAMA" or "ALIBI", got ${String(mode)}`);
  const cap = o.logitsSoftCap ?? 0;
  argCheck(typeof cap === "number" && cap >= 0 && Number.isFinite(cap), () => `logitsSoftCap: expected a number >= 0, got ${String(cap)}`);
  const window = o.windowLeft ?? -1;
  argCheck(Number.isInteger(window) && window >= -1, () => `windowLeft: expected -1 (off) or an integer >= 0, got ${String(window)}`);
  const smScale = o.smScale ?? 1 / Math.sqrt(headDim);
  argCheck(typeof smScale === "number" && Number.isFinite(smScale), () => `smScale: expected a finite number, got ${String(smScale)}`);
  const ropeScale = o.ropeScale ?? 1, ropeTheta = o.ropeTheta ?? 1e4;
  argCheck(typeof ropeScale === "number" && ropeScale > 0, () => `ropeScale: expected a number > 0, got ${String(ropeScale)}`);
  argCheck(typeof ropeTheta === "number" && ropeTheta > 0, () => `ropeTheta: expected a number > 0, got ${String(ropeTheta)}`);
  return { posEncodingMode: POS_ENCODING[mode as PosEncodingMode], logitsSoftCap: cap, windowLeft: window, smScale, ropeScale, ropeTheta };
}

/** A dequantization scale (kScale, vScale): default 1, finite. */
export function checkScale(x: number | undefined, name: string): number {
  const v = x ?? 1;
  argCheck(typeof v === "number" && Number.isFinite(v), () => `${name}: expected a finite number, got ${String(x)}`);
  return v;
}

/**
 * One wrapper per equal part of the workspace (`parts` of them), each planned in turn by `plan`.
 * With `reuse`, the caller's wrappers of its last plan (when there are `parts` of them, each of
 * the kind `make` gives) are planned again instead of made anew: a new wrapper allocates its
 * page-locked staging at its first plan and a dropped one frees it (cudaFreeHost synchronizes the
 * device), at every plan of a serving step. A failure in part 0 changes nothing; a later one has
 * already planned the reused parts before it, so their set no longer holds one plan: `broken` is
 * called, for the caller to drop them (its run() then asks for a plan). Previous wrappers that
 * were not reused (another count) are disposed once the new ones are planned.
 */
export function planOnWorkspaceParts<W extends { dispose(): void }>(workspace: Tensor, parts: number, what: string,
  make: (part: Tensor, i: number) => W, plan: (wrapper: W, i: number) => void,
  reuse?: { previous: readonly W[]; broken: () => void }): W[] {
  const share = Math.floor(workspace.nbytes / parts / 256) * 256;
  argCheck(share > 0, () => `workspace: ${workspace.nbytes} bytes cannot be shared among ${parts} ${what}`);
  const reused = reuse && reuse.previous.length === parts ? reuse.previous : null;
  const made: W[] = [];
  let planned = 0;
  try {
    const wrappers: W[] = [];
    for (let i = 0; i < parts; ++i) {
      let w = reused?.[i];
      if (w === undefined) {
        using part = workspace.slice(0, i * share, (i + 1) * share);
        w = make(part, i);
        made.push(w);
      }
      wrappers.push(w);
      plan(w, i);
      ++planned;
    }
    if (reuse && !reused) reuse.previous.forEach((w) => w.dispose());
    return wrappers;
  } catch (e) {
    made.forEach((w) => w.dispose());
    if (reused && planned > 0) reuse!.broken();
    throw e;
  }
}

/** An index array on the host as Int32Array. */
export function hostInt32(x: Int32Array | number[] | Tensor, name: string): Int32Array {
  if (x instanceof Int32Array) return x;
  if (Array.isArray(x)) {
    return int32ArrayOf(x, name);
  }
  argCheck(x instanceof Tensor, () => `${name}: expected an Int32Array, number[] or int32 Tensor`);
  argCheck(!x.disposed, () => `${name}: tensor was disposed`);
  argCheck(x.dtype === "int32" && x.ndim === 1, () => `${name}: expected a 1-d int32 tensor, got ${x.dtype} of shape [${x.shape}]`);
  return x.toArray() as Int32Array;
}

/** Internal: lets a single-request wrapper grow its own workspace. */
export const GROW_WORKSPACE = Symbol("growWorkspace");

/** Byte sizes a native plan call reports back (also when it fails for too small buffers). */
export interface PlanSizes {
  hostBytes: number;
  workspaceBytes: number;
}

/** The native plan entry's buffer arguments. */
export type NativePlanCall = (staging: Pointer | null, stagingBytes: number, workspace: Pointer, workspaceBytes: number, stream: Pointer | null) => number;

// Which wrapper's buffers last planned into a workspace, by device and start address. A second
// wrapper planning into the same workspace replaces the first one's plan there; the first one's
// runs must then refuse: on CUDA its kernels would follow the other plan's indices (no device
// check is possible without a sync), on cpu the library also checks the plan's serial number.
const planHolders = new Map<string, WeakRef<PlanBuffers>>();

/**
 * The buffers of a planned wrapper: the caller's workspace (a flat uint8 view), the page-locked
 * staging buffer the plan is written into before its copy to the device (ours, grown on demand),
 * the event that says that copy is done, and a scratch array for small index arrays.
 */
export class PlanBuffers {
  readonly device: Device;
  #workspace: Tensor;
  // Two page-locked staging buffers used in turn, each with the event of its last copy: a plan
  // waits only for the copy of the plan before the previous one, not for the one just queued
  // (back-to-back plans on the GPU machine spent a fifth of their time in that wait).
  #staging: [Tensor | null, Tensor | null] = [null, null];
  #stagingReady: [Event | null, Event | null] = [null, null];
  #turn = 0;
  // Index arrays of 1000 elements or fewer are copied here for the native call (always longer
  // than 1000 elements, so bun:ffi does not move it).
  #scratch = new Int32Array(1001);
  readonly #grow: boolean;
  // planHolders' key of the workspace this wrapper last planned into (set by a successful plan).
  #heldKey: string | null = null;

  constructor(workspace: Tensor, grow: boolean) {
    argCheck(workspace instanceof Tensor && !workspace.disposed, "workspace: expected a uint8 Tensor");
    argCheck(workspace.dtype === "uint8" && workspace.isContiguous(), () => `workspace: expected a contiguous uint8 tensor, got ${workspace.dtype}`);
    // The plan's arrays and the float32 partial states are read with 16-byte vector loads.
    argCheck(workspace.dataPtr % 16 === 0, () => `workspace: expected a 16-byte aligned start, got one ${workspace.dataPtr % 16} bytes past (a slice at a multiple of 16 works)`);
    this.#workspace = keep(workspace.view([-1])); // ours until dispose(), whatever scope made it
    this.device = workspace.device;
    this.#grow = grow;
  }

  get workspace(): Tensor {
    return this.#workspace;
  }

  /**
   * Addresses of index arrays for one native call (0 for null or empty). bun:ffi may move typed
   * arrays of 1000 elements or fewer during a call, so those are copied into the scratch array,
   * whose address is fixed; larger arrays are passed as they are. Valid until the next call.
   */
  addresses(arrays: (Int32Array | null)[]): number[] {
    const small = arrays.reduce((n, a) => n + (a && a.length <= 1000 ? a.length : 0), 0);
    if (this.#scratch.length < small) this.#scratch = new Int32Array(small);
    const scratch = this.#scratch;
    let used = 0;
    return arrays.map((a) => {
      if (a === null || a.length === 0) return 0;
      if (a.length > 1000) return ffi.address(a);
      scratch.set(a, used);
      const at = ffi.address(scratch) + used * 4;
      used += a.length;
      return at;
    });
  }

  /**
   * Calls the native plan entry with these buffers and returns its status. Too small a staging
   * buffer (ours) grows and the call is repeated; so does the workspace of a growing
   * (single-request) wrapper. A user's workspace never changes under an existing plan.
   */
  plan(call: NativePlanCall, sizes: () => PlanSizes): number {
    // This buffer's last copy must be done before it is rewritten.
    const turn = this.#turn;
    this.#stagingReady[turn]?.synchronize();
    const invoke = () => {
      const staging = this.#staging[turn];
      return call(staging ? (staging.dataPtr as Pointer) : null, staging?.nbytes ?? 0,
        this.#workspace.dataPtr as Pointer, this.#workspace.nbytes, currentStreamPointer(this.device));
    };
    let status = invoke();
    for (let attempt = 0; status !== 0 && attempt < 2; ++attempt) {
      const { hostBytes, workspaceBytes } = sizes();
      const stagingShort = this.device !== "cpu" && hostBytes > (this.#staging[turn]?.nbytes ?? 0);
      const workspaceShort = this.#grow && workspaceBytes > this.#workspace.nbytes;
      if (!stagingShort && !workspaceShort) break;
      if (workspaceShort) {
        this.#workspace.dispose();
        this.#workspace = keep(empty([Math.ceil(workspaceBytes * 1.25)], { dtype: "uint8", device: this.device }));
      }
      if (stagingShort) {
        this.#staging[turn]?.dispose();
        this.#staging[turn] = keep(empty([Math.max(hostBytes, 1 << 16)], { dtype: "uint8", device: "cpu" }));
      }
      status = invoke();
    }
    if (status === 0 && this.device !== "cpu") {
      (this.#stagingReady[turn] ??= new Event({ device: this.device, enableTiming: false })).record();
      this.#turn = 1 - turn;
    }
    if (status === 0) {
      this.#heldKey = `${this.device}@${this.#workspace.dataPtr}`;
      planHolders.set(this.#heldKey, new WeakRef(this));
    }
    return status;
  }

  /** Throws unless the workspace still holds this wrapper's plan (no other wrapper planned into it since). */
  requirePlanHeld(): void {
    if (this.#heldKey !== null && planHolders.get(this.#heldKey)?.deref() === this) return;
    throw new FlashInferError("invalid_argument",
      "workspace: it no longer holds this wrapper's plan (another wrapper planned into the same workspace since): give each wrapper its own workspace, or plan again");
  }

  dispose(): void {
    if (this.#heldKey !== null && planHolders.get(this.#heldKey)?.deref() === this) planHolders.delete(this.#heldKey);
    for (const t of [0, 1]) {
      this.#staging[t]?.dispose();
      this.#staging[t] = null;
      this.#stagingReady[t]?.dispose();
      this.#stagingReady[t] = null;
    }
    this.#workspace.dispose();
  }
}

/** The out (and lse) tensors of a run: the caller's, or new ones (listed in `created`). */
export function runOutputs(q: Tensor, outShape: readonly number[], lseShape: readonly number[], opts: { out?: Tensor; lse?: Tensor; returnLse?: boolean },
  created: Tensor[]): { out: Tensor; lse: Tensor | null } {
  // A given out / lse (anything but undefined or null) must be a live Tensor, checked before
  // anything is made: only what this call makes goes into `created` (for the caller to dispose).
  checkOptions(opts, "run options");
  argCheck(opts.returnLse === undefined || typeof opts.returnLse === "boolean", () => `returnLse: expected a boolean, got ${String(opts.returnLse)}`);
  if (opts.out != null) argCheck(opts.out instanceof Tensor && !opts.out.disposed, "out: expected a live Tensor");
  if (opts.lse != null) argCheck(opts.lse instanceof Tensor && !opts.lse.disposed, "lse: expected a live Tensor");
  const out = opts.out ?? empty(outShape, { dtype: q.dtype, device: q.device });
  if (opts.out == null) created.push(out);
  if (opts.returnLse !== true && opts.lse == null) return { out, lse: null };
  const lse = opts.lse ?? empty(lseShape, { dtype: "float32", device: q.device });
  if (opts.lse == null) created.push(lse);
  return { out, lse };
}

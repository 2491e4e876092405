// Rotary position embeddings (FlashInfer's flashinfer.rope): applyRope / applyRopePosIds /
// applyLlama31Rope / applyLlama31RopePosIds (new tensors), their *Inplace forms, and vLLM's
// applyRopeWithCosSinCache. q [nnz, numQoHeads, headDim], k [nnz, numKvHeads, headDim], one
// dtype (float16, bfloat16 or float32) and device; the last dimension contiguous, token rows may
// be strided. Only the first rotaryDim dimensions (default headDim; even) rotate, the rest are
// copied. Non-interleaved (default, NeoX "rotate half"): pair dim i < rotaryDim / 2 with
// i + rotaryDim / 2; interleaved: 2i with 2i + 1. Pair i rotates by position * freq_i with
// freq_i = ropeTheta^(-2i / rotaryDim) / ropeScale (Llama 3.1: smoothed between that and the
// unscaled frequency by wavelength). Computed in float32 on cuda (angle reduced in float64),
// float64 on cpu; rounded to the dtype. Bad input throws a FlashInferError naming the argument
// and writes nothing.
import type { Device } from "./device.ts";
import { argCheck, int32ArrayOf } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { type TensorDescFields, TensorDescBuffer } from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty, tensor } from "./tensor.ts";

/** An index array: a 1-d int32 or int64 Tensor on q's device, or host values (copied to q's device as int32). */
export type RopeIndexArray = Tensor | Int32Array | number[];

export interface RopeOptions {
  /** Dimensions that rotate (even, <= headDim, <= 512); default headDim. */
  rotaryDim?: number;
  /** Pair 2i with 2i + 1 (GPT-J) instead of i with i + rotaryDim / 2 (NeoX); default false. */
  interleave?: boolean;
  /** Frequencies are divided by it; default 1. */
  ropeScale?: number;
  /** default 1e4. */
  ropeTheta?: number;
}

export interface Llama31RopeOptions {
  rotaryDim?: number;
  interleave?: boolean;
  /** default 8. */
  ropeScale?: number;
  /** default 5e5. */
  ropeTheta?: number;
  /** default 1. */
  lowFreqFactor?: number;
  /** default 4. */
  highFreqFactor?: number;
  /** default 8192. */
  oldContextLen?: number;
}

export interface CosSinCacheOptions {
  /** Non-interleaved pairs (NeoX, default true); false: interleaved (GPT-J). */
  isNeox?: boolean;
}

const descs = Array.from({ length: 7 }, () => new TensorDescBuffer());
const d = (i: number) => descs[i]!;

function live(t: unknown, name: string): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  return t;
}

function indexTensor(x: unknown, name: string, device: Device, owned: Tensor[]): Tensor {
  if (x instanceof Int32Array || Array.isArray(x)) {
    const t = tensor(x instanceof Int32Array ? x : int32ArrayOf(x, name), [x.length], { dtype: "int32", device });
    owned.push(t);
    return t;
  }
  const t = live(x, name);
  argCheck((t.dtype === "int32" || t.dtype === "int64") && t.ndim === 1, () => `${name}: expected a 1-d int32 or int64 tensor, got ${t.dtype} of shape [${t.shape.join(", ")}]`);
  argCheck(t.device === device, () => `${name}: on ${t.device} but q is on ${device}; all tensors must be on one device`);
  return t;
}

function num(v: unknown, name: string, fallback: number): number {
  const x = v ?? fallback;
  argCheck(typeof x === "number" && Number.isFinite(x), () => `${name}: expected a finite number, got ${String(x)}`);
  return x;
}

interface Params {
  rotaryDim: number;
  interleave: number;
  ropeScale: number;
  ropeTheta: number;
  llama31: number;
  low: number;
  high: number;
  oldCtx: number;
}

function params(q: Tensor, opts: (RopeOptions & Llama31RopeOptions) | undefined, llama31: boolean): Params {
  argCheck(opts === undefined || (typeof opts === "object" && opts !== null), "options: expected an object");
  argCheck(q.ndim === 3, () => `q: expected shape [nnz, numQoHeads, headDim], got [${q.shape.join(", ")}]`);
  const rotaryDim = opts?.rotaryDim ?? q.shape[2]!;
  argCheck(Number.isInteger(rotaryDim) && rotaryDim > 0 && rotaryDim % 2 === 0 && rotaryDim <= q.shape[2]!,
    () => `rotaryDim: must be an even integer in [2, headDim = ${q.shape[2]}], got ${String(rotaryDim)}`);
  const interleave = opts?.interleave ?? false;
  argCheck(typeof interleave === "boolean", () => `interleave: expected a boolean, got ${String(interleave)}`);
  return {
    rotaryDim,
    interleave: interleave ? 1 : 0,
    ropeScale: num(opts?.ropeScale, "ropeScale", llama31 ? 8 : 1),
    ropeTheta: num(opts?.ropeTheta, "ropeTheta", llama31 ? 5e5 : 1e4),
    llama31: llama31 ? 1 : 0,
    low: num(llama31 ? opts?.lowFreqFactor : undefined, "lowFreqFactor", 1),
    high: num(llama31 ? opts?.highFreqFactor : undefined, "highFreqFactor", 4),
    oldCtx: num(llama31 ? opts?.oldContextLen : undefined, "oldContextLen", 8192),
  };
}

/** Outputs like q and k (new tensors), or q and k themselves in place; `fill` writes them. */
function withOutputs(q: Tensor, k: Tensor, inplace: boolean, fill: (qo: Tensor, ko: Tensor) => void): { q: Tensor; k: Tensor } | undefined {
  if (inplace) {
    fill(q, k);
    return undefined;
  }
  const qo = empty(q.shape, { dtype: q.dtype, device: q.device });
  let ko: Tensor | undefined;
  try {
    ko = empty(k.shape, { dtype: k.dtype, device: k.device });
    fill(qo, ko);
    return { q: qo, k: ko };
  } catch (e) {
    qo.dispose();
    ko?.dispose();
    throw e;
  }
}

function ragged(context: string, q_: unknown, k_: unknown, indptr: unknown, offsets: unknown, opts: Llama31RopeOptions | undefined, llama31: boolean, inplace: boolean) {
  const q = live(q_, "q"), k = live(k_, "k");
  const p = params(q, opts, llama31);
  const owned: Tensor[] = [];
  try {
    if (Array.isArray(indptr) || indptr instanceof Int32Array) {
      // host values: check them here (the native entry reads them on the host only for cpu tensors)
      const v = Array.from(indptr as ArrayLike<number>);
      argCheck(v.length >= 1 && v[0] === 0, "indptr: must start at 0");
      for (let b = 1; b < v.length; ++b) argCheck(v[b]! >= v[b - 1]!, () => `indptr: must be non-decreasing, got indptr[${b}] = ${v[b]} < ${v[b - 1]}`);
      argCheck(v[v.length - 1] === q.shape[0], () => `indptr: last entry must be nnz = ${q.shape[0]} (q's tokens), got ${v[v.length - 1]}`);
    }
    const ip = indexTensor(indptr, "indptr", q.device, owned);
    const off = indexTensor(offsets, "offsets", q.device, owned);
    argCheck(off.shape[0] === ip.shape[0]! - 1, () => `offsets: expected ${ip.shape[0]! - 1} entries (one per request, indptr has ${ip.shape[0]}), got ${off.shape[0]}`);
    argCheck(off.dtype === ip.dtype, () => `offsets: dtype must be ${ip.dtype} (the dtype of indptr), got ${off.dtype}`);
    return withOutputs(q, k, inplace, (qo, ko) => {
      check(lib().fi_rope_apply_rope(d(0).write(q.descFields()), d(1).write(k.descFields()), d(2).write(qo.descFields()), d(3).write(ko.descFields()),
        d(4).write(ip.descFields()), d(5).write(off.descFields()), p.rotaryDim, p.interleave, p.ropeScale, p.ropeTheta, p.llama31, p.low, p.high, p.oldCtx,
        currentStreamPointer(q.device)), context);
    });
  } finally {
    for (const t of owned) t.dispose();
  }
}

function posIds(context: string, q_: unknown, k_: unknown, ids: unknown, opts: Llama31RopeOptions | undefined, llama31: boolean, inplace: boolean) {
  const q = live(q_, "q"), k = live(k_, "k");
  const p = params(q, opts, llama31);
  const owned: Tensor[] = [];
  try {
    const pos = indexTensor(ids, "posIds", q.device, owned);
    argCheck(pos.shape[0] === q.shape[0], () => `posIds: expected ${q.shape[0]} entries (one per token of q), got ${pos.shape[0]}`);
    return withOutputs(q, k, inplace, (qo, ko) => {
      check(lib().fi_rope_apply_rope_pos_ids(d(0).write(q.descFields()), d(1).write(k.descFields()), d(2).write(qo.descFields()), d(3).write(ko.descFields()),
        d(4).write(pos.descFields()), p.rotaryDim, p.interleave, p.ropeScale, p.ropeTheta, p.llama31, p.low, p.high, p.oldCtx,
        currentStreamPointer(q.device)), context);
    });
  } finally {
    for (const t of owned) t.dispose();
  }
}

/** RoPE over a ragged batch: request i owns rows indptr[i] .. indptr[i+1]; its row j has position offsets[i] + j - indptr[i]. Returns new { q, k }. */
export function applyRope(q: Tensor, k: Tensor, indptr: RopeIndexArray, offsets: RopeIndexArray, opts?: RopeOptions): { q: Tensor; k: Tensor } {
  return ragged("applyRope", q, k, indptr, offsets, opts, false, false)!;
}
/** applyRope rotating q and k in place. */
export function applyRopeInplace(q: Tensor, k: Tensor, indptr: RopeIndexArray, offsets: RopeIndexArray, opts?: RopeOptions): void {
  ragged("applyRopeInplace", q, k, indptr, offsets, opts, false, true);
}
/** RoPE with row t at position posIds[t] (posIds [nnz]). Returns new { q, k }. */
export function applyRopePosIds(q: Tensor, k: Tensor, posIds_: RopeIndexArray, opts?: RopeOptions): { q: Tensor; k: Tensor } {
  return posIds("applyRopePosIds", q, k, posIds_, opts, false, false)!;
}
/** applyRopePosIds rotating q and k in place. */
export function applyRopePosIdsInplace(q: Tensor, k: Tensor, posIds_: RopeIndexArray, opts?: RopeOptions): void {
  posIds("applyRopePosIdsInplace", q, k, posIds_, opts, false, true);
}
/** Llama 3.1 RoPE (frequency smoothing; defaults ropeScale 8, ropeTheta 5e5, lowFreqFactor 1, highFreqFactor 4, oldContextLen 8192) over a ragged batch. */
export function applyLlama31Rope(q: Tensor, k: Tensor, indptr: RopeIndexArray, offsets: RopeIndexArray, opts?: Llama31RopeOptions): { q: Tensor; k: Tensor } {
  return ragged("applyLlama31Rope", q, k, indptr, offsets, opts, true, false)!;
}
/** applyLlama31Rope rotating q and k in place. */
export function applyLlama31RopeInplace(q: Tensor, k: Tensor, indptr: RopeIndexArray, offsets: RopeIndexArray, opts?: Llama31RopeOptions): void {
  ragged("applyLlama31RopeInplace", q, k, indptr, offsets, opts, true, true);
}
/** Llama 3.1 RoPE with row t at position posIds[t]. */
export function applyLlama31RopePosIds(q: Tensor, k: Tensor, posIds_: RopeIndexArray, opts?: Llama31RopeOptions): { q: Tensor; k: Tensor } {
  return posIds("applyLlama31RopePosIds", q, k, posIds_, opts, true, false)!;
}
/** applyLlama31RopePosIds rotating q and k in place. */
export function applyLlama31RopePosIdsInplace(q: Tensor, k: Tensor, posIds_: RopeIndexArray, opts?: Llama31RopeOptions): void {
  posIds("applyLlama31RopePosIdsInplace", q, k, posIds_, opts, true, true);
}

/** The descriptor fields of x seen as [nnz, heads, headSize] (x: that shape, or [nnz, heads * headSize]). */
function asHeads(x: Tensor, name: string, headSize: number): TensorDescFields {
  const f = x.descFields();
  if (x.ndim === 3) {
    argCheck(x.shape[2] === headSize, () => `${name}: last dimension must be headSize = ${headSize}, got [${x.shape.join(", ")}]`);
    return f;
  }
  argCheck(x.ndim === 2, () => `${name}: expected shape [nnz, numHeads * headSize] or [nnz, numHeads, headSize], got [${x.shape.join(", ")}]`);
  const w = x.shape[1]!;
  argCheck(w % headSize === 0, () => `${name}: last dimension ${w} is not a multiple of headSize = ${headSize}`);
  argCheck(w <= 1 || x.strides[1] === 1 || x.shape[0] === 0, () => `${name}: the last dimension must be contiguous (stride 1), got stride ${x.strides[1]}`);
  return { ...f, shape: [x.shape[0]!, w / headSize, headSize], strides: [x.strides[0]!, headSize, 1] };
}

/**
 * vLLM-style RoPE: cosSinCache [maxPosition, rotaryDim] float32 = cat(cos, sin) along the last
 * dimension; row t rotates with cosSinCache[positions[t]]. query [nnz, numQoHeads * headSize]
 * or [nnz, numQoHeads, headSize], key likewise; isNeox (default true) = non-interleaved pairs.
 * Returns new { query, key } of the given shapes.
 */
export function applyRopeWithCosSinCache(positions: RopeIndexArray, query: Tensor, key: Tensor, headSize: number, cosSinCache: Tensor,
  opts?: CosSinCacheOptions): { query: Tensor; key: Tensor } {
  const q = live(query, "query"), k = live(key, "key"), c = live(cosSinCache, "cosSinCache");
  argCheck(Number.isInteger(headSize) && headSize > 0, () => `headSize: expected a positive integer, got ${String(headSize)}`);
  argCheck(opts === undefined || (typeof opts === "object" && opts !== null), "options: expected an object { isNeox? }");
  const isNeox = opts?.isNeox ?? true;
  argCheck(typeof isNeox === "boolean", () => `isNeox: expected a boolean, got ${String(isNeox)}`);
  const qf = asHeads(q, "query", headSize), kf = asHeads(k, "key", headSize);
  const owned: Tensor[] = [];
  try {
    if (Array.isArray(positions) || positions instanceof Int32Array) {
      const maxPos = c.ndim === 2 ? c.shape[0]! : 0;
      Array.from(positions as ArrayLike<number>).forEach((p, t) => argCheck(p >= 0 && p < maxPos,
        () => `positions: positions[${t}] = ${p} is outside the cache [0, ${maxPos})`));
    }
    const pos = indexTensor(positions, "positions", q.device, owned);
    argCheck(pos.shape[0] === q.shape[0], () => `positions: expected ${q.shape[0]} entries (one per token of query), got ${pos.shape[0]}`);
    const qo = empty(q.shape, { dtype: q.dtype, device: q.device });
    let ko: Tensor | undefined;
    try {
      ko = empty(k.shape, { dtype: k.dtype, device: k.device });
      check(lib().fi_rope_apply_cos_sin_cache(d(4).write(pos.descFields()), d(0).write(qf), d(1).write(kf), d(2).write(asHeads(qo, "query", headSize)),
        d(3).write(asHeads(ko, "key", headSize)), d(5).write(c.descFields()), isNeox ? 1 : 0, currentStreamPointer(q.device)), "applyRopeWithCosSinCache");
      return { query: qo, key: ko };
    } catch (e) {
      qo.dispose();
      ko?.dispose();
      throw e;
    }
  } finally {
    for (const t of owned) t.dispose();
  }
}

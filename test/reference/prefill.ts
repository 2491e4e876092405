// Float64 reference for prefill attention (many query rows per request), written from the
// definitions, independently of native/src/attention: plain loops over float64 values.
//
// One request with qoLen query rows and kvLen keys, d = kvLen - qoLen; qo head h uses kv head
// floor(h / (numQoHeads / numKvHeads)). Key j is visible to row i when
//   causal:        j <= i + d                         (bottom-right aligned, as FlashInfer)
//   customMask:    customMask[i * kvLen + j] is true  (replaces causal)
//   windowLeft>=0: also j >= i + d - windowLeft
// logit = smScale * kScale * dot(q', k'_j) + alibi, then cap * tanh(logit / cap) when cap > 0;
// out = vScale * softmax-weighted sum of v over visible keys; lse = ln(sum exp(logit));
// a row with no visible key: out = 0, lse = -Infinity.
// Positions: row i at i + d, key j at j (ROPE_LLAMA rotates both "rotate half"; ALIBI adds
// slope_h * (j - (i + d))).
import { type PosEncodingMode, alibiSlope, llamaRope } from "./attention.ts";

export interface PrefillReferenceOptions {
  causal?: boolean;
  /** [qoLen * kvLen] booleans (row-major [qoLen, kvLen]). */
  customMask?: ArrayLike<boolean | number>;
  windowLeft?: number;
  logitsSoftCap?: number;
  posEncodingMode?: PosEncodingMode;
  /** Default 1 / sqrt(headDimQk). */
  smScale?: number;
  ropeScale?: number;
  ropeTheta?: number;
  kScale?: number;
  vScale?: number;
}

export interface PrefillDims {
  numQoHeads: number;
  numKvHeads: number;
  headDimQk: number;
  headDimVo: number;
}

export interface PrefillReferenceResult {
  /** [qoLen, numQoHeads, headDimVo] */
  out: Float64Array;
  /** [qoLen, numQoHeads], natural log */
  lse: Float64Array;
  /** [qoLen, numQoHeads, headDimVo]: vScale * sum_j p_j |v_j| (see DecodeReferenceResult.magnitude). */
  magnitude: Float64Array;
}

/** Whether key j is visible to row i of a request (qoLen rows, kvLen keys). */
export function prefillVisible(i: number, j: number, qoLen: number, kvLen: number, opts: PrefillReferenceOptions): boolean {
  const d = kvLen - qoLen;
  let visible = true;
  if (opts.customMask) visible = Boolean(opts.customMask[i * kvLen + j]);
  else if (opts.causal) visible = j <= i + d;
  const w = opts.windowLeft ?? -1;
  if (w >= 0 && j < i + d - w) visible = false;
  return visible;
}

/**
 * Prefill attention of one request: q [qoLen, numQoHeads, headDimQk], k [kvLen, numKvHeads,
 * headDimQk], v [kvLen, numKvHeads, headDimVo], all row-major float64 values.
 */
export function singlePrefillReference(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dims: PrefillDims,
  opts: PrefillReferenceOptions = {},
): PrefillReferenceResult {
  const { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: Dqk, headDimVo: Dvo } = dims;
  if (!(Hq > 0 && Hkv > 0 && Hq % Hkv === 0)) throw new Error(`reference: numQoHeads ${Hq} is not a multiple of numKvHeads ${Hkv}`);
  const group = Hq / Hkv;
  const qoLen = q.length / (Hq * Dqk), kvLen = k.length / (Hkv * Dqk);
  if (!Number.isInteger(qoLen) || !Number.isInteger(kvLen) || v.length !== kvLen * Hkv * Dvo)
    throw new Error(`reference: q/k/v sizes ${q.length}/${k.length}/${v.length} do not fit the dims`);
  if (opts.customMask && opts.customMask.length !== qoLen * kvLen)
    throw new Error(`reference: customMask has ${opts.customMask.length} entries, expected ${qoLen * kvLen}`);
  const d = kvLen - qoLen;
  const scale = (opts.smScale ?? 1 / Math.sqrt(Dqk)) * (opts.kScale ?? 1);
  const vScale = opts.vScale ?? 1;
  const cap = opts.logitsSoftCap ?? 0;
  const mode = opts.posEncodingMode ?? "NONE";
  const ropeScale = opts.ropeScale ?? 1, ropeTheta = opts.ropeTheta ?? 1e4;
  // Keys, rotated when RoPE is on: keys[kvHead * kvLen + j] is a Dqk vector.
  const keys: ArrayLike<number>[] = [];
  for (let hk = 0; hk < Hkv; ++hk)
    for (let j = 0; j < kvLen; ++j) {
      const off = (j * Hkv + hk) * Dqk;
      keys.push(mode === "ROPE_LLAMA" ? llamaRope(k, off, Dqk, j, ropeScale, ropeTheta) : Array.prototype.slice.call(k, off, off + Dqk));
    }
  const out = new Float64Array(qoLen * Hq * Dvo);
  const lse = new Float64Array(qoLen * Hq);
  const magnitude = new Float64Array(qoLen * Hq * Dvo);
  const logits = new Float64Array(kvLen);
  for (let i = 0; i < qoLen; ++i) {
    for (let h = 0; h < Hq; ++h) {
      const hk = Math.floor(h / group);
      const qOff = (i * Hq + h) * Dqk;
      const qh: ArrayLike<number> = mode === "ROPE_LLAMA" ? llamaRope(q, qOff, Dqk, i + d, ropeScale, ropeTheta) : Array.prototype.slice.call(q, qOff, qOff + Dqk);
      const slope = mode === "ALIBI" ? alibiSlope(h, Hq) : 0;
      let max = -Infinity;
      for (let j = 0; j < kvLen; ++j) {
        if (!prefillVisible(i, j, qoLen, kvLen, opts)) {
          logits[j] = -Infinity;
          continue;
        }
        const kj = keys[hk * kvLen + j]!;
        let dot = 0;
        for (let x = 0; x < Dqk; ++x) dot += qh[x]! * kj[x]!;
        let l = scale * dot + slope * (j - (i + d));
        if (cap > 0) l = cap * Math.tanh(l / cap);
        logits[j] = l;
        if (l > max) max = l;
      }
      const o = (i * Hq + h) * Dvo;
      if (max === -Infinity) {
        lse[i * Hq + h] = -Infinity;
        continue; // out stays 0
      }
      let sum = 0;
      for (let j = 0; j < kvLen; ++j) {
        if (logits[j] === -Infinity) continue;
        const e = Math.exp(logits[j]! - max);
        sum += e;
        const vo = (j * Hkv + hk) * Dvo;
        for (let x = 0; x < Dvo; ++x) {
          out[o + x]! += e * v[vo + x]!;
          magnitude[o + x]! += e * Math.abs(v[vo + x]!);
        }
      }
      for (let x = 0; x < Dvo; ++x) {
        out[o + x] = (out[o + x]! / sum) * vScale;
        magnitude[o + x] = (magnitude[o + x]! / sum) * Math.abs(vScale);
      }
      lse[i * Hq + h] = max + Math.log(sum);
    }
  }
  return { out, lse, magnitude };
}

/** The causal mask of one request as booleans [qoLen * kvLen] (bottom-right aligned). */
export function causalMask(qoLen: number, kvLen: number): boolean[] {
  const m: boolean[] = [];
  for (let i = 0; i < qoLen; ++i) for (let j = 0; j < kvLen; ++j) m.push(j <= i + kvLen - qoLen);
  return m;
}

/** Packs booleans 8 per byte, first in the least significant bit ("little"), last byte zero-padded. */
export function packBitsLittle(bits: ArrayLike<boolean | number>): Uint8Array {
  const y = new Uint8Array(Math.ceil(bits.length / 8));
  for (let i = 0; i < bits.length; ++i) if (bits[i]) y[i >> 3]! |= 1 << (i & 7);
  return y;
}

/** Where one logit sits, as a generated variant's hooks see it (lib/jit.ts). */
export interface VariantIndex {
  batchIdx: number;
  qoIdx: number;
  kvIdx: number;
  qoHeadIdx: number;
  kvHeadIdx: number;
  qoLen: number;
  kvLen: number;
  qoRow: number;
}

export interface VariantReferenceOptions {
  causal?: boolean;
  smScale?: number;
  /** The new logit from q.k * smScale (identity when absent). */
  transform?: (logit: number, ix: VariantIndex) => number;
  /** Whether the key stays visible (after causal). */
  mask?: (ix: VariantIndex) => boolean;
  /** Default true; false: out = sum over visible keys of transform(logit) * v. */
  useSoftmax?: boolean;
  /** Element transforms of q and k (before the dot product) and of the output (every row, empty ones included). */
  queryTransform?: (x: number, ix: VariantIndex, dim: number) => number;
  keyTransform?: (x: number, ix: VariantIndex, dim: number) => number;
  outputTransform?: (x: number, ix: VariantIndex, dim: number) => number;
  batchIdx?: number;
  /** Global row of the request's first query (qo_indptr[batchIdx]). */
  qoRow0?: number;
}

/**
 * A generated variant's prefill of one request, from the definition: q and k through the
 * variant's element transforms, logits q.k * smScale, the variant's transform and mask (with
 * causal), then softmax-weighted or plain weighted sums of v, and the output transform. Layouts
 * as singlePrefillReference. out only (a variant without softmax has no lse).
 */
export function variantPrefillReference(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, dims: PrefillDims,
  opts: VariantReferenceOptions): Float64Array {
  const { numQoHeads: Hq, numKvHeads: Hkv, headDimQk: Dqk, headDimVo: Dvo } = dims;
  const group = Hq / Hkv;
  const qoLen = q.length / (Hq * Dqk), kvLen = k.length / (Hkv * Dqk), d = kvLen - qoLen;
  const scale = opts.smScale ?? 1 / Math.sqrt(Dqk);
  const out = new Float64Array(qoLen * Hq * Dvo);
  const index = (i: number, j: number, h: number): VariantIndex =>
    ({ batchIdx: opts.batchIdx ?? 0, qoIdx: i, kvIdx: j, qoHeadIdx: h, kvHeadIdx: Math.floor(h / group), qoLen, kvLen, qoRow: (opts.qoRow0 ?? 0) + i });
  // The element transforms of k (per key and kv head) and q (per row and head), applied once.
  const kt = Float64Array.from(k, (x, e) => {
    const dim = e % Dqk, hk = Math.floor(e / Dqk) % Hkv, j = Math.floor(e / (Dqk * Hkv));
    return opts.keyTransform ? opts.keyTransform(x, index(-1, j, hk * group), dim) : x;
  });
  const qt = Float64Array.from(q, (x, e) => {
    const dim = e % Dqk, h = Math.floor(e / Dqk) % Hq, i = Math.floor(e / (Dqk * Hq));
    return opts.queryTransform ? opts.queryTransform(x, index(i, -1, h), dim) : x;
  });
  for (let i = 0; i < qoLen; ++i) {
    for (let h = 0; h < Hq; ++h) {
      const hk = Math.floor(h / group);
      const weights: number[] = [], keys: number[] = [];
      for (let j = 0; j < kvLen; ++j) {
        const ix = index(i, j, h);
        if (opts.causal && j > i + d) continue;
        if (opts.mask && !opts.mask(ix)) continue;
        let dot = 0;
        for (let x = 0; x < Dqk; ++x) dot += qt[(i * Hq + h) * Dqk + x]! * kt[(j * Hkv + hk) * Dqk + x]!;
        const logit = dot * scale;
        weights.push(opts.transform ? opts.transform(logit, ix) : logit);
        keys.push(j);
      }
      if (opts.useSoftmax ?? true) {
        if (weights.length === 0) continue;
        const m = Math.max(...weights);
        let sum = 0;
        for (let t = 0; t < weights.length; ++t) sum += (weights[t] = Math.exp(weights[t]! - m));
        for (let t = 0; t < weights.length; ++t) weights[t]! /= sum;
      }
      const o = (i * Hq + h) * Dvo;
      weights.forEach((w, t) => {
        for (let x = 0; x < Dvo; ++x) out[o + x]! += w * v[(keys[t]! * Hkv + hk) * Dvo + x]!;
      });
    }
  }
  if (opts.outputTransform) {
    const f = opts.outputTransform;
    out.forEach((x, e) => {
      const h = Math.floor(e / Dvo) % Hq, i = Math.floor(e / (Dvo * Hq));
      out[e] = f(x, index(i, -1, h), e % Dvo);
    });
  }
  return out;
}

// Float64 reference for decode attention (one query token per request) and for reading a
// FlashInfer paged KV cache, written from the definitions, independently of native/src/attention:
// plain loops over Float64Array data, Math.exp / Math.log / Math.tanh / Math.cos / Math.sin.
//
// Definitions (qo head h uses kv head floor(h / (numQoHeads / numKvHeads))):
//   logit_j = smScale * kScale * dot(q', k'_j) + alibi_j
//   logit_j = cap * tanh(logit_j / cap)                        when logitsSoftCap = cap > 0
//   key j is visible iff windowLeft < 0 or j >= kvLen - 1 - windowLeft
//   p_j = softmax over visible keys; out = vScale * sum_j p_j v_j; lse = ln(sum_j exp(logit_j))
//   no visible key (kvLen 0): out = 0, lse = -Infinity
// ROPE_LLAMA rotates q (position kvLen - 1) and k_j (position j) "rotate half" style;
// ALIBI adds slope_h * (j - (kvLen - 1)).

export type PosEncodingMode = "NONE" | "ROPE_LLAMA" | "ALIBI";
export type KvLayout = "NHD" | "HND";

export interface DecodeReferenceOptions {
  /** Default 1 / sqrt(headDim). */
  smScale?: number;
  /** 0 (default): off. */
  logitsSoftCap?: number;
  /** -1 (default): off. */
  windowLeft?: number;
  /** Default "NONE". */
  posEncodingMode?: PosEncodingMode;
  /** Default 1. */
  ropeScale?: number;
  /** Default 1e4. */
  ropeTheta?: number;
  /** Default 1. */
  kScale?: number;
  /** Default 1. */
  vScale?: number;
}

export interface DecodeDims {
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
}

export interface DecodeReferenceResult {
  /** [numQoHeads, headDim] */
  out: Float64Array;
  /** [numQoHeads], natural log; -Infinity when no key is visible. */
  lse: Float64Array;
  /**
   * [numQoHeads, headDim]: vScale * sum_j p_j |v_j|, the size of the terms the output sums. A
   * kernel that rounds p to a format of unit roundoff u before P V (every tensor-core path: the
   * mma takes p in the dtype of V) is off by up to u times this; see pRoundoff in the tests.
   */
  magnitude: Float64Array;
}

function checkDims({ numQoHeads, numKvHeads, headDim }: DecodeDims): number {
  if (!(numQoHeads > 0 && numKvHeads > 0 && numQoHeads % numKvHeads === 0)) {
    throw new Error(`reference: numQoHeads ${numQoHeads} is not a positive multiple of numKvHeads ${numKvHeads}`);
  }
  if (!(headDim > 0 && headDim % 2 === 0)) throw new Error(`reference: headDim ${headDim} must be positive and even`);
  return numQoHeads / numKvHeads;
}

/** ALiBi slope of qo head `head` among `numHeads` heads. */
export function alibiSlope(head: number, numHeads: number): number {
  const n = 2 ** Math.floor(Math.log2(numHeads));
  return head < n ? 2 ** ((-8 * (head + 1)) / n) : 2 ** ((-4 * (2 * (head - n) + 1)) / n);
}

/**
 * Llama RoPE ("rotate half", non-interleaved) of x[offset .. offset + headDim) at position `pos`,
 * returned as a new array of headDim values.
 */
export function llamaRope(
  x: ArrayLike<number>,
  offset: number,
  headDim: number,
  pos: number,
  ropeScale = 1,
  ropeTheta = 1e4,
): Float64Array {
  const half = headDim / 2;
  const y = new Float64Array(headDim);
  for (let d = 0; d < half; ++d) {
    const freq = (1 / ropeScale) * Math.pow(ropeTheta, (-2 * d) / headDim);
    const angle = pos * freq;
    const c = Math.cos(angle), s = Math.sin(angle);
    const a = x[offset + d]!, b = x[offset + d + half]!;
    y[d] = a * c - b * s;
    y[d + half] = b * c + a * s;
  }
  return y;
}

/**
 * The logits of every qo head over the kvLen keys: [numQoHeads][kvLen], with -Infinity for
 * masked keys. q is [numQoHeads, headDim], k is [kvLen, numKvHeads, headDim] row-major.
 */
export function decodeLogits(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  dims: DecodeDims,
  opts: DecodeReferenceOptions = {},
): Float64Array[] {
  const group = checkDims(dims);
  const { numQoHeads, numKvHeads, headDim } = dims;
  if (q.length !== numQoHeads * headDim) throw new Error(`reference: q has ${q.length} values, expected ${numQoHeads * headDim}`);
  if (k.length % (numKvHeads * headDim) !== 0) throw new Error(`reference: k has ${k.length} values, not a multiple of ${numKvHeads * headDim}`);
  const kvLen = k.length / (numKvHeads * headDim);
  const smScale = opts.smScale ?? 1 / Math.sqrt(headDim);
  const cap = opts.logitsSoftCap ?? 0;
  const windowLeft = opts.windowLeft ?? -1;
  const mode = opts.posEncodingMode ?? "NONE";
  const ropeScale = opts.ropeScale ?? 1, ropeTheta = opts.ropeTheta ?? 1e4;
  const scale = smScale * (opts.kScale ?? 1);
  const qPos = kvLen - 1;
  const firstVisible = windowLeft < 0 ? 0 : Math.max(0, kvLen - 1 - windowLeft);

  // Keys of each kv head, rotated when RoPE is on: keys[kvHead][j] is a headDim vector.
  const keyRow = (kvHead: number, j: number): { data: ArrayLike<number>; offset: number } => ({
    data: k,
    offset: (j * numKvHeads + kvHead) * headDim,
  });
  const rotatedKeys: Float64Array[][] | null =
    mode === "ROPE_LLAMA"
      ? Array.from({ length: numKvHeads }, (_, kvHead) =>
          Array.from({ length: kvLen }, (_, j) =>
            j < firstVisible ? new Float64Array(0) : llamaRope(k, (j * numKvHeads + kvHead) * headDim, headDim, j, ropeScale, ropeTheta),
          ),
        )
      : null;

  const logits: Float64Array[] = [];
  for (let h = 0; h < numQoHeads; ++h) {
    const kvHead = Math.floor(h / group);
    const qh = mode === "ROPE_LLAMA" ? llamaRope(q, h * headDim, headDim, qPos, ropeScale, ropeTheta) : null;
    const slope = mode === "ALIBI" ? alibiSlope(h, numQoHeads) : 0;
    const row = new Float64Array(kvLen).fill(-Infinity);
    for (let j = firstVisible; j < kvLen; ++j) {
      let dot = 0;
      if (rotatedKeys && qh) {
        const kj = rotatedKeys[kvHead]![j]!;
        for (let d = 0; d < headDim; ++d) dot += qh[d]! * kj[d]!;
      } else {
        const { data, offset } = keyRow(kvHead, j);
        const qo = h * headDim;
        for (let d = 0; d < headDim; ++d) dot += q[qo + d]! * data[offset + d]!;
      }
      let logit = scale * dot;
      if (mode === "ALIBI") logit += slope * (j - qPos);
      if (cap > 0) logit = cap * Math.tanh(logit / cap);
      row[j] = logit;
    }
    logits.push(row);
  }
  return logits;
}

/** Softmax weights of one row of logits (-Infinity entries get weight 0; all masked: all 0). */
export function softmaxWeights(logits: ArrayLike<number>): { weights: Float64Array; lse: number } {
  let max = -Infinity;
  for (let j = 0; j < logits.length; ++j) max = Math.max(max, logits[j]!);
  const weights = new Float64Array(logits.length);
  if (max === -Infinity) return { weights, lse: -Infinity };
  let sum = 0;
  for (let j = 0; j < logits.length; ++j) {
    const e = logits[j] === -Infinity ? 0 : Math.exp(logits[j]! - max);
    weights[j] = e;
    sum += e;
  }
  for (let j = 0; j < logits.length; ++j) weights[j]! /= sum;
  return { weights, lse: max + Math.log(sum) };
}

/**
 * Decode attention for one request: q [numQoHeads, headDim], k and v [kvLen, numKvHeads,
 * headDim] (row-major NHD, already float64 values). Returns out [numQoHeads, headDim] and
 * lse [numQoHeads].
 */
export function singleDecodeReference(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dims: DecodeDims,
  opts: DecodeReferenceOptions = {},
): DecodeReferenceResult {
  const group = checkDims(dims);
  const { numQoHeads, numKvHeads, headDim } = dims;
  if (v.length !== k.length) throw new Error(`reference: v has ${v.length} values, k has ${k.length}`);
  const vScale = opts.vScale ?? 1;
  const logits = decodeLogits(q, k, dims, opts);
  const out = new Float64Array(numQoHeads * headDim);
  const lse = new Float64Array(numQoHeads);
  const magnitude = new Float64Array(numQoHeads * headDim);
  for (let h = 0; h < numQoHeads; ++h) {
    const kvHead = Math.floor(h / group);
    const { weights, lse: l } = softmaxWeights(logits[h]!);
    lse[h] = l;
    const acc = new Float64Array(headDim), abs = new Float64Array(headDim);
    for (let j = 0; j < weights.length; ++j) {
      const p = weights[j]!;
      if (p === 0) continue;
      const vo = (j * numKvHeads + kvHead) * headDim;
      for (let d = 0; d < headDim; ++d) {
        acc[d]! += p * v[vo + d]!;
        abs[d]! += p * Math.abs(v[vo + d]!);
      }
    }
    for (let d = 0; d < headDim; ++d) {
      out[h * headDim + d] = vScale * acc[d]!;
      magnitude[h * headDim + d] = Math.abs(vScale) * abs[d]!;
    }
  }
  return { out, lse, magnitude };
}

// ------------------------------------------------------------------ paged KV cache

export interface PageTable {
  /** [batch + 1] */
  indptr: ArrayLike<number>;
  /** [indptr[batch]] page indices */
  indices: ArrayLike<number>;
  /** [batch] */
  lastPageLen: ArrayLike<number>;
}

export interface PagedCacheDims {
  pageSize: number;
  numKvHeads: number;
  headDim: number;
  /** "NHD": each of k and v is [maxPages, pageSize, numKvHeads, headDim]; "HND": [maxPages, numKvHeads, pageSize, headDim]. */
  layout: KvLayout;
}

export interface RequestKV {
  kvLen: number;
  /** [kvLen, numKvHeads, headDim] row-major */
  k: Float64Array;
  v: Float64Array;
}

/** kvLen of request i: (numPages - 1) * pageSize + lastPageLen, or 0 with no pages. */
export function requestKvLen(table: PageTable, i: number, pageSize: number): number {
  const pages = table.indptr[i + 1]! - table.indptr[i]!;
  return pages === 0 ? 0 : (pages - 1) * pageSize + table.lastPageLen[i]!;
}

/**
 * Gathers every request's keys and values from a paged cache (k and v given separately as
 * float64 views of the whole cache) into contiguous [kvLen, numKvHeads, headDim] arrays.
 */
export function gatherPagedKV(
  table: PageTable,
  cache: { k: ArrayLike<number>; v: ArrayLike<number> },
  dims: PagedCacheDims,
): RequestKV[] {
  const { pageSize, numKvHeads, headDim, layout } = dims;
  const pageElems = pageSize * numKvHeads * headDim;
  const maxPages = cache.k.length / pageElems;
  if (!Number.isInteger(maxPages) || cache.v.length !== cache.k.length) {
    throw new Error(`reference: cache of ${cache.k.length}/${cache.v.length} values is not whole pages of ${pageElems}`);
  }
  const batch = table.indptr.length - 1;
  const out: RequestKV[] = [];
  for (let i = 0; i < batch; ++i) {
    const kvLen = requestKvLen(table, i, pageSize);
    const k = new Float64Array(kvLen * numKvHeads * headDim);
    const v = new Float64Array(kvLen * numKvHeads * headDim);
    for (let t = 0; t < kvLen; ++t) {
      const page = table.indices[table.indptr[i]! + Math.floor(t / pageSize)]!;
      if (!(page >= 0 && page < maxPages)) throw new Error(`reference: page ${page} out of range [0, ${maxPages})`);
      const slot = t % pageSize;
      for (let h = 0; h < numKvHeads; ++h) {
        const src = page * pageElems + (layout === "NHD" ? (slot * numKvHeads + h) * headDim : (h * pageSize + slot) * headDim);
        const dst = (t * numKvHeads + h) * headDim;
        for (let d = 0; d < headDim; ++d) {
          k[dst + d] = cache.k[src + d]!;
          v[dst + d] = cache.v[src + d]!;
        }
      }
    }
    out.push({ kvLen, k, v });
  }
  return out;
}

/** [kvLen, numKvHeads, headDim] (NHD) -> [numKvHeads, kvLen, headDim] (HND), row-major. */
export function nhdToHnd(x: ArrayLike<number>, numKvHeads: number, headDim: number): Float64Array {
  const kvLen = x.length / (numKvHeads * headDim);
  const y = new Float64Array(x.length);
  for (let t = 0; t < kvLen; ++t)
    for (let h = 0; h < numKvHeads; ++h)
      for (let d = 0; d < headDim; ++d) y[(h * kvLen + t) * headDim + d] = x[(t * numKvHeads + h) * headDim + d]!;
  return y;
}

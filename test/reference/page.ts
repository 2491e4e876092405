// Integer/float64 references of the page family (FlashInfer's flashinfer.page).
import { type FloatFormat, roundToFormat } from "./dtype.ts";

/** seqLens[b] = (pages - 1) * pageSize + lastPageLen[b] with pages > 0, else 0. */
export function seqLensReference(indptr: ArrayLike<number>, lastPageLen: ArrayLike<number>, pageSize: number): number[] {
  const out: number[] = [];
  for (let b = 0; b + 1 < indptr.length; ++b) {
    const pages = indptr[b + 1]! - indptr[b]!;
    out.push(pages > 0 ? (pages - 1) * pageSize + lastPageLen[b]! : 0);
  }
  return out;
}

/** batchIndices/positions of appended tokens (the last tokens of each request). */
export function batchIndicesPositionsReference(appendIndptr: ArrayLike<number>, seqLens: ArrayLike<number>): { batchIndices: number[]; positions: number[] } {
  const batchIndices: number[] = [], positions: number[] = [];
  for (let b = 0; b + 1 < appendIndptr.length; ++b) {
    const start = appendIndptr[b]!, end = appendIndptr[b + 1]!;
    for (let j = start; j < end; ++j) {
      batchIndices.push(b);
      positions.push(seqLens[b]! - (end - start) + (j - start));
    }
  }
  return { batchIndices, positions };
}

export interface AppendLayout {
  pageSize: number;
  numKvHeads: number;
  headDim: number;
  layout: "NHD" | "HND";
}

/** Element offset of (page, slot, head, dim) in one K or V cache [maxPages, ...page] (contiguous). */
export function cacheOffset(l: AppendLayout, page: number, slot: number, head: number, d: number): number {
  const { pageSize: P, numKvHeads: H, headDim: D } = l;
  return l.layout === "NHD" ? ((page * P + slot) * H + head) * D + d : ((page * H + head) * P + slot) * D + d;
}

/**
 * The bits of one K (or V) cache after an append: `before` holds the cache's bit patterns
 * (contiguous [maxPages, ...page]), `values` the appended float64 values [nnz, H, D]; each is
 * rounded to the cache format (nearest even). Returns the new bits and a mask of written elements.
 */
export function appendReference(
  before: ArrayLike<number>,
  values: ArrayLike<number>,
  batchIndices: ArrayLike<number>,
  positions: ArrayLike<number>,
  indices: ArrayLike<number>,
  indptr: ArrayLike<number>,
  l: AppendLayout,
  format: FloatFormat,
): { bits: number[]; written: Uint8Array } {
  const bits = Array.from(before);
  const written = new Uint8Array(bits.length);
  const { pageSize: P, numKvHeads: H, headDim: D } = l;
  for (let j = 0; j < batchIndices.length; ++j) {
    const b = batchIndices[j]!, p = positions[j]!;
    const page = indices[indptr[b]! + Math.floor(p / P)]!, slot = p % P;
    for (let h = 0; h < H; ++h) {
      for (let d = 0; d < D; ++d) {
        const o = cacheOffset(l, page, slot, h, d);
        bits[o] = roundToFormat(values[(j * H + h) * D + d]!, format).bits;
        written[o] = 1;
      }
    }
  }
  return { bits, written };
}

// Float64 reference for merging attention states (lib/cascade.ts), written from the definition
// rather than from native/src/cascade: for each (row, head) the merged log-sum-exp is
// s = log(sum_i exp(s_i)) and the merged output v = sum_i v_i * exp(s_i - s), where a state with
// s_i = -Infinity is empty (contributes nothing, its v is never looked at). With no non-empty
// state the result is v = 0, s = -Infinity.

export interface MergeReference {
  /** [seqLen, numHeads, headDim], row-major. */
  v: Float64Array;
  /** [seqLen, numHeads], row-major. */
  s: Float64Array;
  /**
   * Per v element, sum_i w_i * |v_i|: the magnitude that rounding errors of a float32 merge are
   * relative to (|v| itself can be far smaller after cancellation).
   */
  scale: Float64Array;
}

/**
 * Merges `numStates` states of every (row, head). `s(l, i, h)` and `v(l, i, h, d)` give state i's
 * log-sum-exp and output element d.
 */
export function mergeStatesReference(
  seqLen: number,
  numStates: number,
  numHeads: number,
  headDim: number,
  s: (l: number, i: number, h: number) => number,
  v: (l: number, i: number, h: number, d: number) => number,
): MergeReference {
  const outV = new Float64Array(seqLen * numHeads * headDim);
  const outS = new Float64Array(seqLen * numHeads);
  const scale = new Float64Array(outV.length);
  for (let l = 0; l < seqLen; ++l) {
    for (let h = 0; h < numHeads; ++h) {
      const pair = l * numHeads + h;
      const lse: number[] = [];
      for (let i = 0; i < numStates; ++i) lse.push(s(l, i, h));
      const live = lse.map((x, i) => i).filter((i) => lse[i] !== -Infinity);
      if (live.length === 0) {
        outS[pair] = -Infinity;
        continue; // v stays 0
      }
      // log(sum exp) with the largest term factored out, so nothing overflows.
      const max = Math.max(...live.map((i) => lse[i]!));
      let sum = 0;
      for (const i of live) sum += Math.exp(lse[i]! - max);
      const merged = max + Math.log(sum);
      outS[pair] = merged;
      for (let d = 0; d < headDim; ++d) {
        let acc = 0, mag = 0;
        for (const i of live) {
          const w = Math.exp(lse[i]! - merged);
          const x = v(l, i, h, d);
          acc += w * x;
          mag += w * Math.abs(x);
        }
        outV[pair * headDim + d] = acc;
        scale[pair * headDim + d] = mag;
      }
    }
  }
  return { v: outV, s: outS, scale };
}

/** mergeStatesReference for two states given as row-major [seqLen, numHeads, headDim] / [seqLen, numHeads] arrays. */
export function mergeStateReference(
  seqLen: number,
  numHeads: number,
  headDim: number,
  vA: ArrayLike<number>,
  sA: ArrayLike<number>,
  vB: ArrayLike<number>,
  sB: ArrayLike<number>,
): MergeReference {
  return mergeStatesReference(
    seqLen, 2, numHeads, headDim,
    (l, i, h) => (i === 0 ? sA : sB)[l * numHeads + h]!,
    (l, i, h, d) => (i === 0 ? vA : vB)[(l * numHeads + h) * headDim + d]!,
  );
}

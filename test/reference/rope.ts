// Float64 references of the rope family (row-major [nnz, heads, headDim] arrays).

/** freq_i = theta^(-2i / rotaryDim) / scale (Llama 3.1: smoothed by wavelength), i < rotaryDim / 2. */
export function ropeFrequencies(rotaryDim: number, ropeScale: number, ropeTheta: number,
  llama31?: { lowFreqFactor: number; highFreqFactor: number; oldContextLen: number }): Float64Array {
  const f = new Float64Array(rotaryDim / 2);
  for (let i = 0; i < f.length; ++i) {
    const base = ropeTheta ** (-2 * i / rotaryDim);
    if (!llama31) {
      f[i] = base / ropeScale;
      continue;
    }
    const wavelen = (2 * Math.PI) / base;
    const lowWavelen = llama31.oldContextLen / llama31.lowFreqFactor, highWavelen = llama31.oldContextLen / llama31.highFreqFactor;
    if (wavelen < highWavelen) f[i] = base;
    else if (wavelen > lowWavelen) f[i] = base / ropeScale;
    else {
      const smooth = (llama31.oldContextLen / wavelen - llama31.lowFreqFactor) / (llama31.highFreqFactor - llama31.lowFreqFactor);
      f[i] = ((1 - smooth) * base) / ropeScale + smooth * base;
    }
  }
  return f;
}

/** Positions of a ragged batch: row j of request i has offsets[i] + j - indptr[i]. */
export function raggedPositions(indptr: readonly number[], offsets: readonly number[]): number[] {
  const pos: number[] = [];
  for (let b = 0; b + 1 < indptr.length; ++b) for (let t = indptr[b]!; t < indptr[b + 1]!; ++t) pos.push(offsets[b]! + t - indptr[b]!);
  return pos;
}

/**
 * Rotates x [nnz, heads, headDim] (row-major values): pair i of row t by angle positions[t] * freq[i]
 * (or with cos/sin given per row by `cosSin(t, i)`); dims past rotaryDim copied.
 */
export function ropeReference(x: ArrayLike<number>, nnz: number, heads: number, headDim: number, rotaryDim: number, interleave: boolean,
  positions: readonly number[], freq: ArrayLike<number> | null, cosSin?: (t: number, i: number) => [number, number]): Float64Array {
  const out = Float64Array.from(x as ArrayLike<number>);
  const half = rotaryDim / 2;
  for (let t = 0; t < nnz; ++t) {
    for (let h = 0; h < heads; ++h) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; ++i) {
        const a = base + (interleave ? 2 * i : i), b = base + (interleave ? 2 * i + 1 : i + half);
        let c: number, s: number;
        if (cosSin) [c, s] = cosSin(t, i);
        else {
          const ang = positions[t]! * freq![i]!;
          c = Math.cos(ang);
          s = Math.sin(ang);
        }
        const xa = x[a]!, xb = x[b]!;
        out[a] = xa * c - xb * s;
        out[b] = xb * c + xa * s;
      }
    }
  }
  return out;
}

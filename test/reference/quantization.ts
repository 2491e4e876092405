// TypeScript reference of bit packing (numpy.packbits / FlashInfer's segment_packbits).

/** numpy.packbits of x (nonzero = 1): ceil(n / 8) bytes, the last zero-padded. */
export function packbitsReference(x: ArrayLike<number>, bitorder: "big" | "little", start = 0, end = x.length): number[] {
  const out: number[] = [];
  for (let b = start; b < end; b += 8) {
    let byte = 0;
    for (let k = 0; k < 8 && b + k < end; ++k) {
      if (x[b + k] !== 0) byte |= 1 << (bitorder === "little" ? k : 7 - k);
    }
    out.push(byte);
  }
  return out;
}

/** Segment packing: each [indptr[i], indptr[i+1]) packed separately; returns y and indptrNew. */
export function segmentPackbitsReference(x: ArrayLike<number>, indptr: ArrayLike<number>, bitorder: "big" | "little"): { y: number[]; indptrNew: number[] } {
  const y: number[] = [];
  const indptrNew = [0];
  for (let i = 0; i + 1 < indptr.length; ++i) {
    y.push(...packbitsReference(x, bitorder, indptr[i]!, indptr[i + 1]!));
    indptrNew.push(y.length);
  }
  return { y, indptrNew };
}

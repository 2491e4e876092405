// float64 reference of block-sparse attention, from the definition: query row m sees key n when
// n lies in a nonzero block of m's block row (and passes the block mask and causal n <= m);
// softmax over what it sees (logits q.k * smScale, optionally soft-capped). Layouts: q [M, Hq, D],
// k [N, Hkv, D], v [N, Hkv, Dvo]; out [M, Hq, Dvo], lse [M, Hq] (natural log; -inf when m sees
// nothing), magnitude [M, Hq, Dvo] = sum_n p_n |v_n| (the scale of the P rounding error).

export interface BlockSparseReferenceOptions {
  M: number;
  N: number;
  R: number;
  C: number;
  indptr: ArrayLike<number>;
  indices: ArrayLike<number>;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  headDimVo: number;
  /** [nnz, R, C] visibility of each element of each nonzero block. */
  mask?: ArrayLike<boolean | number>;
  causal?: boolean;
  smScale?: number;
  logitsSoftCap?: number;
}

export function blockSparseReference(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, o: BlockSparseReferenceOptions) {
  const { M, R, C, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, headDimVo: Dvo } = o;
  const group = Hq / Hkv, scale = o.smScale ?? 1 / Math.sqrt(D), cap = o.logitsSoftCap ?? 0;
  const out = new Float64Array(M * Hq * Dvo), lse = new Float64Array(M * Hq), magnitude = new Float64Array(M * Hq * Dvo);
  for (let m = 0; m < M; ++m) {
    const i = Math.floor(m / R), r = m % R;
    // The keys row m sees, in block order.
    const keys: number[] = [];
    for (let b = o.indptr[i]!; b < o.indptr[i + 1]!; ++b) {
      for (let c = 0; c < C; ++c) {
        const n = o.indices[b]! * C + c;
        if (o.causal && n > m) continue;
        if (o.mask && !o.mask[(b * R + r) * C + c]) continue;
        keys.push(n);
      }
    }
    for (let h = 0; h < Hq; ++h) {
      const hk = Math.floor(h / group);
      const logits = keys.map((n) => {
        let dot = 0;
        for (let d = 0; d < D; ++d) dot += q[(m * Hq + h) * D + d]! * k[(n * Hkv + hk) * D + d]!;
        const x = dot * scale;
        return cap > 0 ? cap * Math.tanh(x / cap) : x;
      });
      if (keys.length === 0) {
        lse[m * Hq + h] = -Infinity;
        continue;
      }
      const mx = Math.max(...logits);
      const w = logits.map((x) => Math.exp(x - mx));
      const sum = w.reduce((a, b) => a + b, 0);
      lse[m * Hq + h] = mx + Math.log(sum);
      keys.forEach((n, t) => {
        const p = w[t]! / sum;
        for (let d = 0; d < Dvo; ++d) {
          const x = v[(n * Hkv + hk) * Dvo + d]!;
          out[(m * Hq + h) * Dvo + d]! += p * x;
          magnitude[(m * Hq + h) * Dvo + d]! += p * Math.abs(x);
        }
      });
    }
  }
  return { out, lse, magnitude };
}

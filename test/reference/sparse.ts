// float64 references of sparse attention, from the definitions. maskedAttention: query row m (head
// h) sees key n when visible(h's kv head, m, n); softmax over what it sees (logits q.k * smScale,
// optionally soft-capped). Layouts: q [M, Hq, D], k [N, Hkv, D], v [N, Hkv, Dvo]; out [M, Hq, Dvo],
// lse [M, Hq] (natural log; -inf when m sees nothing), magnitude [M, Hq, Dvo] = sum_n p_n |v_n|
// (the scale of the P rounding error).

export interface MaskedAttentionDims {
  M: number;
  N: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  headDimVo: number;
  smScale?: number;
  logitsSoftCap?: number;
}

export function maskedAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, o: MaskedAttentionDims,
  visible: (kvHead: number, m: number, n: number) => boolean) {
  const { M, N, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, headDimVo: Dvo } = o;
  const group = Hq / Hkv, scale = o.smScale ?? 1 / Math.sqrt(D), cap = o.logitsSoftCap ?? 0;
  const out = new Float64Array(M * Hq * Dvo), lse = new Float64Array(M * Hq), magnitude = new Float64Array(M * Hq * Dvo);
  for (let m = 0; m < M; ++m) {
    for (let h = 0; h < Hq; ++h) {
      const hk = Math.floor(h / group);
      const keys: number[] = [];
      for (let n = 0; n < N; ++n) if (visible(hk, m, n)) keys.push(n);
      if (keys.length === 0) {
        lse[m * Hq + h] = -Infinity;
        continue;
      }
      const logits = keys.map((n) => {
        let dot = 0;
        for (let d = 0; d < D; ++d) dot += q[(m * Hq + h) * D + d]! * k[(n * Hkv + hk) * D + d]!;
        const x = dot * scale;
        return cap > 0 ? cap * Math.tanh(x / cap) : x;
      });
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

export interface BlockSparseReferenceOptions extends MaskedAttentionDims {
  R: number;
  C: number;
  indptr: ArrayLike<number>;
  indices: ArrayLike<number>;
  /** [nnz, R, C] visibility of each element of each nonzero block. */
  mask?: ArrayLike<boolean | number>;
  causal?: boolean;
}

/** BSR: row m sees key n when n's block column is a nonzero block of m's block row (and the mask and causal n <= m agree). */
export function blockSparseReference(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, o: BlockSparseReferenceOptions) {
  const block = new Map<string, number>(); // "blockRow,blockCol" -> position in indices
  for (let i = 0; i + 1 < o.indptr.length; ++i) for (let b = o.indptr[i]!; b < o.indptr[i + 1]!; ++b) block.set(`${i},${o.indices[b]}`, b);
  return maskedAttention(q, k, v, o, (_, m, n) => {
    const b = block.get(`${Math.floor(m / o.R)},${Math.floor(n / o.C)}`);
    if (b === undefined || (o.causal && n > m)) return false;
    return !o.mask || !!o.mask[(b * o.R + (m % o.R)) * o.C + (n % o.C)];
  });
}

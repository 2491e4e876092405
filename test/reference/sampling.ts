// Float64 references of the sampling family: exact filtered-and-renormalized distributions,
// softmax, renormalization and top-k masking. A token is kept by its probability p; ties at a
// threshold are all kept (FlashInfer's pivot semantics).
export interface FilterSpec {
  topK?: number;
  topP?: number;
  minP?: number;
  /** top-p measured within the top k (filter_apply_order "top_k_first"); else "joint". */
  topKFirst?: boolean;
}

const sum = (a: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; ++i) s += a[i]!;
  return s;
};

/** Which tokens of `p` the filters keep (probability-0 tokens are never kept). */
export function keptMask(p: ArrayLike<number>, f: FilterSpec): boolean[] {
  const n = p.length;
  const sorted = Array.from(p).sort((a, b) => b - a);
  let keep = Array.from(p, (x) => x > 0);
  if (f.minP !== undefined) {
    const thr = Math.fround(Math.fround(f.minP) * sorted[0]!);
    keep = keep.map((k, i) => k && p[i]! >= thr);
  }
  let inK = Array.from({ length: n }, () => true);
  if (f.topK !== undefined) {
    const kth = f.topK > n ? -Infinity : sorted[f.topK - 1]!;
    inK = Array.from(p, (x) => x >= kth);
    keep = keep.map((k, i) => k && inK[i]!);
  }
  if (f.topP !== undefined) {
    // mass strictly above each value; total over the top k for top_k_first
    const total = f.topKFirst ? sum(Array.from(p).filter((_, i) => inK[i])) : sum(p);
    const target = Math.fround(f.topP) * total;
    const above = new Map<number, number>();
    let acc = 0;
    for (let i = 0; i < n; ) {
      let j = i;
      while (j < n && sorted[j] === sorted[i]) ++j;
      above.set(sorted[i]!, acc);
      for (let t = i; t < j; ++t) acc += sorted[t]!;
      i = j;
    }
    keep = keep.map((k, i) => k && above.get(p[i]!)! < target);
  }
  return keep;
}

/** The exact distribution sampled by a filtered sampler: p on the kept tokens, renormalized. */
export function filteredDistribution(p: ArrayLike<number>, f: FilterSpec): number[] {
  const keep = keptMask(p, f);
  const kept = Array.from(p, (x, i) => (keep[i] ? x : 0));
  const m = sum(kept);
  return kept.map((x) => x / m);
}

export function softmaxReference(x: ArrayLike<number>, temperature = 1): number[] {
  let mx = -Infinity;
  for (let i = 0; i < x.length; ++i) mx = Math.max(mx, x[i]! / temperature);
  const e = Array.from(x, (v) => (mx === -Infinity ? 0 : Math.exp(v / temperature - mx)));
  const s = sum(e);
  return e.map((v) => (s > 0 ? v / s : 0));
}

/** top-k or top-p renormalized probabilities (FlashInfer's top_k_renorm_probs / top_p_renorm_probs). */
export function renormReference(p: ArrayLike<number>, f: FilterSpec): number[] {
  let keep: boolean[];
  if (f.topK !== undefined) {
    const kth = f.topK > p.length ? -Infinity : Array.from(p).sort((a, b) => b - a)[f.topK - 1]!;
    keep = Array.from(p, (x) => x >= kth);
  } else {
    keep = keptMask(p, f).map((k, i) => k || p[i] === 0);
  }
  const kept = Array.from(p, (x, i) => (keep[i] ? x : 0));
  const m = sum(kept);
  return kept.map((x) => x / m);
}

/** logits outside the top k (ties kept) set to -inf. */
export function topKMaskReference(x: ArrayLike<number>, k: number): number[] {
  const clean = Array.from(x, (v) => (Number.isNaN(v) ? -Infinity : v));
  const kth = k > x.length ? -Infinity : [...clean].sort((a, b) => b - a)[k - 1]!;
  return clean.map((v) => (v >= kth ? v : -Infinity));
}

/**
 * Chi-square statistic of `counts` against `probs` (expected = probs * total), categories with
 * expected count below 5 pooled; returns the statistic and its degrees of freedom.
 */
export function chiSquare(counts: ArrayLike<number>, probs: ArrayLike<number>): { stat: number; df: number } {
  const total = sum(counts);
  let stat = 0, df = -1, poolE = 0, poolO = 0;
  for (let i = 0; i < probs.length; ++i) {
    const e = probs[i]! * total;
    if (e >= 5) {
      stat += (counts[i]! - e) ** 2 / e;
      ++df;
    } else {
      poolE += e;
      poolO += counts[i]!;
    }
  }
  if (poolE > 0) {
    stat += (poolO - poolE) ** 2 / Math.max(poolE, 1e-12);
    ++df;
  }
  return { stat, df: Math.max(df, 1) };
}

/**
 * Upper quantile of chi-square with df degrees of freedom at significance 1e-6 (Wilson-Hilferty).
 * The suite runs about 30 such checks per device on rows drawn from Math.random, so at 1e-3 one
 * run in ~30 failed by chance (CI did, on samplingFromProbs [cpu]); at 1e-6 a chance failure is
 * ~1 in 30000 runs. The cost: at 20000 draws and df 100 the threshold rises from 150 to 182, so
 * a bias must move a p = 0.1 token by ~20% (not ~15%) to fail; drawing a filtered-out token fails
 * outright, whatever the statistic.
 */
export function chiSquareCritical(df: number): number {
  const z = 4.753424; // standard normal 1 - 1e-6 quantile
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

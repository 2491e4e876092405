// A Llama forward pass written plainly in float64 TypeScript from the architecture's definition
// (no library kernels): the reference of the serving example's model (examples/llama/model.ts).
import type { LlamaConfig } from "../../examples/llama/checkpoint.ts";

export type Weights = Record<string, Float64Array>;

/** y[o] = sum_i w[o, i] x[i] for w [out, in] row-major. */
function linear(w: Float64Array, x: Float64Array, out: number): Float64Array {
  const n = x.length, y = new Float64Array(out);
  for (let o = 0; o < out; ++o) {
    let s = 0;
    for (let i = 0; i < n; ++i) s += w[o * n + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

function rmsnorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ms = 0;
  for (const v of x) ms += v * v;
  const r = 1 / Math.sqrt(ms / x.length + eps);
  return x.map((v, i) => v * r * w[i]!);
}

/**
 * Frequency of rotation pair i: theta^(-2i / D), and with Llama 3.1 scaling, divided by the
 * factor for wavelengths beyond the original context / lowFreqFactor, kept below the original
 * context / highFreqFactor, interpolated between.
 */
function frequency(c: LlamaConfig, i: number, D: number): number {
  const f = Math.pow(c.ropeTheta, (-2 * i) / D), r = c.ropeScaling;
  if (!r) return f;
  const wavelen = (2 * Math.PI) / f;
  if (wavelen < r.originalMaxPositionEmbeddings / r.highFreqFactor) return f;
  if (wavelen > r.originalMaxPositionEmbeddings / r.lowFreqFactor) return f / r.factor;
  const smooth = (r.originalMaxPositionEmbeddings / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
  return (1 - smooth) * (f / r.factor) + smooth * f;
}

/** Rotate-half RoPE of each head of x ([heads * D]) at position pos. */
function rope(c: LlamaConfig, x: Float64Array, heads: number, D: number, pos: number): void {
  for (let h = 0; h < heads; ++h) {
    for (let i = 0; i < D / 2; ++i) {
      const angle = pos * frequency(c, i, D);
      const cos = Math.cos(angle), sin = Math.sin(angle);
      const a = x[h * D + i]!, b = x[h * D + i + D / 2]!;
      x[h * D + i] = a * cos - b * sin;
      x[h * D + i + D / 2] = b * cos + a * sin;
    }
  }
}

/** Logits [vocab] of the last token of `tokens` (positions 0..n-1), causal attention over all of them. */
export function llamaLogits(c: LlamaConfig, w: Weights, tokens: readonly number[]): Float64Array {
  const H = c.hiddenSize, D = c.headDim, Hq = c.numHeads, Hkv = c.numKvHeads, G = Hq / Hkv, n = tokens.length;
  let x = tokens.map((t) => w["model.embed_tokens.weight"]!.slice(t * H, (t + 1) * H));
  for (let l = 0; l < c.numLayers; ++l) {
    const p = `model.layers.${l}`;
    const h = x.map((xi) => rmsnorm(xi, w[`${p}.input_layernorm.weight`]!, c.rmsNormEps));
    const q = h.map((hi, t) => {
      const v = linear(w[`${p}.self_attn.q_proj.weight`]!, hi, Hq * D);
      rope(c, v, Hq, D, t);
      return v;
    });
    const k = h.map((hi, t) => {
      const v = linear(w[`${p}.self_attn.k_proj.weight`]!, hi, Hkv * D);
      rope(c, v, Hkv, D, t);
      return v;
    });
    const v = h.map((hi) => linear(w[`${p}.self_attn.v_proj.weight`]!, hi, Hkv * D));
    x = x.map((xi, t) => {
      const attn = new Float64Array(Hq * D);
      for (let hq = 0; hq < Hq; ++hq) {
        const hk = Math.floor(hq / G);
        const logits = Array.from({ length: t + 1 }, (_, j) => {
          let s = 0;
          for (let d = 0; d < D; ++d) s += q[t]![hq * D + d]! * k[j]![hk * D + d]!;
          return s / Math.sqrt(D);
        });
        const m = Math.max(...logits);
        const e = logits.map((s) => Math.exp(s - m));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= t; ++j) for (let d = 0; d < D; ++d) attn[hq * D + d]! += (e[j]! / sum) * v[j]![hk * D + d]!;
      }
      const o = linear(w[`${p}.self_attn.o_proj.weight`]!, attn, H);
      const x1 = xi.map((a, i) => a + o[i]!);
      const h2 = rmsnorm(x1, w[`${p}.post_attention_layernorm.weight`]!, c.rmsNormEps);
      const g = linear(w[`${p}.mlp.gate_proj.weight`]!, h2, c.intermediateSize);
      const u = linear(w[`${p}.mlp.up_proj.weight`]!, h2, c.intermediateSize);
      const a = g.map((gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]!);
      const down = linear(w[`${p}.mlp.down_proj.weight`]!, a, H);
      return x1.map((b, i) => b + down[i]!);
    });
  }
  const last = rmsnorm(x[n - 1]!, w["model.norm.weight"]!, c.rmsNormEps);
  return linear(w["lm_head.weight"]!, last, c.vocabSize);
}

// Llama-architecture checkpoints: the configuration, Hugging Face tensor names and shapes, and a
// writer of synthetic checkpoints with seeded random weights (tiny ones for CI, real Llama shapes
// for the GPU). The configuration travels in the file's metadata ("config": JSON).
//   bun examples/llama/checkpoint.ts <out.safetensors> [tiny|llama-3.1-8b] [seed]
import * as fi from "../../lib/index.ts";
import { BYTE_VOCAB } from "./tokenizer.ts";
import { type SafetensorsFile, writeSafetensors } from "./safetensors.ts";

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  dtype: "bfloat16" | "float16" | "float32";
  /** Llama 3.1 RoPE frequency scaling (absent: plain RoPE). */
  ropeScaling?: { factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };
}

export const PRESETS: Record<string, LlamaConfig> = {
  tiny: { vocabSize: BYTE_VOCAB, hiddenSize: 128, intermediateSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32, ropeTheta: 10000,
    rmsNormEps: 1e-5, dtype: "float16" },
  // The tiny shape at head dim 64, the smallest the CUDA attention kernels are built for: the tiny model on a GPU.
  "tiny-d64": { vocabSize: BYTE_VOCAB, hiddenSize: 128, intermediateSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64, ropeTheta: 10000,
    rmsNormEps: 1e-5, dtype: "float16" },
  "llama-3.1-8b": { vocabSize: 128256, hiddenSize: 4096, intermediateSize: 14336, numLayers: 32, numHeads: 32, numKvHeads: 8, headDim: 128,
    ropeTheta: 500000, rmsNormEps: 1e-5, dtype: "bfloat16", ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } },
};

/** Every tensor of a checkpoint: Hugging Face name -> shape ([out features, in features] for projections). */
export function tensorShapes(c: LlamaConfig): Record<string, number[]> {
  const shapes: Record<string, number[]> = { "model.embed_tokens.weight": [c.vocabSize, c.hiddenSize] };
  for (let l = 0; l < c.numLayers; ++l) {
    const p = `model.layers.${l}`;
    shapes[`${p}.input_layernorm.weight`] = [c.hiddenSize];
    shapes[`${p}.self_attn.q_proj.weight`] = [c.numHeads * c.headDim, c.hiddenSize];
    shapes[`${p}.self_attn.k_proj.weight`] = [c.numKvHeads * c.headDim, c.hiddenSize];
    shapes[`${p}.self_attn.v_proj.weight`] = [c.numKvHeads * c.headDim, c.hiddenSize];
    shapes[`${p}.self_attn.o_proj.weight`] = [c.hiddenSize, c.numHeads * c.headDim];
    shapes[`${p}.post_attention_layernorm.weight`] = [c.hiddenSize];
    shapes[`${p}.mlp.gate_proj.weight`] = [c.intermediateSize, c.hiddenSize];
    shapes[`${p}.mlp.up_proj.weight`] = [c.intermediateSize, c.hiddenSize];
    shapes[`${p}.mlp.down_proj.weight`] = [c.hiddenSize, c.intermediateSize];
  }
  shapes["model.norm.weight"] = [c.hiddenSize];
  shapes["lm_head.weight"] = [c.vocabSize, c.hiddenSize];
  return shapes;
}

function checkConfig(c: LlamaConfig): LlamaConfig {
  if (typeof c !== "object" || c === null || Array.isArray(c)) throw new fi.FlashInferError("invalid_argument", "config: expected a JSON object");
  for (const key of ["vocabSize", "hiddenSize", "intermediateSize", "numLayers", "numHeads", "numKvHeads", "headDim"] as const)
    if (!Number.isInteger(c[key]) || c[key] < 1 || c[key] > 0x7fffffff) throw new fi.FlashInferError("invalid_argument", `config.${key}: expected an integer in 1..2^31 - 1, got ${String(c[key])}`);
  if (c.numHeads % c.numKvHeads !== 0) throw new fi.FlashInferError("invalid_argument", `config.numHeads: ${c.numHeads} is not a multiple of numKvHeads (${c.numKvHeads})`);
  if (!(c.ropeTheta > 0) || !(c.rmsNormEps > 0)) throw new fi.FlashInferError("invalid_argument", "config.ropeTheta, config.rmsNormEps: expected positive numbers");
  if (!["bfloat16", "float16", "float32"].includes(c.dtype)) throw new fi.FlashInferError("invalid_argument", `config.dtype: expected bfloat16, float16 or float32, got ${String(c.dtype)}`);
  const r = c.ropeScaling;
  if (r !== undefined && !(r.factor >= 1 && r.lowFreqFactor > 0 && r.highFreqFactor > r.lowFreqFactor && r.originalMaxPositionEmbeddings >= 1))
    throw new fi.FlashInferError("invalid_argument", `config.ropeScaling: expected factor >= 1, 0 < lowFreqFactor < highFreqFactor, originalMaxPositionEmbeddings >= 1, got ${JSON.stringify(r)}`);
  return c;
}

/** The configuration stored in a checkpoint's metadata. */
export function readConfig(file: SafetensorsFile): LlamaConfig {
  const text = file.metadata.config;
  if (text === undefined) throw new fi.FlashInferError("invalid_argument", `${file.path}: no "config" in the metadata`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new fi.FlashInferError("invalid_argument", `${file.path}: the "config" metadata is not JSON (${(e as Error).message})`);
  }
  const c = checkConfig(parsed as LlamaConfig);
  // Each layer has 9 tensors, the model 3 more: a config claiming more layers than the file holds
  // is refused before its tensor names are listed (2^31 layers would take the process's memory).
  const tensors = 9 * c.numLayers + 3;
  if (tensors > file.entries.size) throw new fi.FlashInferError("invalid_argument", `${file.path}: config.numLayers = ${c.numLayers} needs ${tensors} tensors, the file has ${file.entries.size}`);
  for (const [name, shape] of Object.entries(tensorShapes(c))) {
    const e = file.entries.get(name);
    if (!e) throw new fi.FlashInferError("invalid_argument", `${file.path}: missing tensor "${name}"`);
    if (e.shape.join() !== shape.join()) throw new fi.FlashInferError("invalid_argument", `${file.path}: tensor "${name}" is [${e.shape}], the config says [${shape}]`);
  }
  return c;
}

/**
 * Writes a checkpoint of config `c` with seeded random weights: projections and embeddings
 * normal with std 1 / sqrt(in features) (activations keep their scale through the layers), norm
 * weights 1 + 0.1 * normal. Same seed, same file.
 */
export function writeSyntheticCheckpoint(path: string, c: LlamaConfig, seed = 0): void {
  checkConfig(c);
  const tensors: Record<string, fi.Tensor> = {};
  try {
    let i = 0;
    for (const [name, shape] of Object.entries(tensorShapes(c))) {
      using r = fi.randn(shape, { seed: BigInt(seed) * 1000003n + BigInt(i++), device: "cpu" });
      const values = r.toFloat32Array();
      const isNorm = shape.length === 1;
      const scale = isNorm ? 0.1 : 1 / Math.sqrt(shape[1]!);
      for (let j = 0; j < values.length; ++j) values[j] = (isNorm ? 1 : 0) + scale * values[j]!;
      tensors[name] = fi.tensor(values, shape, { dtype: c.dtype, device: "cpu" });
    }
    writeSafetensors(path, tensors, { config: JSON.stringify(c), format: "pt" });
  } finally {
    Object.values(tensors).forEach((t) => t.dispose());
  }
}

if (import.meta.main) {
  const [out, preset = "tiny", seed = "0"] = process.argv.slice(2);
  const config = PRESETS[preset];
  if (!out || !config) {
    console.log(`usage: bun examples/llama/checkpoint.ts <out.safetensors> [${Object.keys(PRESETS).join("|")}] [seed]`);
    process.exit(2);
  }
  writeSyntheticCheckpoint(out, config, Number(seed));
  console.log(`wrote ${out}: ${preset}, seed ${seed}`);
}

// A Llama-architecture forward pass on the library's ops: embeddings, RMSNorm (the residual add
// fused into it), the q/k/v projection (one GEMM: the three weights concatenated at load), RoPE,
// paged KV append, paged attention (one plan per step serves prefill and decode requests alike;
// run per layer), the output projection, the gate/up projection (one GEMM likewise) with
// SiLU-and-mul, the down projection, the final norm and the LM head for each request's last token.
import * as fi from "../../lib/index.ts";
import { type LlamaConfig, readConfig, tensorShapes } from "./checkpoint.ts";
import { SafetensorsFile } from "./safetensors.ts";

interface LayerWeights {
  inputNorm: fi.Tensor;
  qkv: fi.Tensor; // [(numHeads + 2 * numKvHeads) * headDim, hidden]: q rows, then k, then v
  o: fi.Tensor;
  postNorm: fi.Tensor;
  gateUp: fi.Tensor; // [2 * intermediate, hidden]: gate rows, then up rows
  down: fi.Tensor;
}

/** One step's tokens: requests' new tokens back to back, and the page table after they are appended. */
export interface StepBatch {
  /** New tokens of every request, request after request. */
  tokens: Int32Array;
  /** qoIndptr[r]..qoIndptr[r + 1]: request r's new tokens. */
  qoIndptr: Int32Array;
  /** Sequence position of each new token (its KV slot in its request). */
  positions: Int32Array;
  /** The paged KV table, covering each request's tokens including this step's. */
  kvIndptr: Int32Array;
  kvIndices: Int32Array;
  kvLastPageLen: Int32Array;
  /**
   * Attention as a 2-level cascade (composable formats): consecutive requests that share their
   * first pages form a group; level 0 attends each group's rows to its shared (full) pages once,
   * level 1 each request's rows to its own pages (causal), and the states are merged. Without
   * it, each request attends its whole table.
   */
  cascade?: {
    /** groupIndptr[g]..groupIndptr[g + 1]: the requests of group g (consecutive). */
    groupIndptr: Int32Array;
    sharedIndptr: Int32Array;
    sharedIndices: Int32Array;
    ownIndptr: Int32Array;
    ownIndices: Int32Array;
    ownLastPageLen: Int32Array;
  };
}

/** A step's index arrays on the model's device (int32). */
export interface StepIndices {
  /** Sequence position of each new token. */
  positions: fi.Tensor;
  /** The request of each new token. */
  tokenRequest: fi.Tensor;
  kvIndices: fi.Tensor;
  kvIndptr: fi.Tensor;
  kvLastPageLen: fi.Tensor;
}

/** A step's activations, [tokens, ...] each in the model's dtype. */
export interface Activations {
  residual: fi.Tensor;
  h: fi.Tensor;
  qkv: fi.Tensor;
  attn: fi.Tensor;
  gateUp: fi.Tensor;
  act: fi.Tensor;
}

export class LlamaModel {
  readonly config: LlamaConfig;
  readonly device: fi.Device;
  readonly #embed: fi.Tensor;
  readonly #layers: LayerWeights[];
  readonly #norm: fi.Tensor;
  readonly #lmHead: fi.Tensor;
  readonly #workspace: fi.Tensor;
  readonly #attention: fi.BatchPrefillWithPagedKVCacheWrapper;
  readonly #cascade: fi.MultiLevelCascadeAttentionWrapper;

  /** weight(name) gives a checkpoint tensor (Hugging Face names) on `device`; the model keeps or disposes it. */
  private constructor(config: LlamaConfig, device: fi.Device, weight: (name: string) => fi.Tensor) {
    this.config = config;
    this.device = device;
    const owned: fi.Tensor[] = [];
    const load = (name: string) => {
      const t = weight(name);
      owned.push(t);
      return t;
    };
    try {
      this.#embed = load("model.embed_tokens.weight");
      // Weights that one GEMM applies together: their rows stacked in one tensor.
      const stacked = (names: string[]) => {
        const parts = names.map((n) => weight(n));
        try {
          const rows = parts.reduce((n, t) => n + t.shape[0]!, 0);
          const w = fi.empty([rows, config.hiddenSize], { dtype: config.dtype, device });
          owned.push(w);
          let at = 0;
          for (const t of parts) {
            using dst = w.slice(0, at, at + t.shape[0]!);
            dst.copy_(t);
            at += t.shape[0]!;
          }
          return w;
        } finally {
          parts.forEach((t) => t.dispose());
        }
      };
      this.#layers = Array.from({ length: config.numLayers }, (_, l) => {
        const p = `model.layers.${l}`;
        return {
          inputNorm: load(`${p}.input_layernorm.weight`),
          qkv: stacked(["q_proj", "k_proj", "v_proj"].map((n) => `${p}.self_attn.${n}.weight`)),
          o: load(`${p}.self_attn.o_proj.weight`),
          postNorm: load(`${p}.post_attention_layernorm.weight`),
          gateUp: stacked(["gate_proj", "up_proj"].map((n) => `${p}.mlp.${n}.weight`)),
          down: load(`${p}.mlp.down_proj.weight`),
        };
      });
      this.#norm = load("model.norm.weight");
      this.#lmHead = load("lm_head.weight");
      this.#workspace = fi.empty([128 << 20], { dtype: "uint8", device });
      owned.push(this.#workspace);
      this.#attention = new fi.BatchPrefillWithPagedKVCacheWrapper(this.#workspace, "NHD");
      // One workspace for both: a step plans the one it runs (a plan replaces the other's).
      this.#cascade = new fi.MultiLevelCascadeAttentionWrapper(2, this.#workspace, "NHD");
    } catch (e) {
      owned.forEach((t) => t.dispose());
      throw e;
    }
  }

  /** Loads a checkpoint (checkpoint.ts layout; the config from its metadata) onto `device`. */
  static load(path: string, opts: { device?: fi.Device } = {}): LlamaModel {
    const file = SafetensorsFile.open(path);
    const device = opts.device ?? fi.defaultDevice();
    return new LlamaModel(readConfig(file), device, (name) => file.load(name, { device }));
  }

  /**
   * A model of `config` with seeded random weights made on the device (no file: the benchmarks'
   * Llama-3.1-8B shapes without writing 16 GB), scaled as writeSyntheticCheckpoint's.
   */
  static random(config: LlamaConfig, opts: { device?: fi.Device; seed?: number } = {}): LlamaModel {
    const device = opts.device ?? fi.defaultDevice(), shapes = tensorShapes(config);
    let i = 0;
    return new LlamaModel(config, device, (name) => {
      const shape = shapes[name]!, isNorm = shape.length === 1;
      return fi.normal(shape, isNorm ? 1 : 0, isNorm ? 0.1 : 1 / Math.sqrt(shape[1]!), { dtype: config.dtype, device, seed: (opts.seed ?? 0) * 1000003 + i++ });
    });
  }

  /** A paged KV cache for every layer: [numPages, 2, pageSize, numKvHeads, headDim] each. */
  newKvCache(numPages: number, pageSize: number): fi.Tensor[] {
    const c = this.config, layers: fi.Tensor[] = [];
    try {
      for (let l = 0; l < c.numLayers; ++l) layers.push(fi.zeros([numPages, 2, pageSize, c.numKvHeads, c.headDim], { dtype: c.dtype, device: this.device }));
    } catch (e) {
      layers.forEach((t) => t.dispose()); // a layer that does not fit gives back the ones made
      throw e;
    }
    return layers;
  }

  /**
   * Runs one step: appends the new tokens' keys and values to `cache` and returns the logits of
   * each request's last new token, float32 [numRequests, vocabSize].
   */
  forward(step: StepBatch, cache: fi.Tensor[]): fi.Tensor {
    const c = this.config, T = step.tokens.length, B = step.qoIndptr.length - 1;
    const pageSize = cache[0]!.shape[2]!;
    return fi.scope(() => {
      const heads = { pageSize, numQoHeads: c.numHeads, numKvHeads: c.numKvHeads, qDataType: c.dtype };
      const cc = step.cascade;
      if (cc) {
        const groups = cc.groupIndptr.length - 1;
        this.#cascade.plan({ ...heads, headDim: c.headDim, causal: true,
          qoIndptrArr: [Int32Array.from({ length: groups + 1 }, (_, g) => step.qoIndptr[cc.groupIndptr[g]!]!), step.qoIndptr],
          pagedKvIndptrArr: [cc.sharedIndptr, cc.ownIndptr], pagedKvIndicesArr: [cc.sharedIndices, cc.ownIndices],
          pagedKvLastPageLenArr: [Int32Array.from({ length: groups }, (_, g) => (cc.sharedIndptr[g + 1]! > cc.sharedIndptr[g]! ? pageSize : 0)), cc.ownLastPageLen] });
      } else {
        this.#attention.plan({ ...heads, qoIndptr: step.qoIndptr, pagedKvIndptr: step.kvIndptr, pagedKvIndices: step.kvIndices, pagedKvLastPageLen: step.kvLastPageLen,
          headDimQk: c.headDim, causal: true });
      }
      const batchIndices = new Int32Array(T);
      for (let r = 0; r < B; ++r) batchIndices.fill(r, step.qoIndptr[r]!, step.qoIndptr[r + 1]!);
      // The step's index arrays on the device once (an upload from a host array synchronizes),
      // checked once by the first layer's append; every layer reuses them.
      const onDevice = (a: Int32Array) => fi.tensor(a, [a.length], { dtype: "int32", device: this.device });
      const io: StepIndices = { positions: onDevice(step.positions), tokenRequest: onDevice(batchIndices),
        kvIndices: onDevice(step.kvIndices), kvIndptr: onDevice(step.kvIndptr), kvLastPageLen: onDevice(step.kvLastPageLen) };
      const acts = this.newActivations(T);
      this.embed(step.tokens, acts.residual);
      this.layers(acts, io, cache, (q, l, out) => void (cc ? this.#cascade.run(q, cache[l]!, { out }) : this.#attention.run(q, cache[l]!, { out })), true);
      // Each request's last new token.
      const last = fi.gatherRows(acts.h, Int32Array.from({ length: B }, (_, r) => step.qoIndptr[r + 1]! - 1));
      const logits = fi.gemm(last, this.#lmHead, { transB: true });
      return c.dtype === "float32" ? logits : logits.to({ dtype: "float32" });
    });
  }

  /** The activation buffers of a step of `tokens` tokens (every layer reuses them). */
  newActivations(tokens: number): Activations {
    const c = this.config, d = { dtype: c.dtype, device: this.device };
    return {
      residual: fi.empty([tokens, c.hiddenSize], d),
      h: fi.empty([tokens, c.hiddenSize], d),
      qkv: fi.empty([tokens, c.numHeads + 2 * c.numKvHeads, c.headDim], d),
      attn: fi.empty([tokens, c.numHeads, c.headDim], d),
      gateUp: fi.empty([tokens, 2 * c.intermediateSize], d),
      act: fi.empty([tokens, c.intermediateSize], d),
    };
  }

  /**
   * Every layer over a step's tokens, whose embeddings are in acts.residual; leaves the final
   * norm of each token in acts.h. attend(q, layer, out) writes the attention of q over cache[layer]
   * into out. Allocates nothing on the device (so a CUDA graph can capture it) and reads nothing
   * back; with checkFirst the first layer's append checks the step's indices (that reads them).
   */
  layers(acts: Activations, io: StepIndices, cache: fi.Tensor[], attend: (q: fi.Tensor, layer: number, out: fi.Tensor) => void, checkFirst: boolean): void {
    const c = this.config, eps = c.rmsNormEps, rs = c.ropeScaling;
    const { residual, h, qkv, attn, gateUp, act } = acts;
    fi.rmsnorm(residual, this.#layers[0]!.inputNorm, { eps, out: h });
    this.#layers.forEach((w, l) => {
      fi.scope(() => {
        if (l > 0) fi.fusedAddRmsnorm(h, residual, w.inputNorm, { eps }); // residual += h; h = norm(residual)
        // q, k and v are head ranges of one [T, numHeads + 2 numKvHeads, headDim] product.
        fi.gemm(h, w.qkv, { transB: true, out: qkv.view([qkv.shape[0]!, -1]) });
        const q = qkv.slice(1, 0, c.numHeads);
        const k = qkv.slice(1, c.numHeads, c.numHeads + c.numKvHeads);
        const v = qkv.slice(1, c.numHeads + c.numKvHeads, c.numHeads + 2 * c.numKvHeads);
        if (rs) {
          fi.applyLlama31RopePosIdsInplace(q, k, io.positions, { ropeTheta: c.ropeTheta, ropeScale: rs.factor, lowFreqFactor: rs.lowFreqFactor,
            highFreqFactor: rs.highFreqFactor, oldContextLen: rs.originalMaxPositionEmbeddings });
        } else {
          fi.applyRopePosIdsInplace(q, k, io.positions, { ropeTheta: c.ropeTheta });
        }
        fi.appendPagedKvCache(k, v, io.tokenRequest, io.positions, cache[l]!, io.kvIndices, io.kvIndptr, io.kvLastPageLen, "NHD",
          { checkIndices: checkFirst && l === 0 });
        attend(q, l, attn);
        fi.gemm(attn.view([attn.shape[0]!, -1]), w.o, { transB: true, out: h });
        fi.fusedAddRmsnorm(h, residual, w.postNorm, { eps }); // residual += o; h = norm(residual)
        fi.gemm(h, w.gateUp, { transB: true, out: gateUp });
        fi.siluAndMul(gateUp, { out: act });
        fi.gemm(act, w.down, { transB: true, out: h });
      });
    });
    fi.fusedAddRmsnorm(h, residual, this.#norm, { eps });
  }

  /** The tokens' embeddings (their rows of the table) into out [tokens, hidden]: one gather. */
  embed(tokens: Int32Array, out: fi.Tensor): void {
    fi.gatherRows(this.#embed, tokens, { out });
  }

  /** logits = h @ lmHead^T into out (the LM head of each row of h). */
  lmHead(h: fi.Tensor, out: fi.Tensor): void {
    fi.gemm(h, this.#lmHead, { transB: true, out });
  }

  dispose(): void {
    this.#attention.dispose();
    this.#cascade.dispose();
    for (const t of [this.#embed, this.#norm, this.#lmHead, this.#workspace, ...this.#layers.flatMap((w) => Object.values(w))]) t.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

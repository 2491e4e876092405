// The serving example's Llama forward pass (examples/llama/model.ts, the library's ops) against a
// float64 forward written plainly in TS (test/reference/llama.ts): a batch of 3 requests of
// different prompt lengths, prefilled in one step, then 8 greedy decode steps; every step's
// logits of every request compared.
import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { PRESETS, readConfig, tensorShapes, writeSyntheticCheckpoint } from "../examples/llama/checkpoint.ts";
import { DecodeGraph } from "../examples/llama/decode_graph.ts";
import { LlamaModel } from "../examples/llama/model.ts";
import { SafetensorsFile } from "../examples/llama/safetensors.ts";
import { expectClose, gpu, withContext } from "./helpers.ts";
import { type Weights, llamaLogits } from "./reference/llama.ts";

const dir = mkdtempSync(join(tmpdir(), "fi-llama-model-"));
const seed = Math.floor(Math.random() * 1000);
// The tiny shape, plain and with Llama 3.1 RoPE scaling over an original context of 16 positions
// (head dim 32, theta 1e4: wavelengths from 6 to about 35000 positions, so pairs fall in all three
// regimes, and the scaling moves angles by radians within the test's 18 positions); on CUDA the
// same at head dim 64 (the smallest the CUDA attention kernels are built for).
const scaling = { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16 };
function checkpoints(preset: string): [string, string] {
  const plain = join(dir, `${preset}.safetensors`), scaled = join(dir, `${preset}-3.1.safetensors`);
  writeSyntheticCheckpoint(plain, PRESETS[preset]!, seed);
  writeSyntheticCheckpoint(scaled, { ...PRESETS[preset]!, ropeScaling: scaling }, seed);
  return [plain, scaled];
}

function referenceWeights(path: string): Weights {
  const file = SafetensorsFile.open(path);
  const w: Weights = {};
  for (const name of Object.keys(tensorShapes(readConfig(file)))) {
    using t = file.load(name);
    w[name] = Float64Array.from(t.toFloat32Array());
  }
  return w;
}

const cases = (gpu ? (["cpu", "cuda"] as const) : (["cpu"] as const)).flatMap((d) => {
  const [plain, scaled] = checkpoints(d === "cpu" ? "tiny" : "tiny-d64");
  return [["plain RoPE", d, plain], ["Llama 3.1 RoPE scaling", d, scaled]] as [string, "cpu" | "cuda", string][];
});

describe("Llama forward on the library's ops", () => {
  test.each(cases)("%s: 3 requests of different lengths: prefill, then 8 greedy decode steps, each also run from the decode graph (padded to 4 requests); logits equal the float64 forward [%s]", (_, where, file) => {
    const device = where === "cpu" ? "cpu" : "cuda:0";
    const weights = referenceWeights(file);
    using model = LlamaModel.load(file, { device });
    const c = model.config;
    const P = 4, pagesPerRequest = 8;
    const cache = model.newKvCache(3 * pagesPerRequest, P);
    // The decode graph (captured on CUDA, run directly on the CPU); the last page is its scratch page.
    using graph = new DecodeGraph(model, cache, { batch: 4, maxPages: 16, scratchPage: 3 * pagesPerRequest - 1 });
    try {
      const sequences = [[256, 72, 101, 108], [256, 9, 200, 31, 31, 77, 5, 140, 66], [256]];
      // Request r owns pages r * pagesPerRequest, ... in order.
      const table = (lens: number[]) => {
        const pages = lens.map((n) => Math.ceil(n / P));
        return {
          kvIndptr: Int32Array.from([0, ...pages.map(((s) => (x: number) => (s += x))(0))]),
          kvIndices: Int32Array.from(pages.flatMap((n, r) => Array.from({ length: n }, (_, i) => r * pagesPerRequest + i))),
          kvLastPageLen: Int32Array.from(lens.map((n) => n - (Math.ceil(n / P) - 1) * P)),
        };
      };
      let newTokens = sequences.map((s) => [...s]);
      for (let step = 0; step <= 8; ++step) {
        const lens = sequences.map((s) => s.length);
        const qoIndptr = Int32Array.from([0, ...newTokens.map(((s) => (t: number[]) => (s += t.length))(0))]);
        const positions = Int32Array.from(newTokens.flatMap((t, r) => t.map((_, i) => lens[r]! - t.length + i)));
        const stepBatch = { tokens: Int32Array.from(newTokens.flat()), qoIndptr, positions, ...table(lens) };
        // A decode step runs from the graph first (its appends write the same keys and values the forward's do).
        using fromGraph = step > 0 ? graph.run(stepBatch) : null;
        const graphLogits = fromGraph?.toFloat32Array();
        using logits = model.forward(stepBatch, cache);
        expect(logits.shape).toEqual([3, c.vocabSize]);
        const got = logits.toFloat32Array();
        const next: number[][] = [];
        sequences.forEach((s, r) => {
          const expected = llamaLogits(c, weights, s);
          const row = got.subarray(r * c.vocabSize, (r + 1) * c.vocabSize);
          // float16 activations, rounded after every op: the largest error seen was 0.0044 on
          // logits up to 3.5 (about 2 ulps of float16 there); the bound keeps a 3x margin.
          withContext(`step ${step}, request ${r} (${s.length} tokens)`, () => expectClose(row, expected, 1.5e-2, 0));
          if (graphLogits)
            withContext(`step ${step}, request ${r}, decode graph`, () => expectClose(graphLogits.subarray(r * c.vocabSize, (r + 1) * c.vocabSize), expected, 1.5e-2, 0));
          let best = 0;
          for (let i = 1; i < c.vocabSize; ++i) if (row[i]! > row[best]!) best = i;
          next.push([best]);
        });
        next.forEach((t, r) => sequences[r]!.push(t[0]!));
        newTokens = next;
      }
      expect(sequences.map((s) => s.length)).toEqual([13, 18, 10]);
    } finally {
      cache.forEach((t) => t.dispose());
    }
  }, 120_000);
});

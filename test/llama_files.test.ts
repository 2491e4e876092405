// The serving example's file formats (examples/llama): safetensors read/write, synthetic Llama
// checkpoints, the byte-level tokenizer.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { PRESETS, readConfig, tensorShapes, writeSyntheticCheckpoint } from "../examples/llama/checkpoint.ts";
import { SafetensorsFile, writeSafetensors } from "../examples/llama/safetensors.ts";
import { BOS, decode, encode } from "../examples/llama/tokenizer.ts";
import { expectFlashInferError } from "./helpers.ts";

const dir = mkdtempSync(join(tmpdir(), "fi-llama-files-"));
const bytesOf = (t: fi.Tensor) => {
  const v = t.hostView();
  return Array.from(new Uint8Array(v.buffer, v.byteOffset, t.nbytes));
};

describe("safetensors", () => {
  test("a written file reads back byte for byte: every dtype, empty and scalar shapes, metadata", () => {
    const seed = Math.floor(Math.random() * 2 ** 31);
    const tensors: Record<string, fi.Tensor> = {
      "w.bf16": fi.randn([3, 5], { dtype: "bfloat16", seed, device: "cpu" }),
      "w.f16": fi.randn([7], { dtype: "float16", seed: seed + 1, device: "cpu" }),
      "w.f32": fi.randn([2, 3, 4], { seed: seed + 2, device: "cpu" }),
      "w.f64": fi.randn([1], { dtype: "float64", seed: seed + 3, device: "cpu" }),
      ids: fi.tensor(Int32Array.from([1, -2, 3]), [3], { device: "cpu" }),
      mask: fi.tensor(Uint8Array.from([1, 0, 1, 1]), [4], { dtype: "bool", device: "cpu" }),
      empty: fi.zeros([0, 4], { device: "cpu" }),
      scalar: fi.full([], 2.5, { device: "cpu" }),
      fp8: fi.randn([9], { dtype: "float8_e4m3fn", seed: seed + 4, device: "cpu" }),
    };
    const path = join(dir, "roundtrip.safetensors");
    try {
      writeSafetensors(path, tensors, { note: "hello" });
      // The header length is a multiple of 8: the data starts aligned.
      expect(Number(new DataView(readFileSync(path).buffer).getBigUint64(0, true)) % 8).toBe(0);
      const f = SafetensorsFile.open(path);
      expect(f.metadata).toEqual({ note: "hello" });
      expect([...f.entries.keys()].sort()).toEqual(Object.keys(tensors).sort());
      for (const [name, t] of Object.entries(tensors)) {
        using back = f.load(name);
        expect(back.dtype).toBe(t.dtype);
        expect(back.shape).toEqual(t.shape);
        expect(bytesOf(back)).toEqual(bytesOf(t));
      }
    } finally {
      Object.values(tensors).forEach((t) => t.dispose());
    }
  });

  test("a bad file is refused at open with the reason, naming the tensor", () => {
    const write = (name: string, header: unknown, data = new Uint8Array(0), rawHeader?: string) => {
      const json = new TextEncoder().encode(rawHeader ?? JSON.stringify(header));
      const out = new Uint8Array(8 + json.length + data.length);
      new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
      out.set(json, 8);
      out.set(data, 8 + json.length);
      const path = join(dir, name);
      writeFileSync(path, out);
      return path;
    };
    const open = (path: string) => () => SafetensorsFile.open(path);
    expectFlashInferError(open(join(dir, "missing.safetensors")), "invalid_argument", /cannot open/);
    const short = join(dir, "short.safetensors");
    writeFileSync(short, new Uint8Array(5));
    expectFlashInferError(open(short), "invalid_argument", /shorter than the 8-byte header length/);
    const long = join(dir, "long.safetensors");
    const lb = new Uint8Array(16);
    new DataView(lb.buffer).setBigUint64(0, 1000n, true);
    writeFileSync(long, lb);
    expectFlashInferError(open(long), "invalid_argument", /header length 1000 exceeds the file/);
    expectFlashInferError(open(write("json.safetensors", null, undefined, "{not json")), "invalid_argument", /header is not UTF-8 JSON/);
    expectFlashInferError(open(write("array.safetensors", [1, 2])), "invalid_argument", /header is not a JSON object/);
    expectFlashInferError(open(write("dtype.safetensors", { x: { dtype: "Q4", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1))),
      "invalid_argument", /tensor "x": dtype "Q4" is not one of/);
    expectFlashInferError(open(write("range.safetensors", { x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4))),
      "invalid_argument", /tensor "x": data_offsets \[0,8\] must be \[begin, end\] within the 4 data bytes/);
    expectFlashInferError(open(write("size.safetensors", { x: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8))),
      "invalid_argument", /tensor "x": 8 bytes for float32 \[3\], which needs 12/);
    expectFlashInferError(open(write("overlap.safetensors", { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "F32", shape: [1], data_offsets: [4, 8] } },
      new Uint8Array(8))), "invalid_argument", /tensors "a" and "b" overlap/);
    expectFlashInferError(open(write("meta.safetensors", { __metadata__: { n: 1 } })), "invalid_argument", /__metadata__ must map names to strings/);
    const ok = SafetensorsFile.open(write("ok.safetensors", { x: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)));
    expectFlashInferError(() => ok.load("y"), "invalid_argument", /no tensor "y"/);
  });
});

describe("synthetic Llama checkpoints", () => {
  test("the tiny preset: every Hugging Face tensor with its shape, the config in the metadata, the same seed gives the same file", () => {
    const c = PRESETS.tiny!;
    const a = join(dir, "tiny-a.safetensors"), b = join(dir, "tiny-b.safetensors"), other = join(dir, "tiny-c.safetensors");
    writeSyntheticCheckpoint(a, c, 7);
    writeSyntheticCheckpoint(b, c, 7);
    writeSyntheticCheckpoint(other, c, 8);
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
    expect(readFileSync(a).equals(readFileSync(other))).toBe(false);
    const f = SafetensorsFile.open(a);
    expect(readConfig(f)).toEqual(c);
    const shapes = tensorShapes(c);
    expect(f.entries.size).toBe(Object.keys(shapes).length);
    expect(Object.keys(shapes)).toContain("model.layers.1.mlp.down_proj.weight");
    using q = f.load("model.layers.0.self_attn.q_proj.weight");
    expect(q.shape).toEqual([c.numHeads * c.headDim, c.hiddenSize]);
    const values = q.toFloat32Array();
    const std = Math.sqrt(values.reduce((s, v) => s + v * v, 0) / values.length);
    expect(std).toBeGreaterThan(0.8 / Math.sqrt(c.hiddenSize));
    expect(std).toBeLessThan(1.2 / Math.sqrt(c.hiddenSize));
    using norm = f.load("model.norm.weight");
    const n = norm.toFloat32Array();
    expect(Math.abs(n.reduce((s, v) => s + v, 0) / n.length - 1)).toBeLessThan(0.05);
  });

  test("a config that does not match the tensors, or is invalid, is refused", () => {
    const path = join(dir, "tiny-bad.safetensors");
    const c = PRESETS.tiny!;
    using w = fi.zeros([c.vocabSize, c.hiddenSize], { device: "cpu" });
    writeSafetensors(path, { "model.embed_tokens.weight": w }, { config: JSON.stringify(c) });
    expectFlashInferError(() => readConfig(SafetensorsFile.open(path)), "invalid_argument", /config.numLayers = 2 needs 21 tensors, the file has 1/);
    // a config claiming 2^31 - 1 layers is refused before its tensor names are listed (that once took all memory)
    writeSafetensors(path, { "model.embed_tokens.weight": w }, { config: JSON.stringify({ ...c, numLayers: 2 ** 31 - 1 }) });
    expectFlashInferError(() => readConfig(SafetensorsFile.open(path)), "invalid_argument", /config.numLayers = 2147483647 needs/);
    for (const [config, re] of [["{", /the "config" metadata is not JSON/], ["null", /config: expected a JSON object/],
      [JSON.stringify({ ...c, hiddenSize: 2 ** 31 }), /config.hiddenSize: expected an integer in 1..2\^31 - 1/]] as const) {
      writeSafetensors(path, { "model.embed_tokens.weight": w }, { config });
      expectFlashInferError(() => readConfig(SafetensorsFile.open(path)), "invalid_argument", re);
    }
    // every tensor there but one renamed: the missing one is named
    const full = join(dir, "tiny-full.safetensors");
    writeSyntheticCheckpoint(full, c, 5);
    const file = SafetensorsFile.open(full);
    const tensors = Object.fromEntries([...file.entries.keys()].map((name) => [name === "model.layers.1.mlp.up_proj.weight" ? "model.layers.1.mlp.up.weight" : name, file.load(name)]));
    writeSafetensors(path, tensors, file.metadata);
    for (const t of Object.values(tensors)) t.dispose();
    expectFlashInferError(() => readConfig(SafetensorsFile.open(path)), "invalid_argument", /missing tensor "model.layers.1.mlp.up_proj.weight"/);
    expectFlashInferError(() => writeSyntheticCheckpoint(path, { ...c, numKvHeads: 3 }), "invalid_argument", /config.numHeads: 4 is not a multiple of numKvHeads \(3\)/);
  });
});

describe("byte-level tokenizer", () => {
  test("round trip of UTF-8 text; BOS first; special tokens skipped when decoding", () => {
    for (const text of ["", "hello, world", "naïve café — 東京 🚀"]) {
      const ids = encode(text);
      expect(ids[0]).toBe(BOS);
      expect(ids.slice(1).every((t) => t >= 0 && t < 256)).toBe(true);
      expect(decode(ids)).toBe(text);
    }
    expect(encode("ab", false)).toEqual([97, 98]);
  });
});

// The serving example's Hugging Face tokenizer (examples/llama/hf_tokenizer.ts) on a small
// byte-level BPE tokenizer.json written here (the GPT-2 / Llama 3 byte-to-character scheme, a few
// merges, BOS/EOS as added special tokens) and a chat template.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HfTokenizer } from "../examples/llama/hf_tokenizer.ts";
import { expectFlashInferError } from "./helpers.ts";

/** Byte b -> the printable character byte-level BPE uses for it. */
function byteChars(): string[] {
  const keep = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let next = 256;
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(keep(b) ? b : next++));
}

function writeTokenizer(dir: string, withConfig: boolean): void {
  const chars = byteChars();
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => (vocab[c] = b));
  const merges = [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"]];
  for (const [a, b] of merges) vocab[a! + b!] = Object.keys(vocab).length;
  const bos = Object.keys(vocab).length, eos = bos + 1;
  const json = {
    version: "1.0",
    added_tokens: [
      { id: bos, content: "<|begin_of_text|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: eos, content: "<|end_of_text|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [bos], tokens: ["<|begin_of_text|>"] } },
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
      vocab, merges: merges.map(([a, b]) => `${a} ${b}`) },
  };
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(json));
  if (withConfig) {
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({
      bos_token: "<|begin_of_text|>", eos_token: "<|end_of_text|>",
      chat_template: "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
    }));
  }
}

describe("Hugging Face tokenizer and chat template", () => {
  test("byte-level BPE: merges apply, BOS is added, text round-trips; the EOS id stops generation; the chat template renders", () => {
    const dir = mkdtempSync(join(tmpdir(), "fi-tok-"));
    writeTokenizer(dir, true);
    const t = HfTokenizer.load(dir);
    const ids = t.encode("hello world");
    expect(ids[0]).toBe(261); // BOS: after 256 bytes and 5 merges
    expect(ids[1]).toBe(259); // "hello" merged into one token
    expect(t.decode(ids)).toBe("hello world");
    for (const text of ["naïve café — 東京", "  spaces\tand\nlines "]) expect(t.decode(t.encode(text))).toBe(text);
    expect(t.stopIds).toEqual([262]);
    expect(t.applyChatTemplate([{ role: "user", content: "hi" }])).toBe("<|begin_of_text|><user>hi</user><assistant>");
  });

  test("missing files and a missing chat template are named", () => {
    const dir = mkdtempSync(join(tmpdir(), "fi-tok-"));
    expectFlashInferError(() => HfTokenizer.load(dir), "invalid_argument", /tokenizer\.json/);
    writeTokenizer(dir, false);
    const t = HfTokenizer.load(dir);
    expect(t.stopIds).toEqual([]);
    expectFlashInferError(() => t.applyChatTemplate([{ role: "user", content: "x" }]), "invalid_argument", /no chat_template/);
  });
});

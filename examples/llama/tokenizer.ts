// The byte-level tokenizer of the synthetic checkpoints (checkpoint.ts): token t < 256 is the byte
// t of the UTF-8 text, then two special tokens. Real checkpoints bring their own tokenizer; the
// engine works on token ids either way.
export const BOS = 256;
export const EOS = 257;
export const BYTE_VOCAB = 258;

/** UTF-8 bytes of `text` as tokens, after BOS unless `bos` is false. */
export function encode(text: string, bos = true): number[] {
  const bytes = Array.from(new TextEncoder().encode(text));
  return bos ? [BOS, ...bytes] : bytes;
}

/** The text of the byte tokens (special tokens and ids outside the vocabulary are skipped; invalid UTF-8 becomes U+FFFD). */
export function decode(tokens: readonly number[]): string {
  return new TextDecoder().decode(Uint8Array.from(tokens.filter((t) => Number.isInteger(t) && t >= 0 && t < 256)));
}

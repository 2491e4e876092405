// Real tokenizers for the example engine: a Hugging Face tokenizer.json (Llama 3's included)
// through @huggingface/tokenizers (pure TypeScript), and the chat template of
// tokenizer_config.json through @huggingface/jinja; both run under Bun unchanged.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import * as fi from "../../lib/index.ts";

export interface ChatMessage {
  role: string;
  content: string;
}

function tokenText(t: unknown): string | undefined {
  if (typeof t === "string") return t;
  if (typeof t === "object" && t !== null && typeof (t as { content?: unknown }).content === "string") return (t as { content: string }).content;
  return undefined;
}

export class HfTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #template: Template | null;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  /** Token ids that end generation (the EOS token's). */
  readonly stopIds: number[];

  private constructor(json: object, config: Record<string, unknown>) {
    this.#tokenizer = new Tokenizer(json, config);
    this.bosToken = tokenText(config.bos_token);
    this.eosToken = tokenText(config.eos_token);
    const template = config.chat_template;
    this.#template = typeof template === "string" ? new Template(template) : null;
    const eos = this.eosToken === undefined ? undefined : this.#tokenizer.token_to_id(this.eosToken);
    this.stopIds = eos === undefined ? [] : [eos];
  }

  /** Loads tokenizer.json (and tokenizer_config.json when present) from a model directory. */
  static load(dir: string): HfTokenizer {
    const read = (name: string) => {
      try {
        return JSON.parse(readFileSync(join(dir, name), "utf8")) as Record<string, unknown>;
      } catch (e) {
        throw new fi.FlashInferError("invalid_argument", `${join(dir, name)}: ${(e as Error).message}`);
      }
    };
    const json = read("tokenizer.json");
    const config = existsSync(join(dir, "tokenizer_config.json")) ? read("tokenizer_config.json") : {};
    return new HfTokenizer(json, config);
  }

  /** Token ids of `text` (with the tokenizer's special tokens, e.g. BOS, when addSpecialTokens). */
  encode(text: string, addSpecialTokens = true): number[] {
    return this.#tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids: readonly number[]): string {
    return this.#tokenizer.decode([...ids], { skip_special_tokens: true });
  }

  /** The chat template applied to `messages`, ending with the assistant's turn to speak. */
  applyChatTemplate(messages: readonly ChatMessage[]): string {
    if (!this.#template) throw new fi.FlashInferError("invalid_argument", "tokenizer_config.json: no chat_template");
    return this.#template.render({ messages, add_generation_prompt: true, bos_token: this.bosToken ?? "", eos_token: this.eosToken ?? "" });
  }
}

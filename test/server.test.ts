// The example server (examples/server/server.ts) on the CPU with the tiny synthetic model: the
// OpenAI-style endpoints, streaming, n > 1, concurrent clients, disconnects, bad input, a full queue.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PRESETS, writeSyntheticCheckpoint } from "../examples/llama/checkpoint.ts";
import { Engine } from "../examples/llama/engine.ts";
import { LlamaModel } from "../examples/llama/model.ts";
import { decode, encode, EOS } from "../examples/llama/tokenizer.ts";
import { hfTokenizer, startServer } from "../examples/server/server.ts";

const dir = mkdtempSync(join(tmpdir(), "fi-server-"));
const path = join(dir, "tiny.safetensors");
writeSyntheticCheckpoint(path, PRESETS.tiny!, 3);
let model: LlamaModel;
let s: ReturnType<typeof startServer>;
const post = (route: string, body: unknown) =>
  fetch(`${s.url}${route}`, { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) });

/** The greedy text the engine alone produces for a prompt (the reference for the server's answers). */
function greedyText(prompt: string, maxTokens: number): string {
  using e = new Engine(model, { numPages: 64, pageSize: 4 });
  return decode(e.generate([{ prompt: encode(prompt), maxTokens, stopTokens: [EOS] }])[0]!);
}

async function events(res: Response): Promise<unknown[]> {
  const text = await res.text();
  return text.split("\n\n").filter((x) => x.startsWith("data: ")).map((x) => x.slice(6)).map((d) => (d === "[DONE]" ? d : JSON.parse(d)));
}

const pagesUsed = async () => Number((await (await fetch(`${s.url}/metrics`)).text()).match(/^flashinfer_kv_pages_used (\d+)$/m)![1]);

beforeAll(() => {
  model = LlamaModel.load(path, { device: "cpu" });
  s = startServer({ model, numPages: 64, pageSize: 4, maxQueue: 6 });
});
afterAll(() => {
  s.stop();
  model.dispose();
});

describe("example server (CPU, tiny synthetic model)", () => {
  test("health, a greedy completion equal to the engine's, chat, usage", async () => {
    expect(await (await fetch(`${s.url}/health`)).json()).toEqual({ status: "ok" });
    const res = await post("/v1/completions", { prompt: "hello there", max_tokens: 7, temperature: 0 });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { object: string; choices: { text: string; finish_reason: string }[]; usage: Record<string, number> };
    expect(body.object).toBe("text_completion");
    expect(body.choices[0]!.text).toBe(greedyText("hello there", 7));
    expect(body.usage.prompt_tokens).toBe(encode("hello there").length);
    const chat = await post("/v1/chat/completions", { messages: [{ role: "user", content: "hi" }], max_tokens: 4, temperature: 0 });
    const c = (await chat.json()) as { object: string; choices: { message: { role: string; content: string } }[] };
    expect(c.object).toBe("chat.completion");
    expect(c.choices[0]!.message.role).toBe("assistant");
    expect(c.choices[0]!.message.content).toBe(greedyText("user: hi\nassistant:", 4));
  });

  test("streaming: the events concatenate to the non-streamed text, then finish and [DONE]; n = 2 with seeds", async () => {
    const body = { prompt: "stream me", max_tokens: 6, temperature: 0 };
    const whole = ((await (await post("/v1/completions", body)).json()) as { choices: { text: string }[] }).choices[0]!.text;
    const res = await post("/v1/completions", { ...body, stream: true });
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const ev = await events(res);
    expect(ev.at(-1)).toBe("[DONE]");
    const chunks = ev.slice(0, -1) as { choices: { text: string; finish_reason: string | null }[] }[];
    expect(chunks.map((e) => e.choices[0]!.text).join("")).toBe(whole);
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("length");
    const two = (await (await post("/v1/completions", { prompt: "abc", max_tokens: 5, temperature: 1.2, seed: 9, n: 2 })).json()) as { choices: { index: number; text: string }[] };
    expect(two.choices.map((c) => c.index)).toEqual([0, 1]);
    const again = (await (await post("/v1/completions", { prompt: "abc", max_tokens: 5, temperature: 1.2, seed: 9, n: 2 })).json()) as { choices: { text: string }[] };
    expect(again.choices.map((c) => c.text)).toEqual(two.choices.map((c) => c.text));
  });

  test("concurrent clients get what they would get alone; a stop string cuts the text", async () => {
    const prompts = ["one", "two two", "three three three", "four"];
    const answers = await Promise.all(prompts.map(async (prompt) =>
      ((await (await post("/v1/completions", { prompt, max_tokens: 5, temperature: 0 })).json()) as { choices: { text: string }[] }).choices[0]!.text));
    expect(answers).toEqual(prompts.map((p) => greedyText(p, 5)));
    const full = greedyText("one", 5);
    const stopAt = full.slice(2, 3);
    const cut = (await (await post("/v1/completions", { prompt: "one", max_tokens: 5, temperature: 0, stop: stopAt })).json()) as { choices: { text: string; finish_reason: string }[] };
    expect(cut.choices[0]!.text).toBe(full.slice(0, full.indexOf(stopAt)));
    expect(cut.choices[0]!.finish_reason).toBe("stop");
    expect(await pagesUsed()).toBe(0);
  });

  test("a client that disconnects mid-stream frees its pages", async () => {
    const controller = new AbortController();
    const res = await fetch(`${s.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "long one", max_tokens: 200, temperature: 0, stream: true }),
      signal: controller.signal });
    const reader = res.body!.getReader();
    await reader.read(); // the first token arrived: the request holds pages
    expect(await pagesUsed()).toBeGreaterThan(0);
    controller.abort();
    for (let i = 0; i < 100 && (await pagesUsed()) > 0; ++i) await Bun.sleep(20);
    expect(await pagesUsed()).toBe(0);
  });

  test("a client that disconnects before a plain (not streamed) answer stops its request: its pages return before it would have finished", async () => {
    const itl = async () => Number((await (await fetch(`${s.url}/metrics`)).text()).match(/^flashinfer_inter_token_latency_seconds_count (\d+)$/m)![1]);
    const before = await itl();
    const controller = new AbortController();
    const answer = fetch(`${s.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "long one", max_tokens: 240, temperature: 0 }),
      signal: controller.signal }).catch(() => "aborted");
    for (let i = 0; i < 200 && (await pagesUsed()) === 0; ++i) await Bun.sleep(2);
    controller.abort();
    expect(await answer).toBe("aborted");
    for (let i = 0; i < 100 && (await pagesUsed()) > 0; ++i) await Bun.sleep(20);
    expect(await pagesUsed()).toBe(0);
    // 240 tokens would add 239 inter-token gaps; stopped at the disconnect, far fewer (~2.4 ms a token here).
    expect((await itl()) - before).toBeLessThan(200);
  });

  test("a failed engine step answers 500 (plain) or an error event (streamed) for its requests; the server serves on", async () => {
    const forward = model.forward;
    model.forward = () => {
      throw new Error("injected failure");
    };
    try {
      const res = await post("/v1/completions", { prompt: "fail me", max_tokens: 3 });
      expect(res.status).toBe(500);
      expect(((await res.json()) as { error: { message: string } }).error.message).toBe("generation failed: injected failure");
      const streamed = await events(await post("/v1/completions", { prompt: "fail me", max_tokens: 3, stream: true }));
      expect(streamed).toEqual([{ error: { message: "generation failed: injected failure", type: "server_error" } }, "[DONE]"]);
    } finally {
      model.forward = forward;
    }
    const res = await post("/v1/completions", { prompt: "hello there", max_tokens: 7, temperature: 0 });
    expect(((await res.json()) as { choices: { text: string }[] }).choices[0]!.text).toBe(greedyText("hello there", 7));
    expect(await pagesUsed()).toBe(0);
  });

  test("bad requests answer 400 naming the field; a full queue answers 429; unknown routes 404", async () => {
    const bad = async (body: unknown, pattern: RegExp) => {
      const res = await post("/v1/completions", body);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(pattern);
    };
    await bad("{not json", /body: not valid JSON/);
    await bad([1, 2], /body: expected a JSON object/);
    await bad({ prompt: "x", bogus: 1 }, /bogus: unknown field/);
    await bad({ prompt: 5 }, /prompt: expected a string or a non-empty list of token ids/);
    await bad({ prompt: "x", max_tokens: 0 }, /max_tokens: expected a positive integer/);
    await bad({ prompt: "x", temperature: -1 }, /temperature: expected a number in \[0, 100\]/);
    await bad({ prompt: "x", n: 99 }, /n: expected an integer in \[1, 16\]/);
    await bad({ prompt: "x", max_tokens: 100000 }, /pages needed, the cache has 64/);
    // a seed JSON cannot carry exactly (past 2^53) once stalled the engine: every later step failed
    await bad({ prompt: "x", seed: 2 ** 53 }, /seed: expected an integer in \[0, 2\^53 - 17\]/);
    const chatBad = await post("/v1/chat/completions", { messages: [] });
    expect(chatBad.status).toBe(400);
    // maxQueue 6: seven long requests at once; at least one is refused, the others complete.
    const results = await Promise.all(Array.from({ length: 7 }, () => post("/v1/completions", { prompt: "q", max_tokens: 20, temperature: 0 })));
    expect(results.some((r) => r.status === 429)).toBe(true);
    expect(results.filter((r) => r.status === 200).length).toBeGreaterThan(0);
    await Promise.all(results.map((r) => r.text()));
    expect((await fetch(`${s.url}/v1/nothing`, { method: "POST" })).status).toBe(404);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    expect(metrics).toMatch(/^flashinfer_time_to_first_token_seconds_count [1-9]\d*$/m);
    expect(metrics).toMatch(/^flashinfer_requests_running 0$/m);
  });
});

describe("example server with a Hugging Face tokenizer", () => {
  test("text is encoded and decoded by tokenizer.json; chat goes through the chat template; its EOS id stops generation", async () => {
    // A byte-level BPE tokenizer whose ids stay inside the tiny model's 258-token vocabulary.
    const tdir = mkdtempSync(join(tmpdir(), "fi-server-tok-"));
    const keep = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    let next = 256;
    const vocab: Record<string, number> = {};
    for (let b = 0; b < 256; ++b) vocab[String.fromCodePoint(keep(b) ? b : next++)] = b;
    writeFileSync(join(tdir, "tokenizer.json"), JSON.stringify({
      version: "1.0",
      added_tokens: [{ id: 256, content: "<s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        { id: 257, content: "</s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
      normalizer: null, post_processor: null,
      pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
      decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
    }));
    writeFileSync(join(tdir, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>", eos_token: "</s>",
      chat_template: "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]" }));
    const tok = hfTokenizer(tdir);
    expect(tok.stopIds).toEqual([257]);
    const hs = startServer({ model, numPages: 64, pageSize: 4, tokenizer: tok });
    try {
      const res = await fetch(`${hs.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 5, temperature: 0 }) });
      const body = (await res.json()) as { choices: { message: { content: string } }[]; usage: { prompt_tokens: number } };
      const prompt = tok.encodeChat([{ role: "user", content: "hi" }]);
      expect(prompt[0]).toBe(256); // the template's BOS, once
      expect(prompt.filter((t) => t === 256).length).toBe(1);
      expect(body.usage.prompt_tokens).toBe(prompt.length);
      using e = new Engine(model, { numPages: 64, pageSize: 4 });
      expect(body.choices[0]!.message.content).toBe(tok.decode(e.generate([{ prompt, maxTokens: 5, stopTokens: [257] }])[0]!));
    } finally {
      hs.stop();
    }
  });
});

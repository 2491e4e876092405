// An OpenAI-compatible completion server over the example engine (examples/llama): Bun.serve with
// POST /v1/completions, POST /v1/chat/completions (both with `stream` as server-sent events),
// GET /health and GET /metrics (Prometheus text, written here: a handful of series needs no
// dependency). The engine steps in the background between requests' I/O; a client that goes
// away frees its pages; a full queue answers 429; a bad request answers 400 naming the field.
import * as fi from "../../lib/index.ts";
import { Engine, type EngineOptions, type GenerateRequest } from "../llama/engine.ts";
import { LlamaModel } from "../llama/model.ts";
import { HfTokenizer } from "../llama/hf_tokenizer.ts";
import { decode, encode, EOS } from "../llama/tokenizer.ts";

/** What the server needs of a tokenizer. */
export interface TextTokenizer {
  encode(text: string): number[];
  /** A chat as the model's prompt (its chat template, special tokens included). */
  encodeChat(messages: readonly { role: string; content: string }[]): number[];
  decode(ids: readonly number[]): string;
  /** Token ids that end generation. */
  stopIds: readonly number[];
}

/** The byte-level tokenizer of the synthetic checkpoints, with a plain "role: content" chat format. */
export const byteTokenizer: TextTokenizer = {
  encode: (text) => encode(text),
  encodeChat: (messages) => encode(messages.map((m) => `${m.role}: ${m.content}\n`).join("") + "assistant:"),
  decode,
  stopIds: [EOS],
};

/** A Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json with its chat template). */
export function hfTokenizer(dir: string): TextTokenizer {
  const t = HfTokenizer.load(dir);
  return {
    encode: (text) => t.encode(text),
    encodeChat: (messages) => t.encode(t.applyChatTemplate(messages), false),
    decode: (ids) => t.decode(ids),
    stopIds: t.stopIds,
  };
}

export interface ServerOptions extends Omit<EngineOptions, "onToken"> {
  model: LlamaModel;
  /** Name reported in responses. */
  modelName?: string;
  port?: number;
  /** Requests waiting or running beyond which new ones get 429; default 64. */
  maxQueue?: number;
  /** Default: the byte-level tokenizer of the synthetic checkpoints. */
  tokenizer?: TextTokenizer;
}

class BadRequest extends Error {}

const COMPLETION_FIELDS = new Set(["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop", "stream", "user"]);
const CHAT_FIELDS = new Set([...COMPLETION_FIELDS, "messages"].filter((f) => f !== "prompt"));

interface Parsed {
  prompt: number[];
  gen: Omit<GenerateRequest, "prompt">;
  n: number;
  stop: string[];
  stream: boolean;
}

function number(body: Record<string, unknown>, name: string, fallback: number, ok: (x: number) => boolean, what: string): number {
  const v = body[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !ok(v)) throw new BadRequest(`${name}: expected ${what}, got ${JSON.stringify(v)}`);
  return v;
}

function parse(body: unknown, chat: boolean, vocab: number, tok: TextTokenizer): Parsed {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new BadRequest("body: expected a JSON object");
  const b = body as Record<string, unknown>;
  const allowed = chat ? CHAT_FIELDS : COMPLETION_FIELDS;
  for (const k of Object.keys(b)) if (!allowed.has(k)) throw new BadRequest(`${k}: unknown field`);
  let prompt: number[];
  if (chat) {
    const m = b.messages;
    if (!Array.isArray(m) || m.length === 0 || !m.every((x) => typeof x?.role === "string" && typeof x?.content === "string"))
      throw new BadRequest("messages: expected a non-empty list of { role, content } strings");
    prompt = tok.encodeChat(m as { role: string; content: string }[]);
  } else if (typeof b.prompt === "string") {
    prompt = tok.encode(b.prompt);
  } else if (Array.isArray(b.prompt) && b.prompt.length > 0 && b.prompt.every((t) => Number.isInteger(t) && t >= 0 && t < vocab)) {
    prompt = b.prompt as number[];
  } else {
    throw new BadRequest(`prompt: expected a string or a non-empty list of token ids in [0, ${vocab})`);
  }
  const stop = b.stop === undefined || b.stop === null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
  if (!Array.isArray(stop) || !stop.every((s) => typeof s === "string" && s.length > 0)) throw new BadRequest("stop: expected a string or a list of non-empty strings");
  if (b.stream !== undefined && typeof b.stream !== "boolean") throw new BadRequest("stream: expected a boolean");
  return {
    prompt,
    n: number(b, "n", 1, (x) => Number.isInteger(x) && x >= 1 && x <= 16, "an integer in [1, 16]"),
    stop: stop as string[],
    stream: b.stream === true,
    gen: {
      maxTokens: number(b, "max_tokens", 16, (x) => Number.isInteger(x) && x >= 1, "a positive integer"),
      temperature: number(b, "temperature", 1, (x) => x >= 0 && x <= 100, "a number in [0, 100]"),
      topP: number(b, "top_p", 1, (x) => x > 0 && x <= 1, "a number in (0, 1]"),
      topK: number(b, "top_k", vocab, (x) => Number.isInteger(x) && x >= 1, "a positive integer"),
      // Choice i samples with seed + i: each must be an exact integer (JSON numbers past 2^53 are not).
      seed: b.seed === undefined ? undefined : number(b, "seed", 0, (x) => Number.isSafeInteger(x) && x >= 0 && x <= Number.MAX_SAFE_INTEGER - 16, "an integer in [0, 2^53 - 17]"),
      stopTokens: [...tok.stopIds],
    },
  };
}

/** Buckets (seconds) of the latency histograms. */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
class Histogram {
  readonly counts = new Array<number>(BUCKETS.length + 1).fill(0);
  sum = 0;
  n = 0;
  observe(seconds: number): void {
    const i = BUCKETS.findIndex((b) => seconds <= b);
    this.counts[i < 0 ? BUCKETS.length : i]! += 1;
    this.sum += seconds;
    this.n += 1;
  }
  text(name: string, help: string): string {
    let acc = 0;
    const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
    BUCKETS.forEach((b, i) => lines.push(`${name}_bucket{le="${b}"} ${(acc += this.counts[i]!)}`));
    lines.push(`${name}_bucket{le="+Inf"} ${this.n}`, `${name}_sum ${this.sum}`, `${name}_count ${this.n}`);
    return lines.join("\n");
  }
}

interface Choice {
  index: number;
  id: number;
  text: string;
  tokens: number;
  finish: "stop" | "length" | null;
  /** Why the engine ended this choice early (a failed step), or null. */
  error: string | null;
  started: number;
  last: number;
}

export function startServer(opts: ServerOptions) {
  const { model } = opts;
  const modelName = opts.modelName ?? "llama";
  const maxQueue = opts.maxQueue ?? 64;
  const tok = opts.tokenizer ?? byteTokenizer;
  const listeners = new Map<number, (token: number | null, done: boolean, error?: Error) => void>();
  const engine = new Engine(model, { ...opts, onToken: (id, token, done, error) => listeners.get(id)?.(token, done, error) });
  engine.warmup(); // decode graphs captured before the first request (none on the CPU)
  const ttft = new Histogram(), itl = new Histogram();
  let completed = 0, stepping = false, closed = false;

  // Steps while there is work, yielding to the event loop between steps.
  const pump = () => {
    if (stepping || closed) return;
    stepping = true;
    const tick = () => {
      if (closed || engine.idle) {
        stepping = false;
        return;
      }
      try {
        engine.step();
      } catch (e) {
        console.error(`engine step failed: ${(e as Error).message}`);
      }
      setTimeout(tick, 0);
    };
    setTimeout(tick, 0);
  };

  /** Starts n choices; `emit` gets each choice's new text; resolves when all are done. */
  const run = (p: Parsed, emit: (c: Choice, delta: string) => void): { choices: Choice[]; done: Promise<void>; cancel: () => void } => {
    const choices: Choice[] = [];
    const pending: Promise<void>[] = [];
    // n samples of one prompt: prefilled once, its pages shared (Engine.addParallel).
    const ids = engine.addParallel({ prompt: p.prompt, ...p.gen }, p.n);
    for (let i = 0; i < p.n; ++i) {
      const id = ids[i]!;
      const c: Choice = { index: i, id, text: "", tokens: 0, finish: null, error: null, started: performance.now(), last: 0 };
      choices.push(c);
      const tokens: number[] = [];
      pending.push(new Promise<void>((resolve) => {
        listeners.set(id, (token, done, error) => {
          const now = performance.now();
          if (token !== null) {
            (c.tokens === 0 ? ttft : itl).observe((now - (c.tokens === 0 ? c.started : c.last)) / 1000);
            c.last = now;
            c.tokens += 1;
            tokens.push(token);
            const text = tok.decode(tokens);
            const hit = p.stop.map((s) => text.indexOf(s)).filter((x) => x >= 0);
            if (hit.length > 0) {
              const cut = text.slice(0, Math.min(...hit));
              emit(c, cut.slice(c.text.length));
              c.text = cut;
              c.finish = "stop";
              engine.cancel(id);
              return;
            }
            emit(c, text.slice(c.text.length));
            c.text = text;
          }
          if (done) {
            if (error) c.error = error.message; // the engine step failed: this choice ends unfinished
            else c.finish ??= c.tokens >= p.gen.maxTokens ? "length" : "stop";
            listeners.delete(id);
            engine.take(id);
            completed += 1;
            resolve();
          }
        });
      }));
    }
    pump();
    return {
      choices,
      done: Promise.all(pending).then(() => undefined),
      cancel: () => choices.forEach((c) => c.finish === null && engine.cancel(c.id)),
    };
  };

  const json = (status: number, value: unknown) => Response.json(value, { status });
  const error = (status: number, message: string, type: string) => json(status, { error: { message, type } });

  const server = Bun.serve({
    port: opts.port ?? 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (req.method === "GET" && url.pathname === "/health") return json(200, { status: "ok" });
      if (req.method === "GET" && url.pathname === "/metrics") {
        const used = engine.usablePages - engine.pages.freePages - engine.cacheOnlyPages; // not the decode graphs' scratch page
        const text = [
          ttft.text("flashinfer_time_to_first_token_seconds", "Time from a request's arrival to its first token."),
          itl.text("flashinfer_inter_token_latency_seconds", "Time between consecutive tokens of a request."),
          "# TYPE flashinfer_requests_running gauge", `flashinfer_requests_running ${engine.running}`,
          "# TYPE flashinfer_requests_waiting gauge", `flashinfer_requests_waiting ${engine.waiting}`,
          "# TYPE flashinfer_kv_pages_used gauge", `flashinfer_kv_pages_used ${used}`,
          "# TYPE flashinfer_kv_pages_cached gauge", `flashinfer_kv_pages_cached ${engine.cachedPages}`,
          "# TYPE flashinfer_requests_completed_total counter", `flashinfer_requests_completed_total ${completed}`,
        ].join("\n");
        return new Response(`${text}\n`, { headers: { "content-type": "text/plain; version=0.0.4" } });
      }
      const chat = url.pathname === "/v1/chat/completions";
      if (req.method !== "POST" || (!chat && url.pathname !== "/v1/completions")) return error(404, `no route ${req.method} ${url.pathname}`, "not_found");
      let p: Parsed;
      try {
        let body: unknown;
        try {
          body = await req.json();
        } catch {
          throw new BadRequest("body: not valid JSON");
        }
        p = parse(body, chat, model.config.vocabSize, tok);
        if (engine.waiting + engine.running + p.n > maxQueue) return error(429, `the queue is full (${maxQueue} requests); retry later`, "rate_limit");
      } catch (e) {
        if (e instanceof BadRequest || e instanceof fi.FlashInferError) return error(400, e.message, "invalid_request_error");
        throw e;
      }
      const id = `cmpl-${crypto.randomUUID()}`, created = Math.floor(Date.now() / 1000);
      const object = chat ? "chat.completion" : "text_completion";
      const shape = (c: Choice, text: string, finish: Choice["finish"]) =>
        chat ? { index: c.index, [p.stream ? "delta" : "message"]: { role: "assistant", content: text }, finish_reason: finish }
          : { index: c.index, text, finish_reason: finish };
      let runResult: ReturnType<typeof run>;
      try {
        if (!p.stream) {
          runResult = run(p, () => {});
          // A client that goes away before the answer stops its choices (their pages return now).
          const stop = runResult.cancel;
          req.signal.addEventListener("abort", stop, { once: true });
          await runResult.done;
          req.signal.removeEventListener("abort", stop);
          const failed = runResult.choices.find((c) => c.error !== null);
          if (failed) return error(500, `generation failed: ${failed.error}`, "server_error");
          const completion = runResult.choices.reduce((s, c) => s + c.tokens, 0);
          return json(200, { id, object, created, model: modelName, choices: runResult.choices.map((c) => shape(c, c.text, c.finish)),
            usage: { prompt_tokens: p.prompt.length, completion_tokens: completion, total_tokens: p.prompt.length * p.n + completion } });
        }
      } catch (e) {
        if (e instanceof fi.FlashInferError) return error(400, e.message, "invalid_request_error");
        throw e;
      }
      // Streaming: one event per new text piece, one per finished choice, then [DONE].
      const encoder = new TextEncoder();
      let controllerRef: ReadableStreamDefaultController<Uint8Array> | null = null;
      const send = (value: unknown) => controllerRef?.enqueue(encoder.encode(`data: ${typeof value === "string" ? value : JSON.stringify(value)}\n\n`));
      const chunkObject = chat ? "chat.completion.chunk" : "text_completion";
      let started: ReturnType<typeof run> | null = null;
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          controllerRef = controller;
          try {
            started = run(p, (c, delta) => {
              if (delta.length > 0) send({ id, object: chunkObject, created, model: modelName, choices: [shape(c, delta, null)] });
            });
          } catch (e) {
            send({ error: { message: (e as Error).message, type: "invalid_request_error" } });
            controller.close();
            return;
          }
          started.done.then(() => {
            if (controllerRef === null) return;
            for (const c of started!.choices) {
              if (c.error !== null) send({ error: { message: `generation failed: ${c.error}`, type: "server_error" } });
              else send({ id, object: chunkObject, created, model: modelName, choices: [shape(c, "", c.finish)] });
            }
            send("[DONE]");
            controller.close();
            controllerRef = null;
          });
        },
        cancel() {
          controllerRef = null; // the client went away: stop its choices, free their pages
          started?.cancel();
        },
      });
      return new Response(stream, { headers: { "content-type": "text/event-stream", "cache-control": "no-cache" } });
    },
  });

  return {
    server,
    engine,
    url: `http://localhost:${server.port}`,
    stop(): void {
      closed = true;
      server.stop(true);
      engine.dispose();
    },
  };
}

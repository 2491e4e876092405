// The serving example's continuous-batching engine (examples/llama/engine.ts) and page allocator
// (pages.ts) on the CPU: greedy outputs do not depend on batching, chunking or arrival time;
// pages return to the free list; seeded sampling is reproducible per request.
import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PRESETS, writeSyntheticCheckpoint } from "../examples/llama/checkpoint.ts";
import { DecodeGraph } from "../examples/llama/decode_graph.ts";
import { Engine } from "../examples/llama/engine.ts";
import { LlamaModel } from "../examples/llama/model.ts";
import { PageAllocator } from "../examples/llama/pages.ts";
import { encode } from "../examples/llama/tokenizer.ts";
import { expectFlashInferError, withContext } from "./helpers.ts";

const dir = mkdtempSync(join(tmpdir(), "fi-llama-engine-"));
const path = join(dir, "tiny.safetensors");
writeSyntheticCheckpoint(path, PRESETS.tiny!, 11);

describe("page allocator", () => {
  test("allocates in order, shares with reference counts, frees at the last release; refuses what it cannot give", () => {
    const a = new PageAllocator(4);
    expect(a.allocate(3)).toEqual([0, 1, 2]);
    expect(a.allocate(2)).toBeNull();
    expect(a.freePages).toBe(1);
    a.retain([1]);
    a.release([0, 1]);
    expect(a.freePages).toBe(2);
    expect(a.references(1)).toBe(1);
    a.release([1, 2]);
    expect(a.freePages).toBe(4);
    expectFlashInferError(() => a.release([3]), "invalid_argument", /page 3 is not allocated/);
  });
});

describe("continuous-batching engine (CPU)", () => {
  const prompts = [encode("hello"), encode("the quick brown fox"), encode("x"), encode("paged attention in bun")];
  const greedy = (prompt: number[], maxTokens = 6) => ({ prompt, maxTokens });

  test("greedy outputs are the same alone, batched, chunked, and with a request joining mid-way; every page returns", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const alone = prompts.map((p) => {
      using e = new Engine(model, { numPages: 16, pageSize: 4 });
      return e.generate([greedy(p)])[0]!;
    });
    expect(alone.every((o) => o.length === 6)).toBe(true);
    {
      using e = new Engine(model, { numPages: 32, pageSize: 4 });
      expect(e.generate(prompts.map((p) => greedy(p)))).toEqual(alone);
      expect(e.pages.freePages + e.cacheOnlyPages).toBe(32); // the prefix cache keeps prompts' full pages
    }
    {
      // Prompts cut into chunks of 3 tokens, at most 5 tokens per step.
      using e = new Engine(model, { numPages: 32, pageSize: 4, chunkTokens: 3, maxStepTokens: 5 });
      expect(e.generate(prompts.map((p) => greedy(p)))).toEqual(alone);
    }
    {
      // Two requests start; after three steps two more join.
      using e = new Engine(model, { numPages: 32, pageSize: 4 });
      const ids = [e.add(greedy(prompts[0]!)), e.add(greedy(prompts[1]!))];
      for (let i = 0; i < 3; ++i) e.step();
      ids.push(e.add(greedy(prompts[2]!)), e.add(greedy(prompts[3]!)));
      while (!e.idle) expect(e.step()).toBeGreaterThan(0);
      expect(ids.map((id) => e.take(id))).toEqual(alone);
      expect(e.pages.freePages + e.cacheOnlyPages).toBe(32); // the prefix cache keeps prompts' full pages
    }
  });

  test("parallel generation: n samples of one prompt share its full pages (the partial one copied) and equal n independent requests", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const prompt = encode("a shared prompt of some length"); // 31 tokens: 7 full pages of 4 and a partial one
    const sampled = { prompt, maxTokens: 6, temperature: 1.3, topK: 40, seed: 21 };
    const alone = [0, 1, 2].map((i) => {
      using e = new Engine(model, { numPages: 64, pageSize: 4 });
      return e.generate([{ ...sampled, seed: 21 + i }])[0]!;
    });
    for (const sharePrefix of [true, false]) {
      using e = new Engine(model, { numPages: 64, pageSize: 4 });
      const ids = e.addParallel(sampled, 3, { sharePrefix });
      let peak = 0;
      while (!e.idle) {
        e.step();
        peak = Math.max(peak, 64 - e.pages.freePages);
        if (sharePrefix && e.running === 3) expect(e.pages.references(0)).toBe(4); // the first prompt page: all samples and the prefix cache
      }
      withContext(`sharePrefix ${sharePrefix}`, () => {
        expect(ids.map((id) => e.take(id))).toEqual(alone);
        expect(e.pages.freePages + e.cacheOnlyPages).toBe(64);
        // Shared: ceil((31 + 6) / 4) = 10 pages for the first sample, ceil((3 + 6) / 4) = 3 more
        // each for the others (the partial prompt page copied, then their own tokens); unshared: 10 each.
        expect(peak).toBe(sharePrefix ? 16 : 30);
      });
    }
    using e = new Engine(model, { numPages: 64, pageSize: 4 });
    const greedyIds = e.addParallel({ prompt, maxTokens: 5 }, 4);
    while (!e.idle) e.step();
    const outs = greedyIds.map((id) => e.take(id)!);
    expect(outs.every((o) => JSON.stringify(o) === JSON.stringify(outs[0]))).toBe(true); // greedy: every sample the same
  });

  test("shared prompts attended as a 2-level cascade give the outputs of whole-table attention, mixed with other requests", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const run = (cascade: boolean) => {
      using e = new Engine(model, { numPages: 96, pageSize: 4, cascade });
      const groupA = e.addParallel({ prompt: encode("group a prompt, long enough"), maxTokens: 6 }, 3);
      const solo = e.add({ prompt: encode("solo"), maxTokens: 6 });
      const groupB = e.addParallel({ prompt: encode("b"), maxTokens: 5, temperature: 1.1, seed: 4 }, 2); // 2 tokens: no full page to share
      while (!e.idle) e.step();
      return { outs: [...groupA, solo, ...groupB].map((id) => e.take(id)), stats: { ...e.stats } };
    };
    const withCascade = run(true), without = run(false);
    expect(withCascade.stats.cascadeSteps).toBeGreaterThan(0);
    expect(without.stats.cascadeSteps).toBe(0);
    expect(withCascade.outs).toEqual(without.outs);
  });

  test("prefix cache: a repeated prompt reuses its full pages (same output, fewer prompt tokens run); eviction frees cache-only pages when pages run short", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const prompt = encode("a prompt that a later request repeats"); // 38 tokens
    using e = new Engine(model, { numPages: 24, pageSize: 4 });
    const first = e.generate([greedy(prompt)])[0]!;
    expect(e.stats.prefixHitTokens).toBe(0);
    expect(e.cachedPages).toBe(9); // floor(38 / 4) full prompt pages
    const again = e.generate([greedy(prompt)])[0]!;
    expect(again).toEqual(first);
    expect(e.stats.prefixHitTokens).toBe(36); // 9 pages; the last token still runs
    const longer = e.generate([greedy([...prompt, 1, 2, 3])])[0]!;
    using plain = new Engine(model, { numPages: 24, pageSize: 4, prefixCache: false });
    expect(longer).toEqual(plain.generate([greedy([...prompt, 1, 2, 3])])[0]!);
    expect(e.stats.prefixHitTokens).toBe(72);
    // Distinct prompts of 11 pages each in a 24-page cache: the older cached pages are evicted.
    for (const text of ["first distinct prompt, long enough ....", "second distinct prompt, long enough ...", "third distinct prompt, long enough ...."]) {
      expect(e.generate([greedy(encode(text))])[0]!).toEqual(plain.generate([greedy(encode(text))])[0]!);
      expect(e.pages.freePages + e.cacheOnlyPages).toBe(24);
    }
    expect(e.cachedPages).toBeLessThanOrEqual(24);
  });

  test("a full cache makes later requests wait, not fail; stop tokens end a request; seeded sampling repeats", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    // Each request needs ceil((len + 6) / 4) pages; 8 pages hold about two at a time.
    using small = new Engine(model, { numPages: 8, pageSize: 4 });
    const outs = small.generate(prompts.slice(0, 3).map((p) => greedy(p)));
    using big = new Engine(model, { numPages: 32, pageSize: 4 });
    expect(outs).toEqual(big.generate(prompts.slice(0, 3).map((p) => greedy(p))));
    const first = outs[0]!;
    const [stopped] = big.generate([{ prompt: prompts[0]!, maxTokens: 6, stopTokens: [first[2]!] }]);
    expect(stopped).toEqual(first.slice(0, first.indexOf(first[2]!)));
    const sampled = (seed: number) => big.generate([{ prompt: prompts[1]!, maxTokens: 8, temperature: 1.5, topP: 0.95, seed }])[0]!;
    expect(sampled(5)).toEqual(sampled(5));
    expect(sampled(5)).not.toEqual(sampled(6));
    expectFlashInferError(() => big.add({ prompt: [], maxTokens: 1 }), "invalid_argument", /prompt: expected at least one token id/);
    expectFlashInferError(() => big.add({ prompt: [1], maxTokens: 1000 }), "invalid_argument", /pages needed, the cache has 32/);
  });

  test("requests are checked whole when queued; a failed step ends its requests with the error, frees their pages, and the engine serves on", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const ended = new Map<number, string | undefined>();
    using e = new Engine(model, { numPages: 32, pageSize: 4, onToken: (id, _t, done, error) => done && ended.set(id, error?.message) });
    const ok = { prompt: prompts[1]!, maxTokens: 4 };
    for (const [bad, re] of [
      [{ seed: 2 ** 53 }, /seed: expected an integer in \[0, 2\^53 - 1\]/], [{ seed: -1 }, /seed/], [{ temperature: NaN }, /temperature/],
      [{ topK: 0 }, /topK/], [{ topP: 1.5 }, /topP/], [{ stopTokens: [0.5] }, /stopTokens/],
    ] as const)
      expectFlashInferError(() => e.add({ ...ok, ...bad }), "invalid_argument", re);
    expectFlashInferError(() => e.addParallel({ ...ok, seed: 2 ** 53 - 2 }, 3), "invalid_argument", /seed: expected an integer in \[0, 2\^53 - 3\]/);
    expect(e.idle).toBe(true); // nothing refused was queued
    // Engine options likewise; a cache no machine can hold (512 TiB a layer, past any address space) is
    // out_of_memory, not a RangeError from the page lists.
    for (const [opts, re] of [[{ numPages: 2 ** 31 }, /numPages: expected an integer in 1..2\^31 - 1/], [{ pageSize: 0 }, /pageSize/],
      [{ maxStepTokens: 0.5 }, /maxStepTokens/], [{ chunkTokens: NaN }, /chunkTokens/], [{ cascade: 1 }, /cascade: expected a boolean/]] as const)
      expectFlashInferError(() => new Engine(model, { numPages: 8, pageSize: 4, ...opts } as never), "invalid_argument", re);
    expectFlashInferError(() => new Engine(model, { numPages: 1 << 21, pageSize: 1 << 20 }), "out_of_memory", /out of (page-locked )?host memory/);

    const want = new Engine(model, { numPages: 32, pageSize: 4 });
    const expected = want.generate([ok, { prompt: prompts[3]!, maxTokens: 4 }]);
    want.dispose();
    // Two requests prefill, then the next step's forward fails: both end with its error.
    const a = e.add(ok), b = e.addParallel({ prompt: prompts[0]!, maxTokens: 5, temperature: 1, seed: 7 }, 2);
    e.step();
    const forward = model.forward;
    model.forward = () => {
      throw new Error("injected failure");
    };
    try {
      expect(() => e.step()).toThrow("injected failure");
    } finally {
      model.forward = forward;
    }
    for (const id of [a, ...b]) expect(ended.get(id)).toBe("injected failure");
    expect(e.idle).toBe(true);
    expect(e.pages.freePages + e.cacheOnlyPages).toBe(32);
    // The engine goes on: later requests give what a fresh engine gives.
    expect(e.generate([ok, { prompt: prompts[3]!, maxTokens: 4 }])).toEqual(expected);
  });

  test("decode steps from the graph path (padded to power-of-two buckets on a scratch page) give the plain forward's outputs; a sampled request's tokens do not depend on its batch", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const reqs = prompts.map((p, i) => ({ prompt: p, maxTokens: 4 + 2 * i })); // requests end at different steps: buckets 4, 2, 1
    using plain = new Engine(model, { numPages: 32, pageSize: 4, cudaGraphs: false });
    using graphs = new Engine(model, { numPages: 32, pageSize: 4, cudaGraphs: true });
    graphs.warmup(4); // buckets 1, 2, 4 made ahead (a step of padding alone each)
    expect(graphs.generate(reqs)).toEqual(plain.generate(reqs));
    expect(plain.stats.graphSteps).toBe(0);
    expect(graphs.stats.graphSteps).toBeGreaterThanOrEqual(8);
    expect(graphs.usablePages).toBe(31); // one page set aside for the padding requests
    expectFlashInferError(() => graphs.add({ prompt: [1], maxTokens: 124 }), "invalid_argument", /32 pages needed, the cache has 31/);
    // One sampled request alone, then batched with three others (its row and the step's batch differ).
    const sampled = { prompt: prompts[1]!, maxTokens: 8, temperature: 1.5, topK: 50, topP: 0.95, seed: 41 };
    const [alone] = plain.generate([sampled]);
    const batched = graphs.generate([{ prompt: prompts[0]!, maxTokens: 8, temperature: 0.8, seed: 3 }, sampled,
      { prompt: prompts[2]!, maxTokens: 8 }, { prompt: prompts[3]!, maxTokens: 5, temperature: 2, seed: 9 }]);
    expect(batched[1]).toEqual(alone!);
    expect(new Set(alone).size).toBeGreaterThan(1);
  });

  test("the decode graph refuses what it cannot run with a FlashInferError naming it", () => {
    using model = LlamaModel.load(path, { device: "cpu" });
    const cache = model.newKvCache(8, 4);
    try {
      expectFlashInferError(() => new DecodeGraph(model, cache, { batch: 0, maxPages: 4, scratchPage: 7 }), "invalid_argument", /batch: expected a positive integer/);
      expectFlashInferError(() => new DecodeGraph(model, cache, { batch: 2, maxPages: 4, scratchPage: 8 }), "invalid_argument", /scratchPage: expected a page of the cache, in \[0, 8\)/);
      using g = new DecodeGraph(model, cache, { batch: 2, maxPages: 4, scratchPage: 7 });
      const step = (n: number, tokensPer = 1, pagesPer = 1) => ({
        tokens: new Int32Array(n * tokensPer).fill(65), qoIndptr: Int32Array.from({ length: n + 1 }, (_, r) => r * tokensPer),
        positions: new Int32Array(n * tokensPer), kvIndptr: Int32Array.from({ length: n + 1 }, (_, r) => r * pagesPer),
        kvIndices: Int32Array.from({ length: n * pagesPer }, (_, i) => i), kvLastPageLen: new Int32Array(n).fill(1),
      });
      expectFlashInferError(() => g.run(step(3)), "invalid_argument", /step: 3 requests; this graph runs up to 2/);
      expectFlashInferError(() => g.run(step(1, 2)), "invalid_argument", /one new token per request/);
      expectFlashInferError(() => g.run(step(2, 1, 3)), "invalid_argument", /step: 6 page-table entries; this graph holds 4/);
      using logits = g.run(step(2));
      expect(logits.shape).toEqual([2, model.config.vocabSize]);
      expect(logits.toFloat32Array().every(Number.isFinite)).toBe(true);
    } finally {
      cache.forEach((t) => t.dispose());
    }
  });
});

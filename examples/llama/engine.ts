// A continuous-batching engine over the Llama model (model.ts) and the page allocator (pages.ts):
// requests join at every step; a step carries the decode token of every running request and the
// next chunk of waiting prompts (long prompts are cut into chunks of at most `chunkTokens`), up
// to `maxStepTokens`. A request takes the pages for its whole length (prompt + maxTokens) when it
// starts, so running requests never wait for a page (no preemption needed; a waiting request
// starts once its pages are free), and gives them back when it finishes. Sampling per request: greedy at temperature 0, else softmax with the temperature and
// top-k / top-p with the request's seed (Philox offset = tokens generated so far, so a request's
// tokens do not depend on what it was batched with).
import * as fi from "../../lib/index.ts";
import { DecodeGraph } from "./decode_graph.ts";
import type { LlamaModel } from "./model.ts";
import { PageAllocator } from "./pages.ts";

export interface GenerateRequest {
  prompt: readonly number[];
  maxTokens: number;
  /** 0 (default): greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** Token ids that end the request (not included in the output). */
  stopTokens?: readonly number[];
}

export interface EngineOptions {
  numPages: number;
  pageSize: number;
  /** Tokens of one step (prompt chunks + decode tokens); default 512. */
  maxStepTokens?: number;
  /** Longest prompt chunk per step; default maxStepTokens. */
  chunkTokens?: number;
  /**
   * Attend shared prompts once per group through the 2-level cascade (composable formats); false
   * attends each sample's whole table (the comparison). Default true.
   */
  cascade?: boolean;
  /**
   * Keep prompts' full pages after their requests end and reuse them for later prompts that start
   * with the same tokens (least recently used first out when pages run short). Default true.
   */
  prefixCache?: boolean;
  /**
   * Run decode steps (one new token per request, no cascade) from CUDA graphs, one per batch
   * bucket (powers of two up to 256 requests), captured at first use (decode_graph.ts). Default:
   * on for CUDA models; on the CPU the same padded step runs directly (for tests). One page of
   * the cache is set aside as the padding requests' scratch page.
   */
  cudaGraphs?: boolean;
  /**
   * Called for every generated token (not for stop tokens), and with done = true when a request
   * ends; `error` is set when it ended because a step failed (its output stops there).
   */
  onToken?: (id: number, token: number | null, done: boolean, error?: Error) => void;
}

/** A request or option the engine refuses. */
const invalid = (message: string) => new fi.FlashInferError("invalid_argument", message);

interface Running {
  id: number;
  req: GenerateRequest;
  tokens: number[]; // prompt, then generated
  cached: number; // tokens whose keys and values are in the cache
  pages: number[];
  output: number[];
  /** Parallel samples of this request's prompt, forked from it once the prompt is in the cache. */
  followers: Running[];
  /** Requests of one group share their first `shared` pages (a prompt's full pages); group: the first sample's id. */
  group: number;
  shared: number;
}

export class Engine {
  readonly model: LlamaModel;
  readonly pages: PageAllocator;
  readonly pageSize: number;
  readonly maxStepTokens: number;
  readonly chunkTokens: number;
  readonly #cache: fi.Tensor[];
  readonly #waiting: Running[] = [];
  readonly #running: Running[] = [];
  readonly #finished = new Map<number, number[]>();
  readonly #onToken: EngineOptions["onToken"];
  readonly #useCascade: boolean;
  readonly #graphs = new Map<number, DecodeGraph>();
  readonly #scratchPage: number | null;
  /** Steps run, those whose attention ran as a cascade, prompt tokens served from the prefix cache. */
  readonly stats = { steps: 0, cascadeSteps: 0, graphSteps: 0, prefixHitTokens: 0 };
  readonly #usePrefixCache: boolean;
  // The prefix cache: one entry per cached full page, keyed by its parent entry's id and its tokens
  // (ids are never reused, so an evicted parent's children cannot match again); the map's order
  // is least recently used first. The cache holds one reference on each page.
  readonly #prefix = new Map<string, { page: number; entry: number }>();
  #nextEntry = 1;
  #nextId = 0;

  constructor(model: LlamaModel, opts: EngineOptions) {
    if (typeof opts !== "object" || opts === null) throw invalid("opts: expected an options object");
    const count = (name: keyof EngineOptions, fallback?: number): number => {
      const v = opts[name] ?? fallback;
      if (!(Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 0x7fffffff)) throw invalid(`${name}: expected an integer in 1..2^31 - 1, got ${String(v)}`);
      return v as number;
    };
    const flag = (name: keyof EngineOptions, fallback: boolean): boolean => {
      const v = opts[name] ?? fallback;
      if (typeof v !== "boolean") throw invalid(`${name}: expected a boolean, got ${String(v)}`);
      return v;
    };
    if (opts.onToken !== undefined && typeof opts.onToken !== "function") throw invalid("onToken: expected a function");
    this.model = model;
    const numPages = count("numPages");
    this.pageSize = count("pageSize");
    this.maxStepTokens = count("maxStepTokens", 512);
    this.chunkTokens = count("chunkTokens", this.maxStepTokens);
    this.#onToken = opts.onToken;
    this.#useCascade = flag("cascade", true);
    this.#usePrefixCache = flag("prefixCache", true);
    const graphs = flag("cudaGraphs", model.device !== "cpu");
    // The cache first: a size the device cannot hold fails there (out_of_memory), before the page lists.
    this.#cache = model.newKvCache(numPages, this.pageSize);
    try {
      this.pages = new PageAllocator(numPages);
    } catch (e) {
      this.#cache.forEach((t) => t.dispose());
      throw e;
    }
    this.#scratchPage = graphs ? this.pages.allocate(1)![0]! : null;
  }

  /** Pages requests can hold (the cache less the graphs' scratch page). */
  get usablePages(): number {
    return this.pages.numPages - (this.#scratchPage === null ? 0 : 1);
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  get running(): number {
    return this.#running.length;
  }

  /** Pages the prefix cache holds (some may also be in use by requests). */
  get cachedPages(): number {
    return this.#prefix.size;
  }

  /** Pages held by the prefix cache alone (free for the taking, by eviction). */
  get cacheOnlyPages(): number {
    let n = 0;
    for (const { page } of this.#prefix.values()) n += this.pages.references(page) === 1 ? 1 : 0;
    return n;
  }

  /** Cache entries of the longest cached prefix of `prompt` (leaving at least its last token to run). */
  #lookup(prompt: readonly number[]): { key: string; page: number }[] {
    const P = this.pageSize, hits: { key: string; page: number }[] = [];
    let parent = 0;
    for (let i = 0; (i + 1) * P <= prompt.length - 1; ++i) {
      const key = `${parent}/${prompt.slice(i * P, (i + 1) * P).join(",")}`;
      const e = this.#prefix.get(key);
      if (!e) break;
      hits.push({ key, page: e.page });
      parent = e.entry;
    }
    return hits;
  }

  /** Registers r's full prompt pages in the prefix cache (those not cached yet). */
  #register(r: Running): void {
    const P = this.pageSize, prompt = r.req.prompt;
    let parent = 0;
    for (let i = 0; (i + 1) * P <= prompt.length; ++i) {
      const key = `${parent}/${prompt.slice(i * P, (i + 1) * P).join(",")}`;
      let e = this.#prefix.get(key);
      if (!e) {
        e = { page: r.pages[i]!, entry: this.#nextEntry++ };
        this.#prefix.set(key, e);
        this.pages.retain([e.page]);
      }
      parent = e.entry;
    }
  }

  /** n free pages, evicting least recently used cache-only pages as needed; null (nothing taken) if impossible. */
  #allocate(n: number): number[] | null {
    if (this.pages.freePages < n) {
      for (const [key, { page }] of this.#prefix) {
        if (this.pages.freePages >= n) break;
        if (this.pages.references(page) !== 1) continue; // a request still reads it
        this.#prefix.delete(key);
        this.pages.release([page]);
      }
    }
    return this.pages.allocate(n);
  }

  /** Ends a request now (a client went away): its pages return; its output so far can be taken. */
  cancel(id: number): void {
    const w = this.#waiting.findIndex((r) => r.id === id);
    if (w >= 0) {
      const [r] = this.#waiting.splice(w, 1);
      for (const x of [r!, ...r!.followers]) {
        this.pages.release(x.pages);
        this.#finished.set(x.id, x.output);
      }
      return;
    }
    for (const leader of [...this.#waiting]) {
      const f = leader.followers.findIndex((x) => x.id === id);
      if (f < 0) continue;
      const [x] = leader.followers.splice(f, 1);
      this.pages.release(x!.pages);
      this.#finished.set(id, x!.output);
      return;
    }
    const r = this.#running.find((x) => x.id === id);
    if (r) this.#finish(r);
  }

  /**
   * Every field of a request checked when it is queued: a value the sampler would refuse at a step
   * (a seed past 2^53, say) would otherwise fail that step for the whole batch.
   */
  #check(req: GenerateRequest, samples = 1): void {
    if (typeof req !== "object" || req === null) throw invalid("request: expected an object");
    const vocab = this.model.config.vocabSize;
    const isToken = (t: unknown) => Number.isInteger(t) && (t as number) >= 0 && (t as number) < vocab;
    if (!Array.isArray(req.prompt) || req.prompt.length < 1 || !req.prompt.every(isToken))
      throw invalid(`prompt: expected at least one token id in [0, ${vocab})`);
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 1) throw invalid(`maxTokens: expected a positive integer, got ${String(req.maxTokens)}`);
    const { temperature, topK, topP, seed, stopTokens } = req;
    if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0)) throw invalid(`temperature: expected a finite number >= 0, got ${String(temperature)}`);
    if (topK !== undefined && !(Number.isInteger(topK) && topK >= 1 && topK <= 0x7fffffff)) throw invalid(`topK: expected an integer >= 1, got ${String(topK)}`);
    if (topP !== undefined && !(typeof topP === "number" && topP > 0 && topP <= 1)) throw invalid(`topP: expected a number in (0, 1], got ${String(topP)}`);
    // Samples of one prompt use seed + i: all of them must be exact integers.
    if (seed !== undefined && !(Number.isSafeInteger(seed) && seed >= 0 && seed <= Number.MAX_SAFE_INTEGER - (samples - 1)))
      throw invalid(`seed: expected an integer in [0, 2^53 - ${samples}], got ${String(seed)}`);
    if (stopTokens !== undefined && !(Array.isArray(stopTokens) && stopTokens.every((t) => Number.isInteger(t))))
      throw invalid("stopTokens: expected an array of token ids");
  }

  /** Queues a request; returns its id. */
  add(req: GenerateRequest): number {
    this.#check(req);
    const need = Math.ceil((req.prompt.length + req.maxTokens) / this.pageSize);
    if (need > this.usablePages) throw new fi.FlashInferError("invalid_argument", `prompt, maxTokens: ${need} pages needed, the cache has ${this.usablePages}`);
    const id = this.#nextId++;
    this.#waiting.push({ id, req, tokens: [...req.prompt], cached: 0, pages: [], output: [], followers: [], group: id, shared: 0 });
    return id;
  }

  /**
   * Queues n samples of one prompt (parallel generation); sample i uses seed + i. With sharePrefix
   * (default) the prompt is prefilled once and its full pages are shared by all samples (each
   * gets its own copy of a partial last page); without it the samples are n independent requests.
   * Returns the samples' ids. Cancelling the first sample before its prompt is in the cache
   * cancels the samples not yet started.
   */
  addParallel(req: GenerateRequest, n: number, opts: { sharePrefix?: boolean } = {}): number[] {
    if (!Number.isInteger(n) || n < 1) throw new fi.FlashInferError("invalid_argument", `n: expected a positive integer, got ${n}`);
    this.#check(req, n);
    const seed = req.seed ?? this.#nextId;
    const sample = (i: number) => ({ ...req, seed: seed + i });
    if (n === 1 || opts.sharePrefix === false) return Array.from({ length: n }, (_, i) => this.add(sample(i)));
    const P = this.pageSize, L = req.prompt.length;
    const need = Math.ceil((L + req.maxTokens) / P) + (n - 1) * this.#followerPages(req);
    if (need > this.usablePages) throw new fi.FlashInferError("invalid_argument", `prompt, maxTokens, n: ${need} pages needed, the cache has ${this.usablePages}`);
    const leader = this.add(sample(0));
    const r = this.#waiting.at(-1)!;
    for (let i = 1; i < n; ++i) {
      const fid = this.#nextId++;
      r.followers.push({ id: fid, req: sample(i), tokens: [...req.prompt], cached: 0, pages: [], output: [], followers: [], group: fid, shared: 0 });
    }
    return [leader, ...r.followers.map((f) => f.id)];
  }

  /** Pages a forked sample holds alone: a copy of the prompt's partial last page, then its own tokens. */
  #followerPages(req: GenerateRequest): number {
    return Math.ceil(((req.prompt.length % this.pageSize) + req.maxTokens) / this.pageSize);
  }

  get idle(): boolean {
    return this.#waiting.length === 0 && this.#running.length === 0;
  }

  /** The generated tokens of a finished request (then forgotten), or undefined while it runs. */
  take(id: number): number[] | undefined {
    const out = this.#finished.get(id);
    this.#finished.delete(id);
    return out;
  }

  /**
   * Takes the pages of `r`'s whole length once, and those its samples will hold alone; false
   * (nothing taken) when too few are free.
   */
  #reserve(r: Running): boolean {
    if (r.pages.length > 0) return true;
    const each = r.followers.length > 0 ? this.#followerPages(r.req) : 0, own = each * r.followers.length;
    // Cached prefix pages first, held before allocating so that eviction cannot take them.
    const hits = this.#usePrefixCache ? this.#lookup(r.req.prompt) : [];
    const hitPages = hits.map((h) => h.page);
    this.pages.retain(hitPages);
    const got = this.#allocate(Math.ceil((r.req.prompt.length + r.req.maxTokens) / this.pageSize) - hits.length + own);
    if (!got) {
      this.pages.release(hitPages);
      return false;
    }
    for (const h of hits) {
      const e = this.#prefix.get(h.key)!;
      this.#prefix.delete(h.key); // most recently used: to the end
      this.#prefix.set(h.key, e);
    }
    r.cached = hits.length * this.pageSize;
    this.stats.prefixHitTokens += r.cached;
    r.pages = [...hitPages, ...got.slice(0, got.length - own)];
    const ownStart = got.length - own;
    r.followers.forEach((f, i) => (f.pages = got.slice(ownStart + i * each, ownStart + (i + 1) * each)));
    return true;
  }

  /** Starts f from its leader's cached prompt: the full pages shared, the partial last page copied. */
  #fork(leader: Running, f: Running): void {
    const P = this.pageSize, L = leader.req.prompt.length, full = Math.floor(L / P);
    const shared = leader.pages.slice(0, full);
    this.pages.retain(shared);
    if (L % P !== 0) {
      for (const layer of this.#cache) {
        using src = layer.select(0, leader.pages[full]!);
        using dst = layer.select(0, f.pages[0]!);
        dst.copy_(src);
      }
    }
    f.pages = [...shared, ...f.pages];
    f.cached = L;
    f.group = leader.group;
    f.shared = leader.shared = full;
  }

  /** One step: schedules, runs the model, samples; returns the number of tokens it processed (0: idle or blocked). */
  step(): number {
    // Decode tokens of running requests first, then prompt chunks of waiting ones.
    const batch: { r: Running; count: number }[] = [];
    let budget = this.maxStepTokens;
    for (const r of this.#running) {
      if (budget < 1) break;
      batch.push({ r, count: 1 });
      budget -= 1;
    }
    while (budget > 0 && this.#waiting.length > 0) {
      const r = this.#waiting[0]!;
      if (!this.#reserve(r)) break; // first come, first served: later prompts wait too
      const count = Math.min(r.tokens.length - r.cached, this.chunkTokens, budget);
      batch.push({ r, count });
      budget -= count;
      if (r.cached + count === r.tokens.length) this.#running.push(this.#waiting.shift()!);
      else break; // the rest of this prompt goes in the next steps
    }
    if (batch.length === 0) return 0;
    const cascade = this.#useCascade && batch.some(({ r }) => r.shared > 0);
    if (cascade) batch.sort((a, b) => a.r.group - b.r.group); // a group's requests side by side
    this.stats.steps += 1;
    this.stats.cascadeSteps += cascade ? 1 : 0;

    const tokens: number[] = [], positions: number[] = [], qoIndptr = [0], kvIndptr = [0], kvIndices: number[] = [], last: number[] = [];
    for (const { r, count } of batch) {
      for (let i = 0; i < count; ++i) {
        tokens.push(r.tokens[r.cached + i]!);
        positions.push(r.cached + i);
      }
      const len = r.cached + count;
      const pages = Math.ceil(len / this.pageSize);
      kvIndices.push(...r.pages.slice(0, pages));
      qoIndptr.push(tokens.length);
      kvIndptr.push(kvIndices.length);
      last.push(len - (pages - 1) * this.pageSize);
    }
    const stepBatch = { tokens: Int32Array.from(tokens), positions: Int32Array.from(positions), qoIndptr: Int32Array.from(qoIndptr),
      kvIndptr: Int32Array.from(kvIndptr), kvIndices: Int32Array.from(kvIndices), kvLastPageLen: Int32Array.from(last),
      cascade: cascade ? this.#cascadeTables(batch) : undefined };
    try {
      const graph = !cascade && tokens.length === batch.length ? this.#decodeGraph(batch.length, kvIndices.length) : null;
      this.stats.graphSteps += graph ? 1 : 0;
      using logits = graph ? graph.run(stepBatch) : this.model.forward(stepBatch, this.#cache);
      // Sampled before any request moves on, so that a failure leaves every request as it was.
      const draws: { row: number; r: Running }[] = [];
      batch.forEach(({ r, count }, row) => {
        if (r.cached + count < r.tokens.length) return; // a prompt chunk that is not the last: nothing to sample
        draws.push({ row, r });
        for (const f of r.followers) draws.push({ row, r: f });
      });
      const sampled = this.#sample(logits, draws);
      batch.forEach(({ r, count }) => {
        r.cached += count;
        if (r.cached < r.tokens.length) return;
        if (this.#usePrefixCache && r.output.length === 0) this.#register(r); // its prompt is in the cache now
        for (const f of r.followers.splice(0)) {
          this.#fork(r, f);
          this.#running.push(f);
        }
      });
      draws.forEach(({ r }, i) => this.#accept(r, sampled[i]!));
    } catch (e) {
      // The step's requests end here, with the error: a step that failed once would fail again.
      for (const { r } of batch) this.#abort(r, e as Error);
      throw e;
    }
    return tokens.length;
  }

  /** Ends r (and its samples not yet started) because a step failed: pages back, output so far kept. */
  #abort(r: Running, error: Error): void {
    for (const list of [this.#running, this.#waiting]) {
      const i = list.indexOf(r);
      if (i >= 0) list.splice(i, 1);
    }
    for (const x of [r, ...r.followers.splice(0)]) {
      this.pages.release(x.pages);
      x.pages = [];
      this.#finished.set(x.id, x.output);
      this.#onToken?.(x.id, null, true, error);
    }
  }

  /**
   * Captures the decode graph of every batch bucket up to `maxBatch` requests now (a step of
   * padding alone each), so that no request waits for a capture later. Nothing without graphs.
   */
  warmup(maxBatch = Math.min(256, this.maxStepTokens)): void {
    const empty = new Int32Array(0), none = { tokens: empty, qoIndptr: new Int32Array(1), positions: empty, kvIndptr: new Int32Array(1), kvIndices: empty, kvLastPageLen: empty };
    for (let bucket = 1; bucket <= maxBatch; bucket *= 2) this.#decodeGraph(bucket, 0)?.run(none).dispose();
  }

  /** The decode graph of the bucket of n requests with room for `pages` table entries, or null (graphs off, or too many requests). */
  #decodeGraph(n: number, pages: number): DecodeGraph | null {
    if (this.#scratchPage === null || n > 256) return null;
    const bucket = 2 ** Math.ceil(Math.log2(n));
    let g = this.#graphs.get(bucket);
    if (!g || g.maxPages < pages) {
      g?.dispose(); // outgrown: captured again with room to spare
      g = new DecodeGraph(this.model, this.#cache, { batch: bucket, maxPages: Math.max(2 * pages, 64 * bucket), scratchPage: this.#scratchPage });
      this.#graphs.set(bucket, g);
    }
    return g;
  }

  /** The 2-level tables of a batch sorted by group: each group's shared pages, each request's own pages. */
  #cascadeTables(batch: { r: Running; count: number }[]) {
    const P = this.pageSize;
    const groupIndptr = [0], sharedIndptr = [0], sharedIndices: number[] = [], ownIndptr = [0], ownIndices: number[] = [], ownLast: number[] = [];
    batch.forEach(({ r, count }, i) => {
      if (i > 0 && batch[i - 1]!.r.group !== r.group) groupIndptr.push(i);
      if (i === 0 || batch[i - 1]!.r.group !== r.group) {
        sharedIndices.push(...r.pages.slice(0, r.shared));
        sharedIndptr.push(sharedIndices.length);
      }
      const len = r.cached + count, pages = Math.ceil(len / P);
      ownIndices.push(...r.pages.slice(r.shared, pages));
      ownIndptr.push(ownIndices.length);
      ownLast.push(len - (pages - 1) * P);
    });
    groupIndptr.push(batch.length);
    return { groupIndptr: Int32Array.from(groupIndptr), sharedIndptr: Int32Array.from(sharedIndptr), sharedIndices: Int32Array.from(sharedIndices),
      ownIndptr: Int32Array.from(ownIndptr), ownIndices: Int32Array.from(ownIndices), ownLastPageLen: Int32Array.from(ownLast) };
  }

  /** Appends a sampled token to r (unless it is a stop token), and ends r when it should. */
  #accept(r: Running, token: number): void {
    const stop = r.req.stopTokens?.includes(token) ?? false;
    if (!stop) {
      r.output.push(token);
      this.#onToken?.(r.id, token, false);
    }
    r.tokens.push(token);
    if (stop || r.output.length >= r.req.maxTokens) this.#finish(r);
  }

  /**
   * The next token of each draw (a request and its row of logits; a prompt's samples share one
   * row), with one copy to the host per kind: greedy draws (temperature 0) take the row's argmax
   * on the host; the others are sampled in one batched call, softmax with each request's
   * temperature, then top-k / top-p, each request with its own Philox seed and a counter offset
   * from its token count, so its tokens do not depend on what it was batched with.
   */
  #sample(logits: fi.Tensor, draws: { row: number; r: Running }[]): number[] {
    const out = new Array<number>(draws.length);
    const greedy = draws.flatMap((d, i) => ((d.r.req.temperature ?? 0) === 0 ? [i] : []));
    if (greedy.length > 0) {
      const vocab = logits.shape[1]!;
      const rows = greedy.map((i) => draws[i]!.row);
      const allRows = rows.length === logits.shape[0] && rows.every((row, k) => row === k);
      using picked = allRows ? logits.slice(0) : fi.gatherRows(logits, Int32Array.from(rows));
      const v = picked.toFloat32Array();
      greedy.forEach((i, k) => {
        let best = k * vocab;
        for (let j = best + 1; j < (k + 1) * vocab; ++j) if (v[j]! > v[best]!) best = j;
        out[i] = best - k * vocab;
      });
    }
    const random = draws.flatMap((d, i) => ((d.r.req.temperature ?? 0) !== 0 ? [i] : []));
    if (random.length > 0) {
      const temperature = new Float32Array(logits.shape[0]!).fill(1);
      for (const i of random) temperature[draws[i]!.row] = draws[i]!.r.req.temperature!;
      const req = (i: number) => draws[i]!.r;
      using probs = fi.softmax(logits, { temperature });
      // topK = vocab size and topP = 1 filter nothing.
      using tokens = fi.topKTopPSamplingFromProbs(probs, random.map((i) => req(i).req.topK ?? this.model.config.vocabSize),
        random.map((i) => req(i).req.topP ?? 1), {
          indices: random.map((i) => draws[i]!.row),
          seed: random.map((i) => req(i).req.seed ?? req(i).id),
          offset: random.map((i) => req(i).output.length * 1024),
        });
      const t = tokens.toArray() as Int32Array;
      random.forEach((i, k) => (out[i] = t[k]!));
    }
    return out;
  }

  #finish(r: Running): void {
    this.pages.release(r.pages);
    r.pages = [];
    this.#running.splice(this.#running.indexOf(r), 1);
    this.#finished.set(r.id, r.output);
    this.#onToken?.(r.id, null, true);
  }

  /** Runs every queued request to the end; their outputs in the order given. */
  generate(reqs: readonly GenerateRequest[]): number[][] {
    const ids = reqs.map((r) => this.add(r));
    while (!this.idle) {
      if (this.step() === 0) throw new fi.FlashInferError("internal", "generate: no request could run a step");
    }
    return ids.map((id) => this.take(id)!);
  }

  dispose(): void {
    for (const g of this.#graphs.values()) g.dispose();
    this.#graphs.clear();
    this.#cache.forEach((t) => t.dispose());
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

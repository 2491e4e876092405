// Decode steps replayed from a CUDA graph: a step of up to `batch` requests, one new token each,
// runs every layer from one captured graph instead of ~12 launches per layer issued from the
// host. The graph is captured once per batch bucket over fixed buffers: the activations, the
// step's index arrays (one device buffer, refreshed from a page-locked host mirror by one copy
// per step), the decode wrapper's plan (useCudaGraph: its launch shapes stay fixed and plan()
// rewrites the page table in its workspace) and the logits. A step of fewer requests is padded
// to the bucket with requests of one token on a scratch page the caller sets aside (their keys
// and values land there; their logits are not returned). On the CPU there is nothing to capture:
// run() computes the same body directly (the same buffers, padding and plans), which is what
// the CPU tests check.
import * as fi from "../../lib/index.ts";
import type { Activations, LlamaModel, StepBatch, StepIndices } from "./model.ts";

export interface DecodeGraphOptions {
  /** Requests of the bucket: a step may hold 1..batch. */
  batch: number;
  /** Most page-table entries (kvIndptr[n]) of a step, padding excluded. */
  maxPages: number;
  /** A page of the cache no request uses: the padding requests write their one token there. */
  scratchPage: number;
}

export class DecodeGraph {
  readonly batch: number;
  readonly maxPages: number;
  readonly #model: LlamaModel;
  readonly #cache: fi.Tensor[];
  readonly #scratchPage: number;
  readonly #pageSize: number;
  readonly #workspace: fi.Tensor;
  readonly #wrapper: fi.BatchDecodeWithPagedKVCacheWrapper;
  readonly #acts: Activations;
  /** positions [B] | tokenRequest [B] | kvIndptr [B + 1] | kvLastPageLen [B] | kvIndices [maxPages + B], on the device and on the host. */
  readonly #ints: fi.Tensor;
  readonly #hostInts: fi.Tensor;
  readonly #io: StepIndices;
  readonly #logits: fi.Tensor; // [B, vocab] in the model's dtype
  readonly #logits32: fi.Tensor; // float32
  readonly #uploaded: fi.Event | null;
  #graph: fi.CudaGraph | null = null;
  readonly #owned: fi.Tensor[] = [];

  constructor(model: LlamaModel, cache: fi.Tensor[], opts: DecodeGraphOptions) {
    const B = opts.batch, c = model.config, device = model.device;
    if (!(Number.isInteger(B) && B >= 1)) throw new fi.FlashInferError("invalid_argument", `batch: expected a positive integer, got ${B}`);
    if (!(Number.isInteger(opts.maxPages) && opts.maxPages >= 1)) throw new fi.FlashInferError("invalid_argument", `maxPages: expected a positive integer, got ${opts.maxPages}`);
    if (!(Number.isInteger(opts.scratchPage) && opts.scratchPage >= 0 && opts.scratchPage < cache[0]!.shape[0]!))
      throw new fi.FlashInferError("invalid_argument", `scratchPage: expected a page of the cache, in [0, ${cache[0]!.shape[0]}), got ${opts.scratchPage}`);
    this.batch = B;
    this.maxPages = opts.maxPages;
    this.#model = model;
    this.#cache = cache;
    this.#scratchPage = opts.scratchPage;
    this.#pageSize = cache[0]!.shape[2]!;
    const keep = <T extends fi.Tensor>(t: T) => (this.#owned.push(t), t);
    this.#workspace = keep(fi.empty([64 << 20], { dtype: "uint8", device }));
    this.#wrapper = new fi.BatchDecodeWithPagedKVCacheWrapper(this.#workspace, "NHD", { useCudaGraph: device !== "cpu" });
    this.#acts = model.newActivations(B);
    this.#owned.push(...Object.values(this.#acts));
    const n = 4 * B + 1 + opts.maxPages + B;
    this.#ints = keep(fi.empty([n], { dtype: "int32", device }));
    this.#hostInts = keep(fi.empty([n], { dtype: "int32", device: "cpu" })); // page-locked where a GPU is
    const part = (start: number, length: number) => keep(this.#ints.slice(0, start, start + length));
    this.#io = { positions: part(0, B), tokenRequest: part(B, B), kvIndptr: part(2 * B, B + 1), kvLastPageLen: part(3 * B + 1, B),
      kvIndices: part(4 * B + 1, opts.maxPages + B) };
    this.#logits = keep(fi.empty([B, c.vocabSize], { dtype: c.dtype, device }));
    this.#logits32 = c.dtype === "float32" ? this.#logits : keep(fi.empty([B, c.vocabSize], { dtype: "float32", device }));
    this.#uploaded = device === "cpu" ? null : new fi.Event({ device, enableTiming: false });
    // Token r belongs to request r in every step: that part of the mirror never changes.
    const host = this.#hostInts.hostView() as Int32Array;
    for (let r = 0; r < B; ++r) host[B + r] = r;
  }

  /**
   * Runs a decode step (every request's qoIndptr span is 1 token; no cascade) and returns the
   * logits of its requests, float32 [n, vocab]: a view of this graph's buffer, valid until the
   * next run (dispose the view; the buffer stays). A step of no requests (qoIndptr [0]) runs the
   * padding alone: it captures the graph ahead of the first real step.
   */
  run(step: StepBatch): fi.Tensor {
    const B = this.batch, n = step.qoIndptr.length - 1, pages = step.kvIndptr[n]!;
    if (!(n >= 0 && n <= B)) throw new fi.FlashInferError("invalid_argument", `step: ${n} requests; this graph runs up to ${B}`);
    if (step.tokens.length !== n || step.cascade) throw new fi.FlashInferError("invalid_argument", "step: expected one new token per request and no cascade (a decode step)");
    if (pages > this.maxPages) throw new fi.FlashInferError("invalid_argument", `step: ${pages} page-table entries; this graph holds ${this.maxPages}`);
    // The padded step: requests n..B-1 hold one token on the scratch page.
    const tokens = new Int32Array(B), kvIndptr = new Int32Array(B + 1), last = new Int32Array(B).fill(1);
    tokens.set(step.tokens);
    kvIndptr.set(step.kvIndptr);
    for (let r = n; r < B; ++r) kvIndptr[r + 1] = kvIndptr[r]! + 1;
    last.set(step.kvLastPageLen);
    const indices = new Int32Array(pages + B - n).fill(this.#scratchPage);
    indices.set(step.kvIndices.subarray(0, pages));

    // The previous step's upload must be done before its host mirror is rewritten.
    this.#uploaded?.synchronize();
    const host = this.#hostInts.hostView() as Int32Array;
    host.set(step.positions, 0);
    host.fill(0, n, B); // padding rows: position 0
    host.set(kvIndptr, 2 * B);
    host.set(last, 3 * B + 1);
    host.set(indices, 4 * B + 1);
    this.#ints.copy_(this.#hostInts, { nonBlocking: true });
    this.#uploaded?.record();

    const c = this.#model.config;
    this.#wrapper.plan({ indptr: kvIndptr, indices, lastPageLen: last, numQoHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim,
      pageSize: this.#pageSize, qDataType: c.dtype });
    this.#model.embed(tokens, this.#acts.residual);
    if (this.#model.device === "cpu") this.#body(true);
    else {
      if (!this.#graph) {
        // First use outside the capture (kernel set-up, and the page table's check), then the
        // embeddings again: the layers add into acts.residual in place.
        this.#body(true);
        this.#graph = new fi.CudaGraph({ device: this.#model.device }).capture(() => this.#body(false));
        this.#model.embed(tokens, this.#acts.residual);
      }
      this.#graph.replay();
    }
    return this.#logits32.slice(0, 0, n);
  }

  /** Every layer, the LM head and the float32 logits, from the fixed buffers. */
  #body(checkIndices: boolean): void {
    const model = this.#model, cache = this.#cache;
    model.layers(this.#acts, this.#io, cache, (q, l, out) => void this.#wrapper.run(q, cache[l]!, { out }), checkIndices);
    model.lmHead(this.#acts.h, this.#logits);
    if (this.#logits32 !== this.#logits) this.#logits32.copy_(this.#logits);
  }

  dispose(): void {
    this.#graph?.dispose();
    this.#graph = null;
    this.#uploaded?.dispose();
    this.#wrapper.dispose();
    for (const t of this.#owned) t.dispose();
    this.#owned.length = 0;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

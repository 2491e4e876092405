// POD attention (FlashInfer's PODWithPagedKVCacheWrapper): a chunked-prefill step's two phases
// planned together and run side by side. The prefill part is one request (causal or not, its keys
// ragged in k and v or pages of the paged cache), the decode part a batch over the paged cache.
// On CUDA the decode launch goes to a second stream forked from the current one and joined back
// with events, so the two phases share the SMs instead of running back to back (the fork and the
// join are captured into a CUDA graph like any launch). Each part runs the kernel its own plan
// picks, so results equal the separate wrappers' bit for bit. On the CPU they run in turn.
import { planOnWorkspaceParts } from "./attention.ts";
import { BatchDecodeWithPagedKVCacheWrapper, type DecodePlanParams, type DecodeRunOptions } from "./decode.ts";
import type { Device } from "./device.ts";
import { FlashInferError, argCheck } from "./errors.ts";
import type { KVLayout } from "./kv_cache.ts";
import { type AttentionPlanInfo, BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper, type PrefillBackend } from "./prefill.ts";
import { Event, Stream, currentStream, withStream } from "./stream.ts";
import { Tensor, empty } from "./tensor.ts";

/** The decode part's plan (the decode wrapper's parameters, its page table included) and the prefill part's. */
export interface PODPlanParams extends Omit<DecodePlanParams, "variantParams"> {
  /** Query rows of the prefill request (the chunk). */
  prefillQoLen: number;
  /** Its keys, ragged in run()'s kPrefill / vPrefill (prefillKvLen), or pages of the paged cache (prefillPages). */
  prefillKvLen?: number;
  prefillPages?: { indices: Int32Array | number[]; lastPageLen: number };
  /** The prefill part's mask (bottom-right aligned, as prefill). Default true: a chunk of a prompt. */
  causal?: boolean;
}

export interface PODRunOptions extends Pick<DecodeRunOptions, "returnLse" | "kScale" | "vScale"> {
  outPrefill?: Tensor;
  outDecode?: Tensor;
}

type Part = Tensor | { out: Tensor; lse: Tensor };

export class PODWithPagedKVCacheWrapper {
  readonly kvLayout: KVLayout;
  readonly device: Device;
  readonly #workspace: Tensor;
  readonly #backend: PrefillBackend | undefined;
  #prefill: BatchPrefillWithRaggedKVCacheWrapper | BatchPrefillWithPagedKVCacheWrapper | null = null;
  #decode: BatchDecodeWithPagedKVCacheWrapper | null = null;
  // CUDA: the side stream the decode part runs on, and the fork / join events.
  #side: { stream: Stream; fork: Event; join: Event } | null = null;

  /** The workspace is shared out between the two parts' plans (half each). */
  constructor(workspace: Tensor, kvLayout: KVLayout = "NHD", opts: { backend?: PrefillBackend } = {}) {
    argCheck(workspace instanceof Tensor && !workspace.disposed, "workspace: expected a live Tensor");
    argCheck(kvLayout === "NHD" || kvLayout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(kvLayout)}`);
    this.#workspace = workspace.slice(0, 0, workspace.shape[0]!);
    this.kvLayout = kvLayout;
    this.device = workspace.device;
    this.#backend = opts.backend;
  }

  plan(params: PODPlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const { prefillQoLen: qoLen, prefillKvLen, prefillPages, numQoHeads, numKvHeads, headDim, pageSize } = params;
    argCheck(Number.isInteger(qoLen) && qoLen >= 1, () => `prefillQoLen: expected a positive integer, got ${String(qoLen)}`);
    argCheck((prefillKvLen === undefined) !== (prefillPages === undefined), "prefillKvLen, prefillPages: give exactly one (ragged or paged prefill keys)");
    const { causal = true, indptr, indices, lastPageLen, qDataType, kvDataType } = params;
    const { posEncodingMode, logitsSoftCap, windowLeft, smScale, ropeScale, ropeTheta } = params;
    const common = { numQoHeads, numKvHeads, qDataType, kvDataType, posEncodingMode, logitsSoftCap, windowLeft, smScale, ropeScale, ropeTheta };
    const prefillOptions = { ...common, headDimQk: headDim, causal, qoIndptr: [0, qoLen] };
    const opts = this.#backend ? { backend: this.#backend } : {};
    type Wrapper = BatchPrefillWithRaggedKVCacheWrapper | BatchPrefillWithPagedKVCacheWrapper | BatchDecodeWithPagedKVCacheWrapper;
    const [prefill, decode] = planOnWorkspaceParts<Wrapper>(this.#workspace, 2, "POD parts",
      (part, i) => i === 0
        ? prefillPages !== undefined ? new BatchPrefillWithPagedKVCacheWrapper(part, this.kvLayout, opts) : new BatchPrefillWithRaggedKVCacheWrapper(part, this.kvLayout, opts)
        : new BatchDecodeWithPagedKVCacheWrapper(part, this.kvLayout, opts),
      (w) => {
        if (w instanceof BatchDecodeWithPagedKVCacheWrapper) {
          w.plan({ ...common, indptr, indices, lastPageLen, headDim, pageSize });
        } else if (w instanceof BatchPrefillWithPagedKVCacheWrapper) {
          const pages = Int32Array.from(prefillPages!.indices);
          w.plan({ ...prefillOptions, pagedKvIndptr: [0, pages.length], pagedKvIndices: pages, pagedKvLastPageLen: [prefillPages!.lastPageLen], pageSize });
        } else {
          argCheck(Number.isInteger(prefillKvLen) && prefillKvLen! >= 0, () => `prefillKvLen: expected an integer >= 0, got ${String(prefillKvLen)}`);
          w.plan({ ...prefillOptions, kvIndptr: [0, prefillKvLen!] });
        }
      });
    this.#prefill?.dispose();
    this.#decode?.dispose();
    this.#prefill = prefill as BatchPrefillWithRaggedKVCacheWrapper | BatchPrefillWithPagedKVCacheWrapper;
    this.#decode = decode as BatchDecodeWithPagedKVCacheWrapper;
    if (this.device !== "cpu" && !this.#side) {
      this.#side = {
        stream: new Stream({ device: this.device, nonBlocking: true }),
        fork: new Event({ device: this.device, enableTiming: false }),
        join: new Event({ device: this.device, enableTiming: false }),
      };
    }
  }

  /**
   * Both parts: qPrefill [prefillQoLen, numQoHeads, headDim] over kPrefill / vPrefill ([kvLen,
   * numKvHeads, headDim] for ragged prefill keys; null with prefillPages, whose keys are in
   * pagedKvCache), and qDecode [batch, numQoHeads, headDim] over pagedKvCache. Returns each part's
   * output (q's dtype), or { out, lse } per part with returnLse.
   */
  run(qPrefill: Tensor, kPrefill: Tensor | null, vPrefill: Tensor | null, qDecode: Tensor, pagedKvCache: Tensor | [Tensor, Tensor],
    opts: PODRunOptions = {}): { prefill: Part; decode: Part } {
    const prefill = this.#prefill, decode = this.#decode;
    if (!prefill || !decode) throw new FlashInferError("invalid_argument", "run: call plan() first");
    argCheck(qPrefill instanceof Tensor && qDecode instanceof Tensor, "qPrefill, qDecode: expected Tensors");
    const paged = prefill instanceof BatchPrefillWithPagedKVCacheWrapper;
    argCheck(paged ? kPrefill === null && vPrefill === null : kPrefill instanceof Tensor && vPrefill instanceof Tensor,
      paged ? "kPrefill, vPrefill: the plan's prefill keys are pages of pagedKvCache; pass null" : "kPrefill, vPrefill: expected Tensors (the plan's prefill keys are ragged)");
    const { returnLse, kScale, vScale } = opts;
    // Outputs are made before the fork, on the current stream, so both streams see them allocated.
    const made: Tensor[] = [];
    const output = (given: Tensor | undefined, q: Tensor) => {
      if (given) return given;
      const t = empty(q.shape, { dtype: q.dtype, device: q.device });
      made.push(t);
      return t;
    };
    try {
      const outPrefill = output(opts.outPrefill, qPrefill), outDecode = output(opts.outDecode, qDecode);
      const runPrefill = () => paged
        ? (prefill as BatchPrefillWithPagedKVCacheWrapper).run(qPrefill, pagedKvCache, { out: outPrefill, returnLse, kScale, vScale })
        : (prefill as BatchPrefillWithRaggedKVCacheWrapper).run(qPrefill, kPrefill!, vPrefill!, { out: outPrefill, returnLse, kScale, vScale });
      const runDecode = () => decode.run(qDecode, pagedKvCache, { out: outDecode, returnLse, kScale, vScale });
      const side = this.#side;
      let result: { prefill: Part; decode: Part };
      if (!side) {
        result = { prefill: runPrefill(), decode: runDecode() };
      } else {
        const main = currentStream(this.device);
        side.fork.record(main);
        side.stream.waitEvent(side.fork);
        let decoded: Part | undefined;
        try {
          decoded = withStream(side.stream, runDecode);
        } finally {
          // Join even when the decode launch failed, so the side stream never runs ahead unjoined.
          side.join.record(side.stream);
          main.waitEvent(side.join);
        }
        result = { prefill: runPrefill(), decode: decoded };
      }
      made.length = 0;
      return result;
    } finally {
      for (const t of made) t.dispose();
    }
  }

  /** Each part's plan (the kernel each runs on, work items, splits), for inspection and tests. */
  get planInfo(): { prefill: AttentionPlanInfo; decode: AttentionPlanInfo } | null {
    const p = this.#prefill?.planInfo, d = this.#decode?.planInfo;
    return p && d ? { prefill: p, decode: d } : null;
  }

  dispose(): void {
    this.#prefill?.dispose();
    this.#decode?.dispose();
    this.#prefill = this.#decode = null;
    if (this.#side) {
      this.#side.fork.dispose();
      this.#side.join.dispose();
      this.#side.stream.dispose();
      this.#side = null;
    }
    this.#workspace.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

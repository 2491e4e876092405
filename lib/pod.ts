// POD attention (FlashInfer's PODWithPagedKVCacheWrapper): a chunked-prefill step's two phases
// planned together and run side by side. The prefill part is one request (causal or not, its keys
// ragged in k and v or pages of the paged cache), the decode part a batch over the paged cache.
//
// One launch where it serves (prefill keys in the paged cache; on CUDA the Hopper kernel): the
// chunk and the decode requests are one prefill plan over one cache, whose persistent CTAs take
// the chunk's query tiles and the decode rows from one longest-first list (interleaving the two
// kinds was measured slower: bench/README, POD). Queries and outputs join without a copy when the
// decode rows directly follow the chunk's in one tensor (as an engine's batch lays them out);
// otherwise they go through a staging buffer. Decode rows then run on the prefill kernel: equal
// to the decode wrapper's result within rounding, not bit for bit.
// Otherwise (ragged prefill keys, a kernel the joint plan cannot use, or { oneLaunch: false }) each
// part runs the kernel its own plan picks, results equal to the separate wrappers' bit for bit; on
// CUDA the decode launch goes to a second stream forked from the current one and joined back with
// events (the fork and the join are captured into a CUDA graph like any launch). On the CPU the
// parts run in turn.
import { hostInt32, planOnWorkspaceParts } from "./attention.ts";
import { BatchDecodeWithPagedKVCacheWrapper, type DecodePlanParams, type DecodeRunOptions } from "./decode.ts";
import type { Device } from "./device.ts";
import { FlashInferError, argCheck, checkOptions } from "./errors.ts";
import type { KVLayout } from "./kv_cache.ts";
import { type AttentionPlanInfo, BatchPrefillWithPagedKVCacheWrapper, type PagedPrefillPlanParams, BatchPrefillWithRaggedKVCacheWrapper, type PrefillBackend } from "./prefill.ts";
import { Event, Stream, capturingGraph, currentStream, withStream } from "./stream.ts";
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

export interface PODWrapperOptions {
  /** The kernels of both parts (as the prefill wrappers' option). "fa2" keeps the parts apart on CUDA. */
  backend?: PrefillBackend;
  /** Run both parts in one launch where that serves (default true); false always runs them as two. */
  oneLaunch?: boolean;
}

/** The joint plan of both parts. */
interface Joint {
  wrapper: BatchPrefillWithPagedKVCacheWrapper;
  qoLen: number;
  batch: number;
}

export class PODWithPagedKVCacheWrapper {
  readonly kvLayout: KVLayout;
  readonly device: Device;
  readonly #workspace: Tensor;
  readonly #backend: PrefillBackend | undefined;
  readonly #oneLaunch: boolean;
  #prefill: BatchPrefillWithRaggedKVCacheWrapper | BatchPrefillWithPagedKVCacheWrapper | null = null;
  #decode: BatchDecodeWithPagedKVCacheWrapper | null = null;
  #joint: Joint | null = null;
  // The joint plan's wrapper, made once and planned again at each plan() (a new wrapper per plan
  // cost a third of a step's plan time).
  #jointWrapper: BatchPrefillWithPagedKVCacheWrapper | null = null;
  // One launch: the staging of queries / outputs that do not join in place, kept across plans of
  // the same shape.
  readonly #staging: { q: Tensor | null; out: Tensor | null } = { q: null, out: null };
  // The configuration a joint plan was last refused for (an unsupported kernel): not tried again.
  #jointRefused = "";
  // CUDA: the side stream the decode part runs on, and the fork / join events.
  #side: { stream: Stream; fork: Event; join: Event } | null = null;

  /** The workspace holds the joint plan, or is shared out between the two parts' plans (half each). */
  constructor(workspace: Tensor, kvLayout: KVLayout = "NHD", opts: PODWrapperOptions = {}) {
    argCheck(workspace instanceof Tensor && !workspace.disposed, "workspace: expected a live Tensor");
    argCheck(kvLayout === "NHD" || kvLayout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(kvLayout)}`);
    checkOptions(opts);
    argCheck(opts.oneLaunch === undefined || typeof opts.oneLaunch === "boolean", () => `oneLaunch: expected a boolean, got ${String(opts.oneLaunch)}`);
    this.#workspace = workspace.slice(0, 0, workspace.shape[0]!);
    this.kvLayout = kvLayout;
    this.device = workspace.device;
    this.#backend = opts.backend;
    this.#oneLaunch = opts.oneLaunch ?? true;
  }

  plan(params: PODPlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const { prefillQoLen: qoLen, prefillKvLen, prefillPages, numQoHeads, numKvHeads, headDim, pageSize } = params;
    argCheck(Number.isInteger(qoLen) && qoLen >= 1, () => `prefillQoLen: expected a positive integer, got ${String(qoLen)}`);
    argCheck((prefillKvLen === undefined) !== (prefillPages === undefined), "prefillKvLen, prefillPages: give exactly one (ragged or paged prefill keys)");
    argCheck(prefillPages === undefined || (typeof prefillPages === "object" && prefillPages !== null),
      () => `prefillPages: expected { indices, lastPageLen }, got ${String(prefillPages)}`);
    const { causal = true, indptr, indices, lastPageLen, qDataType, kvDataType } = params;
    const { posEncodingMode, logitsSoftCap, windowLeft, smScale, ropeScale, ropeTheta } = params;
    const common = { numQoHeads, numKvHeads, qDataType, kvDataType, posEncodingMode, logitsSoftCap, windowLeft, smScale, ropeScale, ropeTheta };
    const prefillOptions = { ...common, headDimQk: headDim, causal, qoIndptr: [0, qoLen] };
    if (prefillPages !== undefined && this.#oneLaunch) {
      const { qoIndptr: _, ...options } = prefillOptions;
      const joint = this.#planJoint(params, { ...options, pageSize });
      if (joint) {
        this.#release();
        this.#joint = joint;
        return;
      }
    }
    const opts = this.#backend ? { backend: this.#backend } : {};
    type Wrapper = BatchPrefillWithRaggedKVCacheWrapper | BatchPrefillWithPagedKVCacheWrapper | BatchDecodeWithPagedKVCacheWrapper;
    // The last two-part plan's wrappers are planned again when the prefill keys are of the same kind.
    const old = this.#prefill && this.#decode && (this.#prefill instanceof BatchPrefillWithPagedKVCacheWrapper) === (prefillPages !== undefined)
      ? [this.#prefill, this.#decode] : [];
    const [prefill, decode] = planOnWorkspaceParts<Wrapper>(this.#workspace, 2, "POD parts",
      (part, i) => i === 0
        ? prefillPages !== undefined ? new BatchPrefillWithPagedKVCacheWrapper(part, this.kvLayout, opts) : new BatchPrefillWithRaggedKVCacheWrapper(part, this.kvLayout, opts)
        : new BatchDecodeWithPagedKVCacheWrapper(part, this.kvLayout, opts),
      (w) => {
        if (w instanceof BatchDecodeWithPagedKVCacheWrapper) {
          w.plan({ ...common, indptr, indices, lastPageLen, headDim, pageSize });
        } else if (w instanceof BatchPrefillWithPagedKVCacheWrapper) {
          const pages = hostInt32(prefillPages!.indices, "prefillPages.indices");
          w.plan({ ...prefillOptions, pagedKvIndptr: [0, pages.length], pagedKvIndices: pages, pagedKvLastPageLen: [prefillPages!.lastPageLen], pageSize });
        } else {
          argCheck(Number.isInteger(prefillKvLen) && prefillKvLen! >= 0, () => `prefillKvLen: expected an integer >= 0, got ${String(prefillKvLen)}`);
          w.plan({ ...prefillOptions, kvIndptr: [0, prefillKvLen!] });
        }
      }, { previous: old, broken: () => this.#release() });
    if (old.length === 0) this.#release();  // (reused parts mean the last plan was two-part: no joint plan to drop)
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
   * Both parts as one paged prefill plan: request 0 the chunk (its pages first), then one request
   * of one row per decode request. Null where it does not serve: the two-part plan then runs, and
   * it also names the argument of any bad input (the joint arrays would misname it).
   */
  #planJoint(params: PODPlanParams, prefill: Omit<PagedPrefillPlanParams, "qoIndptr" | "pagedKvIndptr" | "pagedKvIndices" | "pagedKvLastPageLen">): Joint | null {
    const backend = this.device === "cpu" ? undefined : this.#backend === undefined || this.#backend === "auto" ? "fa3" : this.#backend;
    if (backend === "fa2") return null;  // the mma.sync kernel gains nothing from sharing SMs
    const { numQoHeads, numKvHeads, headDim, pageSize, qDataType, kvDataType, posEncodingMode } = params;
    const key = [numQoHeads, numKvHeads, headDim, pageSize, qDataType, kvDataType, posEncodingMode, backend].map(String).join("|"); // any values: checked later
    if (key === this.#jointRefused) return null;
    let indptr: Int32Array, indices: Int32Array, lastPageLen: Int32Array;
    try {
      indptr = hostInt32(params.indptr, "indptr");
      indices = hostInt32(params.indices, "indices");
      lastPageLen = hostInt32(params.lastPageLen, "lastPageLen");
    } catch {
      return null;
    }
    const batch = indptr.length - 1, qoLen = params.prefillQoLen;
    if (batch < 0 || indptr[0] !== 0 || lastPageLen.length !== batch) return null;
    const pages = hostInt32(params.prefillPages!.indices, "prefillPages.indices"), np = pages.length;
    const jointIndptr = new Int32Array(batch + 2);
    jointIndptr[1] = np;
    for (let r = 1; r <= batch; ++r) jointIndptr[r + 1] = np + indptr[r]!;
    const jointIndices = new Int32Array(np + indices.length);
    jointIndices.set(pages);
    jointIndices.set(indices, np);
    const jointLast = new Int32Array(batch + 1);
    jointLast[0] = params.prefillPages!.lastPageLen;
    jointLast.set(lastPageLen, 1);
    const qoIndptr = new Int32Array(batch + 2);
    for (let r = 1; r <= batch + 1; ++r) qoIndptr[r] = qoLen + r - 1;
    const wrapper = (this.#jointWrapper ??= new BatchPrefillWithPagedKVCacheWrapper(this.#workspace, this.kvLayout, backend ? { backend } : {}));
    try {
      // Decode rows are alike causal or not (a request's one row sits after all of its keys).
      wrapper.plan({ ...prefill, qoIndptr, pagedKvIndptr: jointIndptr, pagedKvIndices: jointIndices, pagedKvLastPageLen: jointLast });
    } catch (e) {
      if (e instanceof FlashInferError && e.code === "unsupported") this.#jointRefused = key;
      return null;
    }
    return { wrapper, qoLen, batch };
  }

  /**
   * Both parts: qPrefill [prefillQoLen, numQoHeads, headDim] over kPrefill / vPrefill ([kvLen,
   * numKvHeads, headDim] for ragged prefill keys; null with prefillPages, whose keys are in
   * pagedKvCache), and qDecode [batch, numQoHeads, headDim] over pagedKvCache. Returns each part's
   * output (q's dtype), or { out, lse } per part with returnLse. In one launch, parts returned
   * without a given output are views of one joint tensor.
   */
  run(qPrefill: Tensor, kPrefill: Tensor | null, vPrefill: Tensor | null, qDecode: Tensor, pagedKvCache: Tensor | [Tensor, Tensor],
    opts: PODRunOptions = {}): { prefill: Part; decode: Part } {
    checkOptions(opts);
    argCheck(opts.returnLse === undefined || typeof opts.returnLse === "boolean", () => `returnLse: expected a boolean, got ${String(opts.returnLse)}`);
    if (this.#joint) return this.#runJoint(this.#joint, qPrefill, kPrefill, vPrefill, qDecode, pagedKvCache, opts);
    const prefill = this.#prefill, decode = this.#decode;
    if (!prefill || !decode) throw new FlashInferError("invalid_argument", "run: call plan() first");
    argCheck(qPrefill instanceof Tensor && qDecode instanceof Tensor, "qPrefill, qDecode: expected Tensors");
    const paged = prefill instanceof BatchPrefillWithPagedKVCacheWrapper;
    checkPrefillKeys(paged, kPrefill, vPrefill);
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

  #runJoint(j: Joint, qPrefill: Tensor, kPrefill: Tensor | null, vPrefill: Tensor | null, qDecode: Tensor, pagedKvCache: Tensor | [Tensor, Tensor],
    opts: PODRunOptions): { prefill: Part; decode: Part } {
    argCheck(qPrefill instanceof Tensor && qDecode instanceof Tensor, "qPrefill, qDecode: expected Tensors");
    checkPrefillKeys(true, kPrefill, vPrefill);
    argCheck(qPrefill.ndim === 3 && qPrefill.shape[0] === j.qoLen, () => `qPrefill: expected [${j.qoLen} (prefillQoLen), numQoHeads, headDim], got [${qPrefill.shape}]`);
    argCheck(qDecode.ndim === 3 && qDecode.shape[0] === j.batch && qDecode.shape[1] === qPrefill.shape[1] && qDecode.shape[2] === qPrefill.shape[2],
      () => `qDecode: expected [${j.batch} (the decode batch), ${qPrefill.shape[1]}, ${qPrefill.shape[2]}], got [${qDecode.shape}]`);
    argCheck(qDecode.dtype === qPrefill.dtype && qDecode.device === qPrefill.device,
      () => `qDecode: ${qDecode.dtype} on ${qDecode.device}, but qPrefill is ${qPrefill.dtype} on ${qPrefill.device}`);
    const { outPrefill, outDecode, returnLse, kScale, vScale } = opts;
    const shape = [j.qoLen + j.batch, qPrefill.shape[1]!, qPrefill.shape[2]!];
    for (const [name, given, q] of [["outPrefill", outPrefill, qPrefill], ["outDecode", outDecode, qDecode]] as const)
      argCheck(given === undefined || (given instanceof Tensor && given.dtype === q.dtype && given.device === q.device && given.ndim === 3 && given.shape.every((n, d) => n === q.shape[d])),
        () => `${name}: expected a ${q.dtype} tensor [${q.shape}] on ${q.device}`);
    // A persistent buffer for what does not join in place (allocated once, so runs with given
    // outputs allocate nothing and replay from a CUDA graph).
    const staging = (kind: "q" | "out") => {
      const had = this.#staging[kind];
      if (had && !had.disposed && had.dtype === qPrefill.dtype && had.shape.every((n, d) => n === shape[d])) return had;
      if (capturingGraph())
        throw new FlashInferError("invalid_argument", `${kind === "q" ? "qPrefill, qDecode" : "outPrefill, outDecode"}: separate tensors go through ` +
          "a staging buffer, which a CUDA graph capture cannot allocate: run once before capturing, or pass row ranges of one tensor");
      had?.dispose();
      return (this.#staging[kind] = empty(shape, { dtype: qPrefill.dtype, device: qPrefill.device }));
    };
    const temporary: Tensor[] = [];
    try {
      let q = Tensor.adjacentRows(qPrefill, qDecode);
      if (q) temporary.push(q);
      else {
        q = staging("q");
        copyIntoRows(q, 0, qPrefill);
        copyIntoRows(q, j.qoLen, qDecode);
      }
      // Outputs: given and adjacent, written in place; given apart, through staging and copied
      // back; not given, views of one new tensor.
      const joined = outPrefill && outDecode ? Tensor.adjacentRows(outPrefill, outDecode) : null;
      const out = joined ?? (outPrefill && outDecode ? staging("out") : empty(shape, { dtype: qPrefill.dtype, device: qPrefill.device }));
      if (joined || !(outPrefill && outDecode)) temporary.push(out);
      const result = j.wrapper.run(q, pagedKvCache, { out, returnLse, kScale, vScale });
      const part = (given: Tensor | undefined, start: number, end: number) => {
        if (!given) return out.slice(0, start, end);
        if (!joined) {
          using rows = out.slice(0, start, end);
          given.copy_(rows);
        }
        return given;
      };
      const parts = { prefill: part(outPrefill, 0, j.qoLen), decode: part(outDecode, j.qoLen, shape[0]!) };
      if (!returnLse) return parts;
      const lse = (result as { lse: Tensor }).lse;
      temporary.push(lse);
      return { prefill: { out: parts.prefill, lse: lse.slice(0, 0, j.qoLen) }, decode: { out: parts.decode, lse: lse.slice(0, j.qoLen) } };
    } finally {
      for (const t of temporary) t.dispose();
    }
  }

  /** Each part's plan (the kernel each runs on, work items, splits; one plan for both in one launch), for inspection and tests. */
  get planInfo(): { prefill: AttentionPlanInfo; decode: AttentionPlanInfo; oneLaunch: boolean } | null {
    const joint = this.#joint?.wrapper.planInfo;
    if (joint) return { prefill: joint, decode: joint, oneLaunch: true };
    const p = this.#prefill?.planInfo, d = this.#decode?.planInfo;
    return p && d ? { prefill: p, decode: d, oneLaunch: false } : null;
  }

  #release(): void {
    this.#prefill?.dispose();
    this.#decode?.dispose();
    this.#prefill = this.#decode = null;
    this.#joint = null;  // its wrapper stays for the next joint plan
  }

  dispose(): void {
    this.#release();
    this.#jointWrapper?.dispose();
    this.#jointWrapper = null;
    this.#staging.q?.dispose();
    this.#staging.out?.dispose();
    this.#staging.q = this.#staging.out = null;
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

function checkPrefillKeys(paged: boolean, kPrefill: Tensor | null, vPrefill: Tensor | null): void {
  argCheck(paged ? kPrefill === null && vPrefill === null : kPrefill instanceof Tensor && vPrefill instanceof Tensor,
    paged ? "kPrefill, vPrefill: the plan's prefill keys are pages of pagedKvCache; pass null" : "kPrefill, vPrefill: expected Tensors (the plan's prefill keys are ragged)");
}

/** Copies src into rows [at, at + src's rows) of dst, stream-ordered. */
function copyIntoRows(dst: Tensor, at: number, src: Tensor): void {
  using rows = dst.slice(0, at, at + src.shape[0]!);
  rows.copy_(src);
}

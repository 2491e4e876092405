// Sampling (FlashInfer's flashinfer.sampling): softmax, categorical sampling from probabilities
// or logits, top-k / top-p / min-p filtered sampling, renormalization and masking by top-k /
// top-p, and chain speculative sampling. Inputs are [batch, vocab] float32; results are int32
// token ids [batch] on the input's device. The kernels never sort: on cuda a filter's threshold
// comes from a radix select over the entries' bits (histograms in shared memory, usually two reads
// of the row), then one draw from the kept set.
//
// Filters keep a token by its probability p, ties at a threshold all kept:
//   top-k: fewer than k tokens have a larger probability; top-p: the tokens of larger probability
//   hold less than topP of the row's mass; min-p: p >= minP * max(p).
// Randomness: Philox4x32-10 from (seed, offset). The same seed and offset give the same tokens
// on every run of a backend; cpu and cuda draw from the same distribution (not the same tokens).
// Without a seed a library-wide generator advances its offset on every call.
//
// Bad input throws a FlashInferError before anything is written. Probability and parameter
// values are checked on cpu; for cuda tensors they are not read on the host (that would
// synchronize): bad values weigh 0 or are clamped and every token lies in [0, vocab) (see
// native/include/flashinfer.h). Per-request parameters given as numbers or typed arrays are
// checked here on both devices (typed arrays are copied to the device).
import { argCheck } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { SamplingParamsLayout, TensorDescBuffer, type TensorDescFields } from "./ffi/structs.ts";
import type { Device } from "./device.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty, tensor } from "./tensor.ts";

/** A per-request parameter: one number for every request, or one per request. */
export type PerRequest = number | Tensor | ArrayLike<number>;

/**
 * A Philox key for each request: an int64 Tensor [batch] on the input's device (bits read as
 * unsigned), or integers in [0, 2^64) (numbers, bigints, a BigInt64Array / BigUint64Array).
 */
export type PerRequestKey = Tensor | ArrayLike<number | bigint>;

export interface SamplingOptions {
  /**
   * Philox seed; with the same offset, the same tokens on every run. Default: the library
   * generator. One per request (PerRequestKey): request b draws with seed[b].
   */
  seed?: number | bigint | PerRequestKey;
  /**
   * Philox offset (default 0 with a seed; the generator's running offset without): request b
   * starts at counter offset + b * 16. One per request: request b starts at offset[b], so with
   * per-request seeds too its tokens depend neither on its row nor on the other requests (a
   * serving engine batching requests that each carry a seed).
   */
  offset?: number | bigint | PerRequestKey;
  /** Accepted for FlashInfer parity: both backends are always deterministic. */
  deterministic?: boolean;
  /** Rows to sample for: request b samples from row indices[b] (int32 Tensor or integers). Default: row b. */
  indices?: Tensor | ArrayLike<number>;
}

export interface TopKTopPOptions extends SamplingOptions {
  /** "top_k_first" (default): top-p within the top-k renormalized distribution; "joint": both filters on the original probabilities. */
  filterApplyOrder?: "top_k_first" | "joint";
}

export interface SoftmaxOptions {
  /** Divides the logits first: a number, or one per row (default 1); finite and > 0. */
  temperature?: PerRequest;
}

export interface ChainSpeculativeResult {
  /** [batch, n + 1] int32: the emitted draft tokens, one sampled token, then -1. */
  outputTokenIds: Tensor;
  /** [batch] int32: draft tokens that pass u < p/q, each considered independently. */
  acceptedNum: Tensor;
  /** [batch] int32: draft tokens emitted (accepted before the first rejection); the bonus or replacement token is not counted. */
  emittedNum: Tensor;
}

const TOP_K = 1, TOP_P = 2, MIN_P = 4, TOP_K_FIRST = 8;
const COUNTERS = 16n; // FI_SAMPLING_COUNTERS

function live(t: unknown, name: string): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  return t;
}

// ---- the library generator (used when no seed is given)
let generatorSeed = BigInt(Math.floor(Math.random() * 2 ** 53));
let generatorOffset = 0n;

function toU64(x: number | bigint, name: string): bigint {
  argCheck((typeof x === "number" && Number.isSafeInteger(x) && x >= 0) || (typeof x === "bigint" && x >= 0n && x < 1n << 64n),
    () => `${name}: expected a non-negative integer below 2^64, got ${String(x)}`);
  return BigInt(x);
}

const isScalarKey = (x: unknown): x is number | bigint => typeof x === "number" || typeof x === "bigint";

/**
 * The (seed, offset) of a call that uses `counters` Philox counters. A per-request seed or offset
 * counts as given (its scalar, unused, is 0); `perRequest` false refuses them.
 */
function seedOffset(opts: SamplingOptions | undefined, counters: bigint, perRequest = true): [bigint, bigint] {
  const scalar = (x: SamplingOptions["seed"], name: string) => {
    if (x === undefined || isScalarKey(x)) return x === undefined ? 0n : toU64(x, name);
    argCheck(perRequest, () => `${name}: expected a non-negative integer (this function takes no per-request ${name}s)`);
    return 0n;
  };
  if (opts?.seed !== undefined) return [scalar(opts.seed, "seed"), scalar(opts.offset, "offset")];
  if (opts?.offset !== undefined) return [generatorSeed, scalar(opts.offset, "offset")];
  const offset = generatorOffset;
  generatorOffset = (generatorOffset + counters) % (1n << 64n);
  return [generatorSeed, offset];
}

/** Re-seeds the library generator used by sampling calls without a seed. */
export function samplingManualSeed(seed: number | bigint): void {
  generatorSeed = toU64(seed, "seed");
  generatorOffset = 0n;
}

// ---- per-request parameters

interface Param {
  desc: TensorDescFields | null;
  scalar: number;
  owned?: Tensor;
}

/**
 * A number (checked here), a Tensor (passed on; shape, dtype and device checked natively, values
 * on cpu), or an array (checked here, copied to `device` as `dtype`).
 */
function param(value: PerRequest, name: string, n: number, device: Device, dtype: "int32" | "float32",
  ok: (x: number) => boolean, expected: string): Param {
  if (typeof value === "number") {
    argCheck(ok(value), () => `${name}: expected ${expected}, got ${value}`);
    return { desc: null, scalar: value };
  }
  if (value instanceof Tensor) return { desc: live(value, name).descFields(), scalar: 0 };
  argCheck(value !== null && typeof value === "object" && typeof (value as ArrayLike<number>).length === "number",
    () => `${name}: expected a number, a Tensor or an array of ${n} numbers`);
  const arr = value as ArrayLike<number>;
  argCheck(arr.length === n, () => `${name}: expected ${n} values (one per request), got ${arr.length}`);
  const typed = dtype === "int32" ? new Int32Array(n) : new Float32Array(n);
  for (let i = 0; i < n; ++i) {
    const x = arr[i]!;
    argCheck(typeof x === "number" && ok(x), () => `${name}[${i}]: expected ${expected}, got ${String(x)}`);
    typed[i] = x;
  }
  const owned = tensor(typed, [n], { dtype, device });
  return { desc: owned.descFields(), scalar: 0, owned };
}

/** Per-request seeds or offsets as an int64 tensor on `device` (null for a scalar or none). */
function keyParam(value: SamplingOptions["seed"], name: string, n: number, device: Device): Param | null {
  if (value === undefined || isScalarKey(value)) return null;
  if (value instanceof Tensor) return { desc: live(value, name).descFields(), scalar: 0 };
  argCheck(value !== null && typeof value === "object" && typeof (value as ArrayLike<unknown>).length === "number",
    () => `${name}: expected a non-negative integer, an int64 Tensor or an array of ${n} integers`);
  argCheck(value.length === n, () => `${name}: expected ${n} values (one per request), got ${value.length}`);
  const typed = new BigInt64Array(n);
  for (let i = 0; i < n; ++i) typed[i] = BigInt.asIntN(64, toU64(value[i]!, `${name}[${i}]`));
  const owned = tensor(typed, [n], { dtype: "int64", device });
  return { desc: owned.descFields(), scalar: 0, owned };
}

const isTopK = (x: number) => Number.isInteger(x) && x >= 1 && x <= 2 ** 31 - 1;
const isTopP = (x: number) => x > 0 && x <= 1;
const isMinP = (x: number) => x >= 0 && x <= 1;
const isTemperature = (x: number) => Number.isFinite(x) && x > 0;

/** Rows of a [rows, vocab] input. */
function rowsOf(t: Tensor, name: string): number {
  argCheck(t.ndim === 2, () => `${name}: expected shape [batch, vocab], got [${t.shape}]`);
  argCheck(t.dtype === "float32", () => `${name}: dtype must be float32, got ${t.dtype}`);
  return t.shape[0]!;
}

function indicesOf(opts: SamplingOptions | undefined, rows: number, device: Device): Param & { batch: number } {
  const ix = opts?.indices;
  if (ix === undefined || ix === null) return { desc: null, scalar: 0, batch: rows };
  if (ix instanceof Tensor) {
    const t = live(ix, "indices");
    argCheck(t.ndim === 1, () => `indices: expected shape [batch], got [${t.shape}]`);
    return { desc: t.descFields(), scalar: 0, batch: t.shape[0]! };
  }
  const n = (ix as ArrayLike<number>).length;
  argCheck(typeof n === "number", "indices: expected a Tensor or an array of row indices");
  const p = param(ix, "indices", n, device, "int32", (x) => Number.isInteger(x) && x >= 0 && x < rows, `an integer in [0, ${rows})`);
  return { ...p, batch: n };
}

interface SampleCall {
  input: Tensor;
  fromLogits: boolean;
  filters: number;
  topK?: PerRequest;
  topP?: PerRequest;
  minP?: PerRequest;
  opts?: SamplingOptions;
  name: string;
}

function sample(c: SampleCall): Tensor {
  const x = live(c.input, c.fromLogits ? "logits" : "probs");
  const rows = rowsOf(x, c.fromLogits ? "logits" : "probs");
  const owned: Tensor[] = [];
  try {
    const ix = indicesOf(c.opts, rows, x.device);
    if (ix.owned) owned.push(ix.owned);
    const batch = ix.batch;
    // A filter the sampler names needs its value: a missing topK must not sample with k = 1.
    const k = c.filters & TOP_K ? param(c.topK!, "topK", batch, x.device, "int32", isTopK, "an integer >= 1") : null;
    const p = c.filters & TOP_P ? param(c.topP!, "topP", batch, x.device, "float32", isTopP, "a number in (0, 1]") : null;
    const m = c.filters & MIN_P ? param(c.minP!, "minP", batch, x.device, "float32", isMinP, "a number in [0, 1]") : null;
    const seeds = keyParam(c.opts?.seed, "seed", batch, x.device);
    const offsets = keyParam(c.opts?.offset, "offset", batch, x.device);
    for (const q of [k, p, m, seeds, offsets]) if (q?.owned) owned.push(q.owned);
    const [seed, offset] = seedOffset(c.opts, BigInt(batch) * COUNTERS);
    const out = empty([batch], { dtype: "int32", device: x.device });
    try {
      const params = SamplingParamsLayout.write({
        probs: x.descFields(),
        indices: ix.desc,
        out: out.descFields(),
        top_k: k?.desc ?? null,
        top_p: p?.desc ?? null,
        min_p: m?.desc ?? null,
        seed,
        offset,
        top_p_val: p?.scalar ?? 1,
        min_p_val: m?.scalar ?? 0,
        top_k_val: k?.scalar ?? 1,
        filters: c.filters,
        from_logits: c.fromLogits ? 1 : 0,
        deterministic: c.opts?.deterministic === false ? 0 : 1,
        reserved: 0,
        seeds: seeds?.desc ?? null,
        offsets: offsets?.desc ?? null,
      });
      check(lib().fi_sampling_sample(params, currentStreamPointer(x.device)), c.name);
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  } finally {
    for (const t of owned) t.dispose();
  }
}

/** A token per request drawn from probs [batch, vocab] (rows sum to 1). */
export function samplingFromProbs(probs: Tensor, opts?: SamplingOptions): Tensor {
  return sample({ input: probs, fromLogits: false, filters: 0, opts, name: "samplingFromProbs" });
}

/** A token per request drawn from softmax(logits) (one pass over the row: no probabilities are written). */
export function samplingFromLogits(logits: Tensor, opts?: SamplingOptions): Tensor {
  return sample({ input: logits, fromLogits: true, filters: 0, opts, name: "samplingFromLogits" });
}

/** Nucleus sampling: only tokens whose larger-probability tokens hold less than topP (in (0, 1]) of the mass. */
export function topPSamplingFromProbs(probs: Tensor, topP: PerRequest, opts?: SamplingOptions): Tensor {
  return sample({ input: probs, fromLogits: false, filters: TOP_P, topP, opts, name: "topPSamplingFromProbs" });
}

/** Only tokens with fewer than topK (>= 1) tokens of larger probability (ties at the k-th value kept). */
export function topKSamplingFromProbs(probs: Tensor, topK: PerRequest, opts?: SamplingOptions): Tensor {
  return sample({ input: probs, fromLogits: false, filters: TOP_K, topK, opts, name: "topKSamplingFromProbs" });
}

/** Only tokens with p >= minP * max(p) (minP in [0, 1]). */
export function minPSamplingFromProbs(probs: Tensor, minP: PerRequest, opts?: SamplingOptions): Tensor {
  return sample({ input: probs, fromLogits: false, filters: MIN_P, minP, opts, name: "minPSamplingFromProbs" });
}

function kpFilters(opts: TopKTopPOptions | undefined): number {
  const order = opts?.filterApplyOrder ?? "top_k_first";
  argCheck(order === "top_k_first" || order === "joint", () => `filterApplyOrder: expected "top_k_first" or "joint", got ${String(order)}`);
  return order === "joint" ? TOP_K | TOP_P : TOP_K | TOP_P | TOP_K_FIRST;
}

/** Top-k and top-p together on probabilities (see TopKTopPOptions.filterApplyOrder). */
export function topKTopPSamplingFromProbs(probs: Tensor, topK: PerRequest, topP: PerRequest, opts?: TopKTopPOptions): Tensor {
  const filters = kpFilters(opts);
  return sample({ input: probs, fromLogits: false, filters, topK, topP, opts, name: "topKTopPSamplingFromProbs" });
}

/** Top-k and top-p on softmax(logits): the softmax is written to a temporary, then sampled as topKTopPSamplingFromProbs. */
export function topKTopPSamplingFromLogits(logits: Tensor, topK: PerRequest, topP: PerRequest, opts?: TopKTopPOptions): Tensor {
  const filters = kpFilters(opts);
  const probs = softmax(logits);
  try {
    return sample({ input: probs, fromLogits: false, filters, topK, topP, opts, name: "topKTopPSamplingFromLogits" });
  } finally {
    probs.dispose();
  }
}

const descs = Array.from({ length: 6 }, () => new TensorDescBuffer());
const nullDesc = new TensorDescBuffer();

/** softmax(logits / temperature) over the last dimension, float32 [batch, vocab]. */
export function softmax(logits: Tensor, opts?: SoftmaxOptions): Tensor {
  const x = live(logits, "logits");
  const rows = rowsOf(x, "logits");
  const t = param(opts?.temperature ?? 1, "temperature", rows, x.device, "float32", isTemperature, "a finite number > 0");
  const out = empty(x.shape, { dtype: "float32", device: x.device });
  try {
    check(lib().fi_sampling_softmax(descs[0]!.write(x.descFields()), descs[1]!.write(out.descFields()),
      t.desc ? descs[2]!.write(t.desc) : nullDesc.write(null), t.scalar || 1, currentStreamPointer(x.device)), "softmax");
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    t.owned?.dispose();
  }
  return out;
}

// One filter, top-k or top-p, by `kind` (a null value is the caller's bad input, not "no filter").
function renorm(name: string, input: Tensor, inName: string, kind: "topK" | "topP", value: PerRequest, mask: boolean): Tensor {
  const x = live(input, inName);
  const rows = rowsOf(x, inName);
  const kp = kind === "topK" ? param(value, "topK", rows, x.device, "int32", isTopK, "an integer >= 1") : null;
  const pp = kind === "topP" ? param(value, "topP", rows, x.device, "float32", isTopP, "a number in (0, 1]") : null;
  const out = empty(x.shape, { dtype: "float32", device: x.device });
  try {
    const stream = currentStreamPointer(x.device);
    const kd = kp?.desc ? descs[2]!.write(kp.desc) : nullDesc.write(null);
    if (mask) {
      check(lib().fi_sampling_top_k_mask_logits(descs[0]!.write(x.descFields()), descs[1]!.write(out.descFields()), kd, kp!.scalar, stream), name);
    } else {
      const pd = pp?.desc ? descs[3]!.write(pp.desc) : nullDesc.write(null);
      check(lib().fi_sampling_renorm(descs[0]!.write(x.descFields()), descs[1]!.write(out.descFields()), kd, pd,
        kp?.scalar ?? 1, pp?.scalar ?? 1, kp ? TOP_K : TOP_P, stream), name);
    }
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    kp?.owned?.dispose();
    pp?.owned?.dispose();
  }
  return out;
}

/** probs with the tokens outside the top-p nucleus zeroed, divided by the kept mass. */
export function topPRenormProbs(probs: Tensor, topP: PerRequest): Tensor {
  return renorm("topPRenormProbs", probs, "probs", "topP", topP, false);
}

/** probs with the tokens outside the top k zeroed (ties at the k-th value kept), divided by the kept mass. */
export function topKRenormProbs(probs: Tensor, topK: PerRequest): Tensor {
  return renorm("topKRenormProbs", probs, "probs", "topK", topK, false);
}

/** logits with the entries outside the top k (ties kept) set to -inf; NaN counts as -inf. */
export function topKMaskLogits(logits: Tensor, topK: PerRequest): Tensor {
  return renorm("topKMaskLogits", logits, "logits", "topK", topK, true);
}

/**
 * Chain speculative sampling (Chen et al. 2023): draftProbs [batch, n, vocab], draftTokenIds
 * [batch, n] int32 (Tensor or integers), targetProbs [batch, n + 1, vocab]. Draft token i is
 * accepted when u_i * q < p; the first rejection is replaced by a token drawn from
 * max(target - draft, 0) (renormalized), and when all are accepted a bonus token is drawn from
 * the last target row.
 */
export function chainSpeculativeSampling(draftProbs: Tensor, draftTokenIds: Tensor | ArrayLike<number>, targetProbs: Tensor,
  opts?: Omit<SamplingOptions, "indices">): ChainSpeculativeResult {
  const d = live(draftProbs, "draftProbs");
  const t = live(targetProbs, "targetProbs");
  argCheck(d.ndim === 3, () => `draftProbs: expected shape [batch, n, vocab], got [${d.shape}]`);
  const [batch, n, vocab] = d.shape as [number, number, number];
  let ids: Tensor, ownedIds: Tensor | undefined;
  if (draftTokenIds instanceof Tensor) {
    ids = live(draftTokenIds, "draftTokenIds");
  } else {
    const arr = draftTokenIds as ArrayLike<number>;
    argCheck(arr !== null && typeof arr === "object" && arr.length === batch * n,
      () => `draftTokenIds: expected a Tensor or ${batch * n} integers`);
    const typed = new Int32Array(batch * n);
    for (let i = 0; i < typed.length; ++i) {
      const x = arr[i]!;
      argCheck(Number.isInteger(x) && x >= 0 && x < vocab, () => `draftTokenIds[${i}]: expected an integer in [0, ${vocab}), got ${String(x)}`);
      typed[i] = x;
    }
    ids = ownedIds = tensor(typed, [batch, n], { dtype: "int32", device: d.device });
  }
  const [seed, offset] = seedOffset(opts, BigInt(batch) * BigInt(Math.ceil((n + 1) / 4)), false);
  const outIds = empty([batch, n + 1], { dtype: "int32", device: d.device });
  const accepted = empty([batch], { dtype: "int32", device: d.device });
  const emitted = empty([batch], { dtype: "int32", device: d.device });
  try {
    check(lib().fi_sampling_chain_speculative(descs[0]!.write(d.descFields()), descs[1]!.write(ids.descFields()),
      descs[2]!.write(t.descFields()), descs[3]!.write(outIds.descFields()), descs[4]!.write(accepted.descFields()),
      descs[5]!.write(emitted.descFields()), seed, offset, currentStreamPointer(d.device)), "chainSpeculativeSampling");
  } catch (e) {
    outIds.dispose();
    accepted.dispose();
    emitted.dispose();
    throw e;
  } finally {
    ownedIds?.dispose();
  }
  return { outputTokenIds: outIds, acceptedNum: accepted, emittedNum: emitted };
}

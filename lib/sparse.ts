// Block-sparse attention (FlashInfer's BlockSparseAttentionWrapper and
// VariableBlockSparseAttentionWrapper). BSR: q [M, numQoHeads, headDim]
// attends to the keys of k [N, numKvHeads, headDim] that lie in the nonzero R x C blocks of a
// BSR pattern (indptr over the M / R block rows, indices = block columns).
//
// It is the paged prefill engine seen through FlashInfer's BSR view: block row i is one request
// of R query rows whose "pages" are its nonzero block columns, a page being C consecutive keys,
// so k viewed as [N / C, C, numKvHeads, headDim] is the page cache (zero-copy). Planning,
// scheduling, every backend (CPU, fa2, fa3) and the merge are the prefill wrapper's. Positions are
// the original ones: `causal` (key column n visible to query row m when n <= m) and the per-block
// `mask` become the plan's custom mask; RoPE, ALiBi and windows would see the gathered key order,
// so they are refused.
//
// Variable blocks: each kv head has its own partition of the query rows and keys into blocks of
// any sizes and its own block mask. Each kv head is one prefill plan (its group of query heads,
// one kv head) whose pages are single keys (page size 1: the visible keys of a block row, by
// index), run on strided views of q, k, v and out: no copies.
import { hostInt32, planOnWorkspaceParts, runOutputs } from "./attention.ts";
import { FlashInferError, argCheck, int32ArrayOf } from "./errors.ts";
import { liveTensor } from "./kv_cache.ts";
import {
  BatchPrefillWithPagedKVCacheWrapper,
  type BatchPrefillWrapperOptions,
  type PrefillMask,
  type PrefillRunOptions,
} from "./prefill.ts";
import { Tensor } from "./tensor.ts";
import type { DType } from "./dtype.ts";

/** Whole numbers as Int32Array from a Tensor (any device) or an array, checked to hold `n`. */
function hostInts(x: Tensor | ArrayLike<number>, n: number, name: string): Int32Array {
  let values: ArrayLike<number>;
  if (x instanceof Tensor) {
    const t = liveTensor(x, name);
    argCheck(t.dtype === "int32" || t.dtype === "int64", () => `${name}: expected an int32 or int64 tensor, got ${t.dtype}`);
    values = Array.from(t.toArray() as ArrayLike<number | bigint>, Number);
  } else {
    argCheck(x !== null && typeof x === "object" && typeof x.length === "number", () => `${name}: expected a Tensor or an array of integers`);
    values = x;
  }
  argCheck(values.length === n, () => `${name}: expected ${n} entries, got ${values.length}`);
  return int32ArrayOf(Array.from(values), name);
}

export interface BlockSparsePlanParams {
  /** [M / R + 1] CSR offsets of each block row's nonzero blocks (non-decreasing, from 0). */
  indptr: Int32Array | number[] | Tensor;
  /** Block column of each nonzero block, < N / C, no block twice in a row. */
  indices: Int32Array | number[] | Tensor;
  /** Query rows and key rows; R divides M and C divides N. */
  M: number;
  N: number;
  /** Block size: R query rows by C keys. */
  R: number;
  C: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Default headDim. */
  headDimVo?: number;
  /**
   * A boolean per element of each nonzero block, [nnz, R, C] row-major (FlashInfer's block mask);
   * with causal, a key must pass both.
   */
  mask?: PrefillMask;
  /** Key column n is visible to query row m only when n <= m (original positions). Default false. */
  causal?: boolean;
  /** "NONE" only: RoPE and ALiBi would see the gathered key positions. */
  posEncodingMode?: "NONE";
  logitsSoftCap?: number;
  smScale?: number;
  qDataType?: DType;
  kvDataType?: DType;
}

interface PlannedShape {
  M: number;
  N: number;
  C: number;
  numQoHeads: number;
  numKvHeads: number;
  headDimQk: number;
  headDimVo: number;
}

// Sizes in tokens or blocks: the native plan counts them in int32.
function positive(x: unknown, name: string): number {
  argCheck(Number.isInteger(x) && (x as number) >= 1 && (x as number) <= 0x7fffffff, () => `${name}: expected an integer in 1..2^31 - 1, got ${String(x)}`);
  return x as number;
}

/** The mask as host booleans (0 / 1), checked to hold `n` of them. */
function hostMask(mask: PrefillMask, n: number, name = "mask"): ArrayLike<number | boolean> {
  let values: ArrayLike<number | boolean>;
  if (mask instanceof Tensor) {
    const t = liveTensor(mask, name);
    argCheck(t.dtype === "bool" || t.dtype === "uint8", () => `${name}: expected a bool or uint8 tensor, got ${t.dtype}`);
    values = t.toArray() as ArrayLike<number>;
  } else {
    argCheck(mask !== null && typeof mask === "object" && typeof mask.length === "number", () => `${name}: expected a Tensor or an array of booleans`);
    values = mask;
  }
  argCheck(values.length === n, () => `${name}: expected ${n} booleans, got ${values.length}`);
  return values;
}

/**
 * The custom mask of the paged plan, packed: per block row (request) [R, nnz_i * C] bits,
 * bitorder "little", each request from a fresh byte (as packedCustomMask wants).
 */
function packBlockMask(indptr: Int32Array, indices: Int32Array, R: number, C: number, causal: boolean,
  mask: ArrayLike<number | boolean> | null): Uint8Array {
  const rows = indptr.length - 1;
  let bytes = 0;
  for (let i = 0; i < rows; ++i) bytes += Math.ceil((R * (indptr[i + 1]! - indptr[i]!) * C) / 8);
  const packed = new Uint8Array(bytes);
  let base = 0;
  for (let i = 0; i < rows; ++i) {
    const nnz = indptr[i + 1]! - indptr[i]!, kvLen = nnz * C;
    for (let r = 0; r < R; ++r) {
      const m = i * R + r;
      for (let j = 0; j < nnz; ++j) {
        const block = indptr[i]! + j, col0 = indices[block]! * C;
        for (let c = 0; c < C; ++c) {
          const visible = (!causal || col0 + c <= m) && (mask === null || !!mask[(block * R + r) * C + c]);
          if (!visible) continue;
          const bit = r * kvLen + j * C + c;
          packed[base + (bit >> 3)]! |= 1 << (bit & 7);
        }
      }
    }
    base += Math.ceil((R * kvLen) / 8);
  }
  return packed;
}

/** FlashInfer's BlockSparseAttentionWrapper: attention over the nonzero R x C blocks of a BSR pattern. */
export class BlockSparseAttentionWrapper {
  readonly #paged: BatchPrefillWithPagedKVCacheWrapper;
  #shape: PlannedShape | null = null;

  /** `opts.backend` as the prefill wrappers ("auto", "fa2", "fa3", "cpu"). */
  constructor(workspace: Tensor, opts: BatchPrefillWrapperOptions = {}) {
    this.#paged = new BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", opts);
  }

  /** Validates the pattern (and mask) and schedules it; one plan serves every layer. */
  plan(params: BlockSparsePlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const R = positive(params.R, "R"), C = positive(params.C, "C");
    const M = positive(params.M, "M");
    argCheck(Number.isInteger(params.N) && params.N >= 0 && params.N <= 0x7fffffff, () => `N: expected an integer in 0..2^31 - 1, got ${String(params.N)}`);
    const N = params.N;
    argCheck(M % R === 0, () => `R: must divide M (${M}), got ${R}`);
    argCheck(N % C === 0, () => `C: must divide N (${N}), got ${C}`);
    const blockRows = M / R, blockCols = N / C;
    const indptr = hostInt32(params.indptr, "indptr"), indices = hostInt32(params.indices, "indices");
    argCheck(indptr.length === blockRows + 1, () => `indptr: expected M / R + 1 = ${blockRows + 1} entries, got ${indptr.length}`);
    argCheck(indptr[0] === 0, () => `indptr: expected indptr[0] = 0, got ${indptr[0]}`);
    const seen = new Int32Array(blockCols).fill(-1);
    for (let i = 0; i < blockRows; ++i) {
      const lo = indptr[i]!, hi = indptr[i + 1]!;
      argCheck(hi >= lo, () => `indptr: must be non-decreasing, but indptr[${i + 1}] = ${hi} < indptr[${i}] = ${lo}`);
      argCheck(hi <= indices.length, () => `indptr: indptr[${i + 1}] = ${hi} exceeds the ${indices.length} entries of indices`);
      for (let b = lo; b < hi; ++b) {
        const col = indices[b]!;
        argCheck(col >= 0 && col < blockCols, () => `indices: indices[${b}] = ${col} is not a block column in 0..${blockCols - 1} (N / C)`);
        argCheck(seen[col] !== i, () => `indices: block column ${col} appears twice in block row ${i}`);
        seen[col] = i;
      }
    }
    const nnz = indptr[blockRows]!;
    const mode = params.posEncodingMode ?? "NONE";
    if (mode !== "NONE")
      throw new FlashInferError("unsupported", `posEncodingMode: block-sparse attention takes "NONE" only (RoPE and ALiBi would see gathered key positions), got ${String(mode)}`);
    const causal = params.causal ?? false;
    argCheck(typeof causal === "boolean", () => `causal: expected a boolean, got ${String(causal)}`);
    const mask = params.mask === undefined ? null : hostMask(params.mask, nnz * R * C, "mask (nnz x R x C)");
    const headDimQk = positive(params.headDim, "headDim"), headDimVo = positive(params.headDimVo ?? headDimQk, "headDimVo");
    const lastPageLen = Int32Array.from({ length: blockRows }, (_, i) => (indptr[i + 1]! > indptr[i]! ? C : 0));
    this.#paged.plan({
      qoIndptr: Int32Array.from({ length: blockRows + 1 }, (_, i) => i * R),
      pagedKvIndptr: indptr,
      pagedKvIndices: indices,
      pagedKvLastPageLen: lastPageLen,
      pageSize: C,
      numQoHeads: params.numQoHeads,
      numKvHeads: params.numKvHeads,
      headDimQk,
      headDimVo,
      qDataType: params.qDataType,
      kvDataType: params.kvDataType,
      logitsSoftCap: params.logitsSoftCap,
      smScale: params.smScale,
      ...(causal || mask ? { packedCustomMask: packBlockMask(indptr, indices, R, C, causal, mask) } : {}),
    });
    this.#shape = { M, N, C, numQoHeads: params.numQoHeads, numKvHeads: params.numKvHeads, headDimQk, headDimVo };
  }

  /**
   * Attention of q [M, numQoHeads, headDim] over k [N, numKvHeads, headDim] and v [N, numKvHeads,
   * headDimVo] (contiguous) through the planned blocks. Returns out [M, numQoHeads, headDimVo] (q's
   * dtype) or { out, lse }; a row with no visible key gives zeros and lse -inf.
   */
  run(q: Tensor, k: Tensor, v: Tensor, opts: PrefillRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    const s = this.#shape;
    if (!s) throw new FlashInferError("invalid_argument", "run: call plan() first");
    liveTensor(q, "q");
    argCheck(q.ndim === 3 && q.shape[0] === s.M, () => `q: expected [M = ${s.M}, numQoHeads, headDim], got [${q.shape}]`);
    const pages = (t: Tensor, name: string, headDim: number) => {
      liveTensor(t, name);
      argCheck(t.ndim === 3 && t.shape[0] === s.N && t.shape[1] === s.numKvHeads && t.shape[2] === headDim,
        () => `${name}: expected [N = ${s.N}, numKvHeads = ${s.numKvHeads}, ${headDim}], got [${t.shape}]`);
      argCheck(t.isContiguous(), () => `${name}: expected a contiguous tensor (its rows are read as pages of C = ${s.C} keys)`);
      return t.view([s.N / s.C, s.C, s.numKvHeads, headDim]);
    };
    using kp = pages(k, "k", s.headDimQk);
    using vp = pages(v, "v", s.headDimVo);
    return this.#paged.run(q, [kp, vp], opts);
  }

  /** The current plan's schedule (the prefill engine's), for inspection and tests. */
  get planInfo() {
    return this.#paged.planInfo;
  }

  dispose(): void {
    this.#paged.dispose();
    this.#shape = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface VariableBlockSparsePlanParams {
  /** [numKvHeads, MB, NB] booleans (flat, row-major): block (i, j) of kv head h is attended. */
  blockMaskMap: PrefillMask;
  /** [numKvHeads, MB] query rows of each block row; every head's sizes sum to the same qoLen. */
  blockRowSz: Tensor | ArrayLike<number>;
  /** [numKvHeads, NB] keys of each block column; every head's sizes sum to the same kvLen. */
  blockColSz: Tensor | ArrayLike<number>;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  headDimVo?: number;
  logitsSoftCap?: number;
  smScale?: number;
  qDataType?: DType;
  kvDataType?: DType;
}

/**
 * FlashInfer's VariableBlockSparseAttentionWrapper: per kv head, blocks of any sizes. Tensors are
 * head-major ("HND"): q [numQoHeads, qoLen, headDim], k and v [numKvHeads, kvLen, headDim].
 */
export class VariableBlockSparseAttentionWrapper {
  readonly #workspace: Tensor;
  readonly #opts: BatchPrefillWrapperOptions;
  #heads: BatchPrefillWithPagedKVCacheWrapper[] = [];
  #shape: { qoLen: number; kvLen: number; numQoHeads: number; numKvHeads: number; headDimQk: number; headDimVo: number } | null = null;

  /** The workspace is shared out among the kv heads' plans (one slice each). */
  constructor(workspace: Tensor, opts: BatchPrefillWrapperOptions = {}) {
    liveTensor(workspace, "workspace");
    this.#workspace = workspace;
    this.#opts = opts;
  }

  plan(params: VariableBlockSparsePlanParams): void {
    argCheck(typeof params === "object" && params !== null, "plan: expected a parameter object");
    const Hkv = positive(params.numKvHeads, "numKvHeads"), Hq = positive(params.numQoHeads, "numQoHeads");
    argCheck(Hq % Hkv === 0, () => `numQoHeads: ${Hq} is not a multiple of numKvHeads (${Hkv})`);
    const headDimQk = positive(params.headDim, "headDim"), headDimVo = positive(params.headDimVo ?? headDimQk, "headDimVo");
    const rowSzAll = params.blockRowSz instanceof Tensor ? params.blockRowSz.numel : params.blockRowSz?.length;
    const colSzAll = params.blockColSz instanceof Tensor ? params.blockColSz.numel : params.blockColSz?.length;
    argCheck(Number.isInteger(rowSzAll) && rowSzAll! % Hkv === 0 && rowSzAll! > 0, () => `blockRowSz: expected [numKvHeads = ${Hkv}, MB] sizes`);
    argCheck(Number.isInteger(colSzAll) && colSzAll! % Hkv === 0, () => `blockColSz: expected [numKvHeads = ${Hkv}, NB] sizes`);
    const MB = rowSzAll! / Hkv, NB = colSzAll! / Hkv;
    const rowSz = hostInts(params.blockRowSz, Hkv * MB, "blockRowSz"), colSz = hostInts(params.blockColSz, Hkv * NB, "blockColSz");
    const map = hostMask(params.blockMaskMap, Hkv * MB * NB, "blockMaskMap ([numKvHeads, MB, NB])");
    const sums = (sz: Int32Array, n: number, name: string) => {
      let total = -1;
      for (let h = 0; h < Hkv; ++h) {
        let t = 0;
        for (let i = 0; i < n; ++i) {
          const x = sz[h * n + i]!;
          argCheck(x >= 0, () => `${name}: entry [${h}, ${i}] is ${x}; expected >= 0`);
          t += x;
        }
        argCheck(total < 0 || t === total, () => `${name}: kv head ${h}'s sizes sum to ${t}, kv head 0's to ${total}; every head covers the same rows`);
        total = t;
      }
      return total;
    };
    const qoLen = sums(rowSz, MB, "blockRowSz"), kvLen = sums(colSz, NB, "blockColSz");
    argCheck(qoLen > 0, "blockRowSz: the block rows hold no query row");
    // One plan per kv head, each on its own slice of the workspace.
    const heads = planOnWorkspaceParts(this.#workspace, Hkv, "kv heads", (part) => new BatchPrefillWithPagedKVCacheWrapper(part, "NHD", this.#opts),
      (w, h) => {
        const colStart = new Int32Array(NB + 1);
        for (let j = 0; j < NB; ++j) colStart[j + 1] = colStart[j]! + colSz[h * NB + j]!;
        const qoIndptr = new Int32Array(MB + 1), kvIndptr = new Int32Array(MB + 1), tokens: number[] = [];
        for (let i = 0; i < MB; ++i) {
          qoIndptr[i + 1] = qoIndptr[i]! + rowSz[h * MB + i]!;
          for (let j = 0; j < NB; ++j) if (map[(h * MB + i) * NB + j]) for (let t = colStart[j]!; t < colStart[j + 1]!; ++t) tokens.push(t);
          kvIndptr[i + 1] = tokens.length;
        }
        w.plan({
          qoIndptr, pagedKvIndptr: kvIndptr, pagedKvIndices: Int32Array.from(tokens), pageSize: 1,
          pagedKvLastPageLen: Int32Array.from({ length: MB }, (_, i) => (kvIndptr[i + 1]! > kvIndptr[i]! ? 1 : 0)),
          numQoHeads: Hq / Hkv, numKvHeads: 1, headDimQk, headDimVo, qDataType: params.qDataType, kvDataType: params.kvDataType,
          logitsSoftCap: params.logitsSoftCap, smScale: params.smScale,
        });
      }, { previous: this.#heads, broken: () => this.dispose() });
    this.#heads = heads;
    this.#shape = { qoLen, kvLen, numQoHeads: Hq, numKvHeads: Hkv, headDimQk, headDimVo };
  }

  /**
   * q [numQoHeads, qoLen, headDim], k [numKvHeads, kvLen, headDim], v [numKvHeads, kvLen,
   * headDimVo]. Returns out [numQoHeads, qoLen, headDimVo] or { out, lse } (lse [numQoHeads, qoLen]).
   */
  run(q: Tensor, k: Tensor, v: Tensor, opts: PrefillRunOptions = {}): Tensor | { out: Tensor; lse: Tensor } {
    const s = this.#shape;
    if (!s) throw new FlashInferError("invalid_argument", "run: call plan() first");
    const G = s.numQoHeads / s.numKvHeads;
    const checkShape = (t: Tensor, name: string, shape: number[]) => {
      liveTensor(t, name);
      argCheck(t.ndim === shape.length && t.shape.every((n, d) => n === shape[d]), () => `${name}: expected [${shape.join(", ")}], got [${t.shape}]`);
    };
    checkShape(q, "q", [s.numQoHeads, s.qoLen, s.headDimQk]);
    checkShape(k, "k", [s.numKvHeads, s.kvLen, s.headDimQk]);
    checkShape(v, "v", [s.numKvHeads, s.kvLen, s.headDimVo]);
    argCheck(q.device === k.device && k.device === v.device, "q, k, v: expected one device");
    const created: Tensor[] = [];
    try {
      const { out, lse } = runOutputs(q, [s.numQoHeads, s.qoLen, s.headDimVo], [s.numQoHeads, s.qoLen], opts, created);
      checkShape(out, "out", [s.numQoHeads, s.qoLen, s.headDimVo]);
      if (lse) checkShape(lse, "lse", [s.numQoHeads, s.qoLen]);
      // Head-major tensors as the engine's [rows, heads, dim] (query heads of kv head h) and
      // page caches [keys, 1, 1, dim] (kv head h): strided views, no copies.
      const groupOf = (t: Tensor, h: number) => {
        using part = t.slice(0, h * G, (h + 1) * G);
        return part.transpose(0, 1);
      };
      const pagesOf = (t: Tensor, h: number) => {
        using head = t.select(0, h);
        using rows = head.unsqueeze(1);
        return rows.unsqueeze(1);
      };
      // Shapes are checked above and every head's plan has the same dtypes, so a native error
      // (bad dtype, device) stops at head 0, before anything is written.
      this.#heads.forEach((w, h) => {
        using qh = groupOf(q, h), oh = groupOf(out, h);
        using kh = pagesOf(k, h), vh = pagesOf(v, h);
        using lh = lse ? groupOf(lse, h) : null;
        w.run(qh, [kh, vh], lh ? { ...opts, out: oh, lse: lh } : { ...opts, out: oh, lse: undefined, returnLse: false });
      });
      created.length = 0;
      return lse ? { out, lse } : out;
    } finally {
      created.forEach((t) => t.dispose());
    }
  }

  dispose(): void {
    this.#heads.forEach((w) => w.dispose());
    this.#heads = [];
    this.#shape = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

// Paged KV cache bookkeeping and appends (FlashInfer's flashinfer.page): getSeqLens,
// getBatchIndicesPositions and appendPagedKvCache over FlashInfer's CSR page table (request b
// owns pages kvIndices[kvIndptr[b] .. kvIndptr[b+1]), its last page holding kvLastPageLen[b]
// tokens), with the cache forms BatchDecodeWithPagedKVCacheWrapper.run accepts.
//
// getBatchIndicesPositions and appendPagedKvCache check index values (positions inside the page
// table, page indices inside the cache) before anything is written; for CUDA tensors that needs
// the index arrays on the host, so those two calls copy them to the host and synchronize the
// current stream (they are therefore not capturable in a CUDA graph). getSeqLens never syncs.
import type { Device } from "./device.ts";
import type { DType } from "./dtype.ts";
import { FlashInferError, argCheck, checkOptions, int32ArrayOf } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { type KVLayout, liveTensor, pagedKvViews } from "./kv_cache.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty, tensor } from "./tensor.ts";

/** An index array: an int32 1-d Tensor (any device), or host values (copied to the data's device). */
export type IndexArray = Tensor | Int32Array | number[];

const CACHE_DTYPES: readonly DType[] = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"];

const descs = Array.from({ length: 9 }, () => new TensorDescBuffer());


/** An index array as an int32 1-d tensor on `device`; `owned` lists tensors made here (to dispose). */
function indexTensor(x: unknown, name: string, device: Device | undefined, owned: Tensor[]): Tensor {
  if (x instanceof Int32Array || Array.isArray(x)) {
    const t = tensor(x instanceof Int32Array ? x : int32ArrayOf(x, name), [x.length], { dtype: "int32", device: device ?? "cpu" });
    owned.push(t);
    return t;
  }
  const t = liveTensor(x, name);
  argCheck(t.dtype === "int32" && t.ndim === 1, () => `${name}: expected a 1-d int32 tensor, got ${t.dtype} of shape [${t.shape.join(", ")}]`);
  if (device !== undefined) argCheck(t.device === device, () => `${name}: on ${t.device} but the data is on ${device}; all tensors must be on one device`);
  return t;
}

function checkLength(t: Tensor, name: string, n: number, what: string): void {
  argCheck(t.shape[0] === n, () => `${name}: expected ${n} entries (${what}), got ${t.shape[0]}`);
}

function disposeAll(ts: Tensor[]): void {
  for (const t of ts) t.dispose();
}

/**
 * Sequence lengths from a page table: seqLens[b] = (kvIndptr[b+1] - kvIndptr[b] - 1) * pageSize +
 * kvLastPageLen[b] for a request with pages, else 0. Returns an int32 Tensor [batch] on the
 * device of kvIndptr (cpu for host arrays). The table is checked as decode plan() checks it
 * (kvIndptr from 0 and non-decreasing, kvLastPageLen in [1, pageSize] for a request with pages,
 * [0, pageSize] without): CUDA tensors are copied to the host and the current stream synchronized.
 */
export function getSeqLens(kvIndptr: IndexArray, kvLastPageLen: IndexArray, pageSize: number): Tensor {
  argCheck(Number.isInteger(pageSize) && pageSize >= 1 && pageSize < 2 ** 31, () => `pageSize: expected a positive integer, got ${String(pageSize)}`);
  const owned: Tensor[] = [];
  try {
    const device = kvIndptr instanceof Tensor ? liveTensor(kvIndptr, "kvIndptr").device : kvLastPageLen instanceof Tensor ? liveTensor(kvLastPageLen, "kvLastPageLen").device : "cpu";
    const indptr = indexTensor(kvIndptr, "kvIndptr", device, owned);
    const last = indexTensor(kvLastPageLen, "kvLastPageLen", device, owned);
    argCheck(indptr.shape[0]! >= 1, "kvIndptr: expected batch + 1 >= 1 entries");
    const batch = indptr.shape[0]! - 1;
    checkLength(last, "kvLastPageLen", batch, "one per request");
    const out = empty([batch], { dtype: "int32", device });
    try {
      const [a, b, c] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];
      check(lib().fi_page_get_seq_lens(a.write(indptr.descFields()), b.write(last.descFields()), pageSize,
        c.write(out.descFields()), currentStreamPointer(device)), "getSeqLens");
      return out;
    } catch (e) {
      out.dispose();
      throw e;
    }
  } finally {
    disposeAll(owned);
  }
}

/**
 * For each appended token j of request b (appendIndptr[b] <= j < appendIndptr[b+1]):
 * batchIndices[j] = b and positions[j] = seqLens[b] - (appendIndptr[b+1] - appendIndptr[b]) +
 * (j - appendIndptr[b]): the appended tokens are the last ones of each request, seqLens the
 * lengths after appending. Returns int32 tensors [nnz] on seqLens' device. Checks
 * appendIndptr[batch] = nnz (appendIndptr on the host: a CUDA tensor is copied and the stream synchronized).
 */
export function getBatchIndicesPositions(appendIndptr: IndexArray, seqLens: IndexArray, nnz: number): { batchIndices: Tensor; positions: Tensor } {
  argCheck(Number.isInteger(nnz) && nnz >= 0 && nnz < 2 ** 31, () => `nnz: expected an integer >= 0, got ${String(nnz)}`);
  const owned: Tensor[] = [];
  try {
    const device = seqLens instanceof Tensor ? liveTensor(seqLens, "seqLens").device : appendIndptr instanceof Tensor ? liveTensor(appendIndptr, "appendIndptr").device : "cpu";
    const lens = indexTensor(seqLens, "seqLens", device, owned);
    const indptr = indexTensor(appendIndptr, "appendIndptr", device, owned);
    const batch = lens.shape[0]!;
    checkLength(indptr, "appendIndptr", batch + 1, "batch + 1, batch from seqLens");
    const batchIndices = empty([nnz], { dtype: "int32", device });
    const positions = empty([nnz], { dtype: "int32", device });
    try {
      const [a, b, c, d] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];
      check(lib().fi_page_get_batch_indices_positions(a.write(indptr.descFields()), b.write(lens.descFields()),
        c.write(batchIndices.descFields()), d.write(positions.descFields()), currentStreamPointer(device)), "getBatchIndicesPositions");
      return { batchIndices, positions };
    } catch (e) {
      batchIndices.dispose();
      positions.dispose();
      throw e;
    }
  } finally {
    disposeAll(owned);
  }
}


/**
 * Appends appendKey/appendValue [nnz, numKvHeads, headDim] (float16 or bfloat16, or the cache's
 * dtype) into a paged KV cache: token j goes to request b = batchIndices[j] at position
 * p = positions[j], i.e. page kvIndices[kvIndptr[b] + floor(p / pageSize)], slot p % pageSize.
 * pagedKvCache: one Tensor [maxPages, 2, pageSize, numKvHeads, headDim] ("NHD"; "HND":
 * [maxPages, 2, numKvHeads, pageSize, headDim]) or a pair [k, v] of [maxPages, pageSize,
 * numKvHeads, headDim] ("HND": [maxPages, numKvHeads, pageSize, headDim]); float16, bfloat16,
 * float8_e4m3fn or float8_e5m2 (values converted, round to nearest even). kvLastPageLen gives
 * the requests' lengths, which bound the positions. Throws (writing nothing) for positions past
 * a request's pages or length, batch indices or page indices out of range, shape, dtype or
 * device mismatches. Index arrays are checked on the host: CUDA tensors are copied to the host
 * and the current stream synchronized.
 *
 * opts.checkIndices = false skips the index values' checks (shapes, dtypes and devices are still
 * checked): no device-to-host copy, no synchronization, one launch. For a serving loop that
 * appends one step's tokens to every layer with index arrays it has checked once for that step
 * (one checked call, then unchecked ones); an index out of range then writes out of bounds.
 */
export function appendPagedKvCache(
  appendKey: Tensor,
  appendValue: Tensor,
  batchIndices: IndexArray,
  positions: IndexArray,
  pagedKvCache: Tensor | [Tensor, Tensor],
  kvIndices: IndexArray,
  kvIndptr: IndexArray,
  kvLastPageLen: IndexArray,
  kvLayout: KVLayout = "NHD",
  opts: { checkIndices?: boolean } = {},
): void {
  checkOptions(opts);
  const checkIndices = opts.checkIndices ?? true;
  argCheck(typeof checkIndices === "boolean", () => `checkIndices: expected a boolean, got ${String(checkIndices)}`);
  argCheck(kvLayout === "NHD" || kvLayout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(kvLayout)}`);
  const key = liveTensor(appendKey, "appendKey"), value = liveTensor(appendValue, "appendValue");
  argCheck(key.ndim === 3, () => `appendKey: expected 3 dimensions [nnz, numKvHeads, headDim], got [${key.shape.join(", ")}]`);
  argCheck(value.shape.length === 3 && value.shape.every((n, d) => n === key.shape[d]), () => `appendValue: shape [${value.shape.join(", ")}] must equal appendKey's [${key.shape.join(", ")}]`);
  argCheck(value.dtype === key.dtype, () => `appendValue: dtype ${value.dtype} must equal appendKey's ${key.dtype}`);
  const device = key.device;
  argCheck(value.device === device, () => `appendValue: on ${value.device} but appendKey is on ${device}`);
  const [nnz, heads, headDim] = key.shape as [number, number, number];
  const owned: Tensor[] = [];
  const [k, v] = pagedKvViews(pagedKvCache, kvLayout);
  owned.push(k, v);
  try {
    const cacheDtype = k.dtype;
    if (!CACHE_DTYPES.includes(cacheDtype)) {
      throw new FlashInferError(cacheDtype.startsWith("float") ? "unsupported" : "invalid_argument",
        `pagedKvCache: dtype must be float16, bfloat16, float8_e4m3fn or float8_e5m2, got ${cacheDtype}`);
    }
    argCheck(key.dtype === "float16" || key.dtype === "bfloat16" || key.dtype === cacheDtype,
      () => `appendKey: dtype must be float16, bfloat16 or the cache's (${cacheDtype}), got ${key.dtype}`);
    argCheck(k.device === device, () => `pagedKvCache: on ${k.device} but appendKey is on ${device}; all tensors must be on one device`);
    const dims = kvLayout === "NHD" ? "[maxPages, pageSize, numKvHeads, headDim]" : "[maxPages, numKvHeads, pageSize, headDim]";
    argCheck(k.shape[2] === heads && k.shape[3] === headDim, () =>
      `pagedKvCache: numKvHeads ${k.shape[2]} and headDim ${k.shape[3]} (of ${dims} per K/V) must equal appendKey's ${heads} and ${headDim}`);
    const bi = indexTensor(batchIndices, "batchIndices", device, owned);
    const pos = indexTensor(positions, "positions", device, owned);
    const indices = indexTensor(kvIndices, "kvIndices", device, owned);
    const indptr = indexTensor(kvIndptr, "kvIndptr", device, owned);
    const last = indexTensor(kvLastPageLen, "kvLastPageLen", device, owned);
    checkLength(bi, "batchIndices", nnz, "nnz, from appendKey");
    checkLength(pos, "positions", nnz, "nnz, from appendKey");
    argCheck(indptr.shape[0]! >= 1, "kvIndptr: expected batch + 1 >= 1 entries");
    checkLength(last, "kvLastPageLen", indptr.shape[0]! - 1, "one per request, batch from kvIndptr");
    const d = descs;
    check(lib().fi_page_append_paged_kv_cache(
      d[0]!.write(key.descFields()), d[1]!.write(value.descFields()), d[2]!.write(bi.descFields()), d[3]!.write(pos.descFields()),
      d[4]!.write(k.descFields()), d[5]!.write(v.descFields()), d[6]!.write(indices.descFields()), d[7]!.write(indptr.descFields()),
      d[8]!.write(last.descFields()), checkIndices ? 1 : 0, currentStreamPointer(device),
    ), "appendPagedKvCache");
  } finally {
    disposeAll(owned);
  }
}

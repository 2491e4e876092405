// The paged KV cache forms that decode attention and appendPagedKvCache accept.
import { argCheck, checkOptions } from "./errors.ts";
import { Tensor } from "./tensor.ts";

export type KVLayout = "NHD" | "HND";

/** A live (not disposed) Tensor, or a FlashInferError naming the argument. */
export function liveTensor(t: unknown, name: string): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  return t;
}

/**
 * The checks the single-request attention functions share: q of the dims `qDims` names (the last
 * two: query heads, head dim), k and v of one layout ([kvLen, numKvHeads, headDim] for "NHD",
 * [numKvHeads, kvLen, headDim] for "HND") on q's device, k's head dim q's, query heads a multiple
 * of KV heads. v's shape against k's is the caller's (decode: equal; prefill: all but the head dim).
 */
export function singleRequestKv(q: Tensor, k: Tensor, v: Tensor, opts: { kvLayout?: KVLayout }, qDims: string[]):
  { layout: KVLayout; kvLen: number; numKvHeads: number } {
  liveTensor(q, "q");
  liveTensor(k, "k");
  liveTensor(v, "v");
  checkOptions(opts);
  const layout = opts.kvLayout ?? "NHD";
  argCheck(layout === "NHD" || layout === "HND", () => `kvLayout: expected "NHD" or "HND", got ${String(layout)}`);
  argCheck(q.ndim === qDims.length, () => `q: expected [${qDims.join(", ")}], got [${q.shape}]`);
  for (const [t, name] of [[k, "k"], [v, "v"]] as const) {
    argCheck(t.ndim === 3, () => `${name}: expected [${layout === "NHD" ? "kvLen, numKvHeads" : "numKvHeads, kvLen"}, headDim], got [${t.shape}]`);
    argCheck(t.device === q.device, () => `${name}: is on ${t.device}, q on ${q.device}`);
  }
  const kvLen = layout === "NHD" ? k.shape[0]! : k.shape[1]!;
  const numKvHeads = layout === "NHD" ? k.shape[1]! : k.shape[0]!;
  return { layout, kvLen, numKvHeads };
}

/**
 * K and V of a paged cache as [pages, pageSize, numKvHeads, headDim] views (new tensors; dispose
 * them). The cache is one Tensor [pages, 2, pageSize, numKvHeads, headDim] ("NHD"; "HND" puts
 * numKvHeads before pageSize) or a pair [k, v] of [pages, pageSize, numKvHeads, headDim] ("HND":
 * [pages, numKvHeads, pageSize, headDim]).
 */
export function pagedKvViews(cache: unknown, layout: KVLayout): [Tensor, Tensor] {
  const dims = layout === "NHD" ? "pageSize, numKvHeads" : "numKvHeads, pageSize";
  const toNHD = (t: Tensor) => (layout === "HND" ? t.permute([0, 2, 1, 3]) : t.slice(0));
  if (Array.isArray(cache)) {
    argCheck(cache.length === 2, "pagedKvCache: expected a Tensor or a pair [k, v] of Tensors");
    const k = liveTensor(cache[0], "pagedKvCache[0]"), v = liveTensor(cache[1], "pagedKvCache[1]");
    [k, v].forEach((t, i) => argCheck(t.ndim === 4, () => `pagedKvCache[${i}]: expected 4 dimensions [pages, ${dims}, headDim], got [${t.shape.join(", ")}]`));
    argCheck(k.shape.every((n, d) => n === v.shape[d]), () => `pagedKvCache[1]: shape [${v.shape.join(", ")}] must equal pagedKvCache[0]'s [${k.shape.join(", ")}]`);
    argCheck(k.dtype === v.dtype, () => `pagedKvCache[1]: dtype ${v.dtype} must equal pagedKvCache[0]'s ${k.dtype}`);
    argCheck(k.device === v.device, () => `pagedKvCache[1]: on ${v.device} but pagedKvCache[0] is on ${k.device}`);
    return [toNHD(k), toNHD(v)];
  }
  const t = liveTensor(cache, "pagedKvCache");
  argCheck(t.ndim === 5 && t.shape[1] === 2, () => `pagedKvCache: expected [pages, 2, ${dims}, headDim], got [${t.shape.join(", ")}]`);
  const k = t.select(1, 0), v = t.select(1, 1);
  try {
    return [toNHD(k), toNHD(v)];
  } finally {
    k.dispose();
    v.dispose();
  }
}

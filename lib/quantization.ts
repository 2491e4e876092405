// Bit packing (FlashInfer's flashinfer.quantization, as numpy.packbits): a 1-d bool or uint8
// tensor (nonzero = 1) is packed 8 elements per byte; bitorder "big" puts the first element in
// the most significant bit, "little" in the least (FlashInfer's custom masks use "little"). The
// last byte of a run is zero-padded.
import { FlashInferError, argCheck, int32ArrayOf } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty, tensor } from "./tensor.ts";

export type BitOrder = "big" | "little";

/** Packed segments: y uint8 [indptrNew[-1]], indptrNew int32 [segments + 1], both on x's device. */
export interface SegmentPackbitsResult {
  y: Tensor;
  indptrNew: Tensor;
}

const descs = Array.from({ length: 4 }, () => new TensorDescBuffer());

function checkX(x: unknown): Tensor {
  argCheck(x instanceof Tensor, () => `x: expected a Tensor, got ${x === null ? "null" : typeof x}`);
  argCheck(!x.disposed, "x: tensor was disposed");
  argCheck(x.dtype === "bool" || x.dtype === "uint8", () => `x: dtype must be bool or uint8, got ${x.dtype}`);
  argCheck(x.ndim === 1, () => `x: expected 1 dimension, got shape [${x.shape.join(", ")}]`);
  return x;
}

function bitorderCode(bitorder: unknown): number {
  argCheck(bitorder === "big" || bitorder === "little", () => `bitorder: must be "big" or "little", got ${String(bitorder)}`);
  return bitorder === "little" ? 1 : 0;
}

/** Packs a 1-d bool/uint8 tensor into a uint8 tensor of ceil(n / 8) bytes on x's device. */
export function packbits(x: Tensor, bitorder: BitOrder = "big"): Tensor {
  const xt = checkX(x);
  const order = bitorderCode(bitorder);
  const y = empty([Math.ceil(xt.shape[0]! / 8)], { dtype: "uint8", device: xt.device });
  try {
    check(lib().fi_quantization_packbits(descs[0]!.write(xt.descFields()), descs[1]!.write(y.descFields()), order,
      currentStreamPointer(xt.device)), "packbits");
  } catch (e) {
    y.dispose();
    throw e;
  }
  return y;
}

/** The host values of indptr, checked: integers, non-decreasing, in [0, n]. */
function indptrValues(indptr: unknown, x: Tensor): Int32Array {
  let values: Int32Array;
  if (indptr instanceof Tensor) {
    argCheck(!indptr.disposed, "indptr: tensor was disposed");
    argCheck(indptr.dtype === "int32", () => `indptr: dtype must be int32, got ${indptr.dtype}`);
    argCheck(indptr.ndim === 1, () => `indptr: expected 1 dimension, got shape [${indptr.shape.join(", ")}]`);
    argCheck(indptr.device === x.device, () => `indptr: on ${indptr.device} but x is on ${x.device}; all tensors must be on one device`);
    values = indptr.toArray() as Int32Array;
  } else if (indptr instanceof Int32Array) {
    values = indptr;
  } else if (Array.isArray(indptr)) {
    values = int32ArrayOf(indptr, "indptr");
  } else {
    throw new FlashInferError("invalid_argument", "indptr: expected an Int32Array, number[] or int32 Tensor");
  }
  argCheck(values.length >= 1, "indptr: expected [segments + 1] offsets, got none");
  argCheck(values[0]! >= 0, () => `indptr: indptr[0] must be >= 0, got ${values[0]}`);
  for (let i = 1; i < values.length; ++i) {
    argCheck(values[i]! >= values[i - 1]!, () => `indptr: must be non-decreasing, but indptr[${i}] = ${values[i]} < indptr[${i - 1}] = ${values[i - 1]}`);
  }
  const end = values[values.length - 1]!;
  argCheck(end <= x.shape[0]!, () => `indptr: indptr[${values.length - 1}] = ${end} exceeds the length of x (${x.shape[0]})`);
  return values;
}

/**
 * Packs each segment x[indptr[i], indptr[i + 1]) separately (each zero-padded to whole bytes).
 * indptr: Int32Array, number[] or int32 Tensor on x's device. Returns y (uint8) and indptrNew
 * (int32, indptrNew[i + 1] = indptrNew[i] + ceil(len_i / 8)), both on x's device.
 */
export function segmentPackbits(x: Tensor, indptr: Int32Array | readonly number[] | Tensor, bitorder: BitOrder = "big"): SegmentPackbitsResult {
  const xt = checkX(x);
  const order = bitorderCode(bitorder);
  const host = indptrValues(indptr, xt);
  let total = 0;
  for (let i = 1; i < host.length; ++i) total += Math.ceil((host[i]! - host[i - 1]!) / 8);
  const owned = indptr instanceof Tensor ? undefined : tensor(host, [host.length], { dtype: "int32", device: xt.device });
  const ip = owned ?? (indptr as Tensor);
  let y: Tensor | undefined, indptrNew: Tensor | undefined;
  try {
    indptrNew = empty([host.length], { dtype: "int32", device: xt.device });
    y = empty([total], { dtype: "uint8", device: xt.device });
    const [a, b, c, d] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];
    check(lib().fi_quantization_segment_packbits(a.write(xt.descFields()), b.write(ip.descFields()), c.write(indptrNew.descFields()),
      d.write(y.descFields()), order, currentStreamPointer(xt.device)), "segmentPackbits");
    return { y, indptrNew };
  } catch (e) {
    y?.dispose();
    indptrNew?.dispose();
    throw e;
  } finally {
    owned?.dispose();
  }
}

// ---------------------------------------------------------------- into caller-owned outputs

function checkOutput(t: unknown, name: string, dtype: "uint8" | "int32", n: number, x: Tensor): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  argCheck(t.dtype === dtype, () => `${name}: dtype must be ${dtype}, got ${t.dtype}`);
  argCheck(t.ndim === 1 && t.shape[0] === n, () => `${name}: shape must be [${n}], got [${t.shape.join(", ")}]`);
  argCheck(t.device === x.device, () => `${name}: on ${t.device} but x is on ${x.device}; all tensors must be on one device`);
  argCheck(n <= 1 || t.strides[0] !== 0, () => `${name}: is written, so it must not be a broadcast view`);
  return t;
}

/**
 * @internal packbits into a caller-owned y (uint8 [ceil(n / 8)] on x's device, not overlapping
 * x). Used by the benchmarks (no allocation in the timed loop); not part of the public API.
 */
export function packbitsInto(x: Tensor, y: Tensor, bitorder: BitOrder = "big"): void {
  const xt = checkX(x);
  const order = bitorderCode(bitorder);
  const yt = checkOutput(y, "y", "uint8", Math.ceil(xt.shape[0]! / 8), xt);
  check(lib().fi_quantization_packbits(descs[0]!.write(xt.descFields()), descs[1]!.write(yt.descFields()), order,
    currentStreamPointer(xt.device)), "packbits");
}

/**
 * @internal segmentPackbits into caller-owned outputs. `indptrHost` holds the values of the
 * int32 tensor `indptrDevice` (checked here, so no device read is needed); indptrNew int32
 * [segments + 1] and y uint8 [sum of ceil(len / 8)] on x's device. For the benchmarks.
 */
export function segmentPackbitsInto(x: Tensor, indptrHost: Int32Array, indptrDevice: Tensor, indptrNew: Tensor, y: Tensor, bitorder: BitOrder = "big"): void {
  const xt = checkX(x);
  const order = bitorderCode(bitorder);
  const host = indptrValues(indptrHost, xt);
  let total = 0;
  for (let i = 1; i < host.length; ++i) total += Math.ceil((host[i]! - host[i - 1]!) / 8);
  const ip = checkOutput(indptrDevice, "indptrDevice", "int32", host.length, xt);
  const ipn = checkOutput(indptrNew, "indptrNew", "int32", host.length, xt);
  const yt = checkOutput(y, "y", "uint8", total, xt);
  const [a, b, c, d] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];
  check(lib().fi_quantization_segment_packbits(a.write(xt.descFields()), b.write(ip.descFields()), c.write(ipn.descFields()),
    d.write(yt.descFields()), order, currentStreamPointer(xt.device)), "segmentPackbits");
}

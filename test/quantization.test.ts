// Bit packing (packbits, segmentPackbits) against a TypeScript reference (numpy.packbits
// semantics): odd lengths, both bit orders, bool and uint8 inputs (nonzero = 1), strided x,
// indptr as number[], Int32Array or int32 Tensor, and bad input. CUDA results are also compared
// with the CPU backend on the same inputs.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { packbitsInto, segmentPackbitsInto } from "../lib/quantization.ts";
import { expectFlashInferError, testOnDevices } from "./helpers.ts";
import { packbitsReference, segmentPackbitsReference } from "./reference/quantization.ts";

const LENGTHS = [0, 1, 7, 8, 9, 1000, 4097];
const ORDERS = ["big", "little"] as const;
const nums = (t: fi.Tensor): number[] => Array.from(t.toArray() as ArrayLike<number>);

/** Fresh bits; uint8 inputs hold arbitrary nonzero values where the bit is 1. */
function randomBits(n: number, dtype: "bool" | "uint8"): Uint8Array {
  const p = Math.random();
  return Uint8Array.from({ length: n }, () => (Math.random() < p ? (dtype === "bool" ? 1 : 1 + Math.floor(Math.random() * 255)) : 0));
}

function makeX(bits: Uint8Array, dtype: "bool" | "uint8", device: fi.Device, strided = false): fi.Tensor {
  if (!strided) return fi.tensor(bits, [bits.length], { dtype, device });
  using base = fi.full([bits.length, 3], 1, { dtype, device });
  const view = base.select(1, 2);
  using src = fi.tensor(bits, [bits.length], { dtype, device });
  view.copy_(src);
  return view;
}

describe("packbits", () => {
  testOnDevices("matches numpy.packbits: odd lengths, both bit orders, bool and uint8, strided x", (device) => {
    for (const dtype of ["bool", "uint8"] as const) {
      for (const n of LENGTHS) {
        for (const order of ORDERS) {
          for (const strided of [false, true]) {
            const bits = randomBits(n, dtype);
            using x = makeX(bits, dtype, device, strided);
            using y = fi.packbits(x, order);
            expect(y.dtype).toBe("uint8");
            expect(y.device).toBe(device);
            expect(y.shape).toEqual([Math.ceil(n / 8)]);
            expect(nums(y)).toEqual(packbitsReference(bits, order));
            if (device !== "cpu") {
              using xc = x.to("cpu");
              using yc = fi.packbits(xc, order);
              expect(nums(y)).toEqual(nums(yc));
            }
          }
        }
      }
    }
  });

  testOnDevices("defaults to big bit order", (device) => {
    using x = fi.tensor(Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 1]), [9], { dtype: "bool", device });
    using y = fi.packbits(x);
    expect(nums(y)).toEqual([128, 128]);
    using yl = fi.packbits(x, "little");
    expect(nums(yl)).toEqual([1, 1]);
  });

  testOnDevices("bad input names the argument", (device) => {
    using f = fi.zeros([8], { dtype: "float32", device });
    expectFlashInferError(() => fi.packbits(f), "invalid_argument", /x: dtype must be bool or uint8/);
    using two = fi.zeros([2, 8], { dtype: "bool", device });
    expectFlashInferError(() => fi.packbits(two), "invalid_argument", /x: expected 1 dimension/);
    using x = fi.zeros([8], { dtype: "bool", device });
    expectFlashInferError(() => fi.packbits(x, "middle" as "big"), "invalid_argument", /bitorder/);
  });
});

/** Random segment lengths (0, 1, 7, 8, 9 and larger) with an optional gap before the first. */
function randomIndptr(segments: number, start: number): number[] {
  const picks = [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000];
  const indptr = [start];
  for (let i = 0; i < segments; ++i) indptr.push(indptr[i]! + picks[Math.floor(Math.random() * picks.length)]!);
  return indptr;
}

describe("segmentPackbits", () => {
  testOnDevices("matches the reference: odd segments, both bit orders, every indptr form", (device) => {
    for (const segments of [0, 1, 7, 99]) {
      for (const order of ORDERS) {
        for (const form of ["array", "int32array", "tensor"] as const) {
          const indptr = randomIndptr(segments, Math.random() < 0.5 ? 0 : 5);
          const n = indptr[indptr.length - 1]! + 3; // trailing elements outside every segment
          const dtype = Math.random() < 0.5 ? "bool" : "uint8";
          const bits = randomBits(n, dtype);
          using x = makeX(bits, dtype, device, form === "tensor");
          using ipt = fi.tensor(Int32Array.from(indptr), [indptr.length], { device });
          const arg = form === "array" ? indptr : form === "int32array" ? Int32Array.from(indptr) : ipt;
          const { y, indptrNew } = fi.segmentPackbits(x, arg, order);
          using _y = y;
          using _n = indptrNew;
          const ref = segmentPackbitsReference(bits, indptr, order);
          expect(y.dtype).toBe("uint8");
          expect(indptrNew.dtype).toBe("int32");
          expect(y.device).toBe(device);
          expect(indptrNew.device).toBe(device);
          expect(nums(indptrNew)).toEqual(ref.indptrNew);
          expect(nums(y)).toEqual(ref.y);
          if (device !== "cpu") {
            using xc = x.to("cpu");
            const c = fi.segmentPackbits(xc, indptr, order);
            expect(nums(y)).toEqual(nums(c.y));
            expect(nums(indptrNew)).toEqual(nums(c.indptrNew));
            c.y.dispose();
            c.indptrNew.dispose();
          }
        }
      }
    }
  });

  testOnDevices("bad input names the argument", (device) => {
    using x = fi.zeros([20], { dtype: "bool", device });
    expectFlashInferError(() => fi.segmentPackbits(x, [0, 10, 5]), "invalid_argument", /indptr: must be non-decreasing/);
    expectFlashInferError(() => fi.segmentPackbits(x, [0, 21]), "invalid_argument", /indptr: indptr\[1\] = 21 exceeds/);
    expectFlashInferError(() => fi.segmentPackbits(x, [-1, 3]), "invalid_argument", /indptr: indptr\[0\] must be >= 0/);
    expectFlashInferError(() => fi.segmentPackbits(x, []), "invalid_argument", /indptr/);
    expectFlashInferError(() => fi.segmentPackbits(x, [0, 1.5]), "invalid_argument", /indptr\[1\]/);
    using i64 = fi.tensor([0, 4], [2], { dtype: "int64", device });
    expectFlashInferError(() => fi.segmentPackbits(x, i64), "invalid_argument", /indptr: dtype must be int32/);
    using f = fi.zeros([8], { dtype: "float16", device });
    expectFlashInferError(() => fi.segmentPackbits(f, [0, 8]), "invalid_argument", /x: dtype/);
    expectFlashInferError(() => fi.segmentPackbits(x, [0, 8], "LITTLE" as "little"), "invalid_argument", /bitorder/);
  });

  test("the C entry checks indptr on cpu", async () => {
    const { lib } = await import("../lib/ffi/library.ts");
    const { TensorDescBuffer } = await import("../lib/ffi/structs.ts");
    using x = fi.zeros([16], { dtype: "bool", device: "cpu" });
    using ip = fi.tensor(Int32Array.from([0, 9, 4]), [3], { device: "cpu" });
    using ipn = fi.full([3], -7, { dtype: "int32", device: "cpu" });
    using y = fi.full([2], 77, { dtype: "uint8", device: "cpu" });
    const d = Array.from({ length: 4 }, () => new TensorDescBuffer());
    const status = lib().fi_quantization_segment_packbits(d[0]!.write(x.descFields()), d[1]!.write(ip.descFields()),
      d[2]!.write(ipn.descFields()), d[3]!.write(y.descFields()), 0, null);
    expect(status).not.toBe(0);
    expect(String(lib().fi_last_error())).toMatch(/indptr: must be non-decreasing/);
    expect(nums(ipn)).toEqual([-7, -7, -7]);
    expect(nums(y)).toEqual([77, 77]);
  });
});

describe("into caller-owned outputs (benchmark path)", () => {
  testOnDevices("every byte of a poisoned y and indptrNew is written; bad outputs are named", (device) => {
    for (const order of ORDERS) {
      const indptr = randomIndptr(7, 2);
      const n = Math.max(4097, indptr[indptr.length - 1]! + 1);
      const bits = randomBits(n, "uint8");
      using x = makeX(bits, "uint8", device);
      using y = fi.full([Math.ceil(n / 8)], 0xa5, { dtype: "uint8", device });
      packbitsInto(x, y, order);
      expect(nums(y)).toEqual(packbitsReference(bits, order));
      const ref = segmentPackbitsReference(bits, indptr, order);
      using ip = fi.tensor(Int32Array.from(indptr), [indptr.length], { device });
      using ipn = fi.full([indptr.length], -1, { dtype: "int32", device });
      using ys = fi.full([ref.y.length], 0xa5, { dtype: "uint8", device });
      segmentPackbitsInto(x, Int32Array.from(indptr), ip, ipn, ys, order);
      expect(nums(ipn)).toEqual(ref.indptrNew);
      expect(nums(ys)).toEqual(ref.y);
    }
    using x = fi.zeros([16], { dtype: "bool", device });
    using short = fi.full([1], 9, { dtype: "uint8", device });
    expectFlashInferError(() => packbitsInto(x, short), "invalid_argument", /y: shape must be \[2\]/);
    expect(nums(short)).toEqual([9]);
    using ip = fi.tensor(Int32Array.from([0, 16]), [2], { device });
    using ipn = fi.full([2], -1, { dtype: "int32", device });
    using wrong = fi.full([3], 9, { dtype: "uint8", device });
    expectFlashInferError(() => segmentPackbitsInto(x, Int32Array.from([0, 16]), ip, ipn, wrong), "invalid_argument", /y: shape must be \[2\]/);
    expect(nums(ipn)).toEqual([-1, -1]);
  });
});

// Gated activations (siluAndMul, geluAndMul, geluTanhAndMul) against a float64 reference on
// fresh random inputs: every dtype, odd d, 1/7/99 rows, non-contiguous and misaligned rows,
// extreme values, poisoned outputs, out= given, and bad input (named, nothing written). CUDA
// results are also compared with the CPU backend on the same inputs.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { lib } from "../lib/ffi/library.ts";
import { TensorDescBuffer } from "../lib/ffi/structs.ts";
import { expectClose, expectFlashInferError, gpu, randomValues, testOnDevices } from "./helpers.ts";
import { actAndMulReference, gelu, geluTanh, silu } from "./reference/activation.ts";

type FDType = "float32" | "float16" | "bfloat16";
const DTYPES: FDType[] = ["float32", "float16", "bfloat16"];
// Half an ulp of the dtype (output rounding) plus float32 arithmetic on the GPU.
const RTOL: Record<FDType, number> = { float32: 1e-5, float16: 2 ** -11 + 1e-5, bfloat16: 2 ** -8 + 1e-5 };
const ATOL = 1e-5; // float32 cancellation in 1 + erf / 1 + tanh for negative x, float16 subnormals

const ACTS = [
  { name: "siluAndMul", fn: fi.siluAndMul, ref: silu },
  { name: "geluAndMul", fn: fi.geluAndMul, ref: gelu },
  { name: "geluTanhAndMul", fn: fi.geluTanhAndMul, ref: geluTanh },
] as const;

type Layout = "contiguous" | "padded" | "misaligned" | "transposed";

/** Input [..lead, 2d] holding `values` row-major, placed in `layout`; memory around it is NaN. */
function placeInput(values: number[], lead: number[], twoD: number, dtype: FDType, device: fi.Device, layout: Layout): fi.Tensor {
  const shape = [...lead, twoD];
  const src = fi.tensor(values, shape, { dtype, device });
  if (layout === "contiguous") return src;
  let base: fi.Tensor, view: fi.Tensor;
  if (layout === "padded") {
    base = fi.full([...lead, twoD + 16], NaN, { dtype, device });
    view = base.slice(lead.length, 0, twoD);
  } else if (layout === "misaligned") {
    base = fi.full([...lead, twoD + 1], NaN, { dtype, device });
    view = base.slice(lead.length, 1, twoD + 1);
  } else {
    // lead must have 2 dims: memory [lead1, lead0, 2d], viewed transposed.
    base = fi.full([lead[1]!, lead[0]!, twoD], NaN, { dtype, device });
    view = base.transpose(0, 1);
  }
  base.dispose();
  view.copy_(src);
  src.dispose();
  return view;
}

/** Runs `fn` into a NaN-poisoned out (padded rows when `padOut`) and checks it against the reference. */
function checkCase(act: (typeof ACTS)[number], device: fi.Device, dtype: FDType, lead: number[], d: number, layout: Layout, padOut: boolean, values?: number[]): void {
  const rows = lead.reduce((a, b) => a * b, 1);
  using input = placeInput(values ?? randomValues(rows * 2 * d), lead, 2 * d, dtype, device, layout);
  const x = input.toFloat32Array(); // the values as stored in the dtype
  const expected = actAndMulReference(act.ref, x, rows, d);
  using outBase = fi.full([...lead, padOut ? d + 8 : d], NaN, { dtype, device });
  using out = outBase.slice(lead.length, 0, d);
  const ret = act.fn(input, { out });
  expect(ret).toBe(out);
  expectClose(out.toFloat32Array(), expected, ATOL, RTOL[dtype]);
  if (padOut) {
    // The padding of each row is untouched.
    const all = outBase.toFloat32Array();
    for (let r = 0; r < rows; ++r) for (let j = d; j < d + 8; ++j) expect(Number.isNaN(all[r * (d + 8) + j]!)).toBe(true);
  }
  if (device !== "cpu") {
    // CUDA vs the CPU backend on the same input.
    using inCpu = input.to("cpu");
    using outCpu = act.fn(inCpu);
    expectClose(out.toFloat32Array(), outCpu.toFloat32Array(), ATOL, 2 * RTOL[dtype]);
  }
}

for (const act of ACTS) {
  describe(act.name, () => {
    testOnDevices("matches the float64 reference: every dtype, odd d, rows 1/7/99", (device) => {
      const shapes: [number[], number][] = [[[1], 1], [[7], 7], [[99], 127], [[7], 4096], [[1], 14336 + 8], [[99], 1], [[3, 5], 33], [[], 9]];
      for (const dtype of DTYPES) for (const [lead, d] of shapes) checkCase(act, device, dtype, lead, d, "contiguous", false);
    });

    testOnDevices("non-contiguous rows (padded, misaligned, transposed) and a padded out", (device) => {
      for (const dtype of DTYPES) {
        checkCase(act, device, dtype, [99], 4096, "padded", true);
        checkCase(act, device, dtype, [7], 127, "padded", true);
        checkCase(act, device, dtype, [7], 64, "misaligned", false);
        checkCase(act, device, dtype, [5, 3], 24, "transposed", true);
        checkCase(act, device, dtype, [3, 7], 13, "transposed", false);
      }
    });

    testOnDevices("extreme values: finite wherever the math is finite", (device) => {
      const big: Record<FDType, number[]> = {
        float32: [10, 30, 88, 1000, 1e20, 1e30, 3e38],
        float16: [10, 30, 88, 1000, 6e4],
        bfloat16: [10, 30, 88, 1000, 1e20, 1e30, 3e38],
      };
      for (const dtype of DTYPES) {
        const gates = big[dtype].flatMap((v) => [v, -v]);
        const d = gates.length;
        // up halves in (-1, 1): act(x) * y stays within the dtype's range.
        const values = [...gates, ...randomValues(d, 1)];
        checkCase(act, device, dtype, [1], d, "contiguous", false, values);
      }
    });

    testOnDevices("returns a new contiguous tensor without out=", (device) => {
      using input = fi.tensor(randomValues(7 * 22), [7, 22], { dtype: "float32", device });
      using out = act.fn(input);
      expect(out.shape).toEqual([7, 11]);
      expect(out.dtype).toBe("float32");
      expect(out.device).toBe(device);
      expectClose(out.toFloat32Array(), actAndMulReference(act.ref, input.toFloat32Array(), 7, 11), ATOL, RTOL.float32);
    });

    testOnDevices("empty inputs write nothing and do not fail", (device) => {
      using input = fi.empty([0, 8], { dtype: "bfloat16", device });
      using out = act.fn(input);
      expect(out.shape).toEqual([0, 4]);
    });

    testOnDevices("bad input names the argument and writes nothing", (device) => {
      using out = fi.full([4, 3], NaN, { dtype: "float32", device });
      const untouched = () => expect(Array.from(out.toFloat32Array()).every(Number.isNaN)).toBe(true);
      using odd = fi.zeros([4, 7], { dtype: "float32", device });
      expectFlashInferError(() => act.fn(odd, { out }), "invalid_argument", /input: last dimension must be even/);
      using input = fi.zeros([4, 6], { dtype: "float32", device });
      using wrongShape = fi.full([4, 4], NaN, { dtype: "float32", device });
      expectFlashInferError(() => act.fn(input, { out: wrongShape }), "invalid_argument", /out: shape must be \[4, 3\]/);
      using wrongRows = fi.full([5, 3], NaN, { dtype: "float32", device });
      expectFlashInferError(() => act.fn(input, { out: wrongRows }), "invalid_argument", /out: shape/);
      using wrongDtype = fi.full([4, 3], NaN, { dtype: "float16", device });
      expectFlashInferError(() => act.fn(input, { out: wrongDtype }), "invalid_argument", /out: dtype must be float32/);
      using ints = fi.zeros([4, 6], { dtype: "int32", device });
      expectFlashInferError(() => act.fn(ints), "invalid_argument", /input: dtype/);
      using f64 = fi.zeros([4, 6], { dtype: "float64", device });
      expectFlashInferError(() => act.fn(f64), "unsupported", /input: dtype/);
      using strided = fi.zeros([4, 12], { dtype: "float32", device });
      using stridedView = strided.slice(1, 0, 12, 2);
      expectFlashInferError(() => act.fn(stridedView, { out }), "invalid_argument", /input: last dimension must be contiguous/);
      using one = fi.zeros([1], { dtype: "float32", device });
      using scalar = one.reshape([]);
      expectFlashInferError(() => act.fn(scalar, { out }), "invalid_argument", /input: expected at least 1 dimension/);
      untouched();
    });

    test("the C entry validates too (nothing written)", () => {
      using input = fi.zeros([4, 7], { dtype: "float32" });
      using out = fi.full([4, 3], NaN, { dtype: "float32" });
      const a = new TensorDescBuffer(), b = new TensorDescBuffer();
      const sym = { siluAndMul: "fi_activation_silu_and_mul", geluAndMul: "fi_activation_gelu_and_mul", geluTanhAndMul: "fi_activation_gelu_tanh_and_mul" }[act.name] as "fi_activation_silu_and_mul";
      const status = lib()[sym](a.write(input.descFields()), b.write(out.descFields()), null);
      expect(status).not.toBe(0);
      expect(String(lib().fi_last_error())).toMatch(/input: last dimension must be even/);
      expect(Array.from(out.toFloat32Array()).every(Number.isNaN)).toBe(true);
    });

    test.skipIf(!gpu)("device mismatch names out", () => {
      using input = fi.zeros([4, 6], { dtype: "float32", device: "cuda:0" });
      using out = fi.full([4, 3], NaN, { dtype: "float32", device: "cpu" });
      expectFlashInferError(() => act.fn(input, { out }), "invalid_argument", /out: on cpu but input is on cuda:0/);
      expect(Array.from(out.toFloat32Array()).every(Number.isNaN)).toBe(true);
    });
  });
}

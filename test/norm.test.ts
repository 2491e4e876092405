// Norm family (rmsnorm, fusedAddRmsnorm, gemmaRmsnorm, gemmaFusedAddRmsnorm, layernorm)
// against float64 references on fresh random inputs: every dtype, odd hidden sizes and batches,
// strided, misaligned and 3-D inputs, rows longer than the CUDA register cache, several eps,
// poisoned outputs (NaN never passes), and bad input (FlashInferError naming the argument,
// nothing written). CUDA results are also compared with the CPU backend on the same inputs.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectFlashInferError, gpu, randomValues, testOnDevices } from "./helpers.ts";
import { fusedAddRmsnormReference, layernormReference, rmsnormReference } from "./reference/norm.ts";

type NDType = "float32" | "float16" | "bfloat16";
const DTYPES: NDType[] = ["float32", "float16", "bfloat16"];
const HIDDENS = [1, 127, 4096, 5120, 8200];
const BATCHES = [1, 7, 99];
// Half an ulp (relative) of each dtype, and half float16's smallest subnormal step.
const ROUNDING: Record<NDType, number> = { float32: 0, float16: 2 ** -11, bfloat16: 2 ** -8 };
const SUBNORMAL: Record<NDType, number> = { float32: 0, float16: 2 ** -25, bfloat16: 0 };

type Layout = "contiguous" | "padded" | "misaligned" | "3d";

/** A [rows, hidden] tensor (or [3, rows/3, hidden] for "3d") holding `values`, NaN around it in memory. */
function placed(values: ArrayLike<number>, rows: number, hidden: number, dtype: NDType, device: fi.Device, layout: Layout = "contiguous"): fi.Tensor {
  const shape = layout === "3d" ? [3, rows / 3, hidden] : [rows, hidden];
  const src = fi.tensor(Array.from(values), shape, { dtype, device });
  if (layout === "contiguous") return src;
  const pad = layout === "misaligned" ? 1 : 8;
  const base = fi.full([...shape.slice(0, -1), hidden + pad], NaN, { dtype, device });
  const view = layout === "misaligned" ? base.slice(shape.length - 1, 1, hidden + 1) : base.slice(shape.length - 1, 0, hidden);
  base.dispose();
  view.copy_(src);
  src.dispose();
  return view;
}

/** Exact values held by a tensor (row-major), as float64. */
const valuesOf = (t: fi.Tensor): Float64Array => Float64Array.from(t.toFloat32Array());

/** |got - want| <= slack * ((2e-5 + u) |want| + atol + subnormal); NaN never passes. */
function expectNear(got: fi.Tensor, want: ArrayLike<number>, dtype: NDType, what: string, atol = 1e-6, slack = 1): void {
  const g = got.toFloat32Array();
  expect(g.length).toBe(want.length);
  for (let i = 0; i < g.length; ++i) {
    const a = g[i]!, e = want[i]!;
    const tol = slack * ((2e-5 + ROUNDING[dtype]) * Math.abs(e) + atol + SUBNORMAL[dtype]);
    if (!(Number.isFinite(a) && Math.abs(a - e) <= tol)) throw new Error(`${what}: [${i}] = ${a}, expected ${e} (tolerance ${tol})`);
  }
}

function expectExact(got: fi.Tensor, want: ArrayLike<number>, what: string): void {
  const g = got.toFloat32Array();
  expect(g.length).toBe(want.length);
  for (let i = 0; i < g.length; ++i) {
    if (!(g[i] === want[i])) throw new Error(`${what}: [${i}] = ${g[i]}, expected ${want[i]} exactly`);
  }
}

const poisoned = (shape: readonly number[], dtype: NDType, device: fi.Device) => fi.full(shape, NaN, { dtype, device });

type Op = "rmsnorm" | "gemmaRmsnorm" | "fusedAddRmsnorm" | "gemmaFusedAddRmsnorm" | "layernorm";
const OPS: Op[] = ["rmsnorm", "gemmaRmsnorm", "fusedAddRmsnorm", "gemmaFusedAddRmsnorm", "layernorm"];

/**
 * Runs `op` on fresh inputs of [rows, hidden] in `layout` and checks it against the reference
 * (and, on cuda, against the CPU backend on the same inputs).
 */
function checkOp(op: Op, device: fi.Device, dtype: NDType, rows: number, hidden: number, opts: { layout?: Layout; eps?: number; scale?: number; gammaF32?: boolean } = {}): void {
  const n = rows * hidden, layout = opts.layout ?? "contiguous", scale = opts.scale ?? 4;
  const what = `${op} ${dtype} [${rows}, ${hidden}] ${layout} eps=${opts.eps ?? "default"} on ${device}`;
  const eps = opts.eps;
  const epsOpt = eps === undefined ? {} : { eps };
  const x = placed(randomValues(n, scale), rows, hidden, dtype, device, layout);
  const xv = valuesOf(x);
  const wDtype: NDType = op === "layernorm" && opts.gammaF32 ? "float32" : dtype;
  const w = fi.tensor(randomValues(hidden, 2), [hidden], { dtype: wDtype, device });
  const wv = valuesOf(w);
  const owned: fi.Tensor[] = [x, w];
  try {
    if (op === "rmsnorm" || op === "gemmaRmsnorm") {
      const gemma = op === "gemmaRmsnorm";
      const out = poisoned(x.shape, dtype, device);
      owned.push(out);
      const fn = gemma ? fi.gemmaRmsnorm : fi.rmsnorm;
      expect(fn(x, w, { ...epsOpt, out })).toBe(out);
      const ref = rmsnormReference(xv, wv, rows, hidden, eps ?? 1e-6, gemma);
      expectNear(out, ref, dtype, what);
      // the allocating form gives the same bits
      const fresh = fn(x, w, epsOpt);
      owned.push(fresh);
      expect(fresh.shape).toEqual(x.shape);
      expect(fresh.dtype).toBe(dtype);
      expect(fresh.device).toBe(device);
      expectExact(fresh, out.toFloat32Array(), `${what} (allocating form)`);
      if (device !== "cpu") {
        const xc = x.to("cpu"), wc = w.to("cpu");
        owned.push(xc, wc);
        const cpu = fn(xc, wc, epsOpt);
        owned.push(cpu);
        expectNear(out, cpu.toFloat32Array(), dtype, `${what} (cuda vs cpu)`, 1e-6, 2);
      }
    } else if (op === "fusedAddRmsnorm" || op === "gemmaFusedAddRmsnorm") {
      const gemma = op === "gemmaFusedAddRmsnorm";
      const r = placed(randomValues(n, scale), rows, hidden, dtype, device, layout === "misaligned" ? "padded" : layout);
      owned.push(r);
      const rv = valuesOf(r);
      const xc = device !== "cpu" ? x.to("cpu") : undefined, rc = device !== "cpu" ? r.to("cpu") : undefined;
      if (xc) owned.push(xc, rc!);
      const fn = gemma ? fi.gemmaFusedAddRmsnorm : fi.fusedAddRmsnorm;
      expect(fn(x, r, w, epsOpt)).toBeUndefined();
      const ref = fusedAddRmsnormReference(xv, rv, wv, rows, hidden, eps ?? 1e-6, dtype, gemma);
      expectExact(r, ref.residual, `${what} (residual)`);
      expectNear(x, ref.out, dtype, `${what} (input)`);
      if (xc) {
        const wc = w.to("cpu");
        owned.push(wc);
        fn(xc, rc!, wc, epsOpt);
        expectExact(r, rc!.toFloat32Array(), `${what} (residual, cuda vs cpu)`);
        expectNear(x, xc.toFloat32Array(), dtype, `${what} (input, cuda vs cpu)`, 1e-6, 2);
      }
    } else {
      const b = fi.tensor(randomValues(hidden, 1), [hidden], { dtype: wDtype, device });
      owned.push(b);
      const bv = valuesOf(b);
      const out = poisoned(x.shape, dtype, device);
      owned.push(out);
      expect(fi.layernorm(x, w, b, { ...epsOpt, out })).toBe(out);
      const ref = layernormReference(xv, wv, bv, rows, hidden, eps ?? 1e-5);
      expectNear(out, ref, dtype, what, 2e-5);
      const fresh = fi.layernorm(x, w, b, epsOpt);
      owned.push(fresh);
      expectExact(fresh, out.toFloat32Array(), `${what} (allocating form)`);
      if (device !== "cpu") {
        const xc = x.to("cpu"), wc = w.to("cpu"), bc = b.to("cpu");
        owned.push(xc, wc, bc);
        const cpu = fi.layernorm(xc, wc, bc, epsOpt);
        owned.push(cpu);
        expectNear(out, cpu.toFloat32Array(), dtype, `${what} (cuda vs cpu)`, 2e-5, 2);
      }
    }
  } finally {
    for (const t of owned) t.dispose();
  }
}

describe("norm: sizes and dtypes", () => {
  for (const op of OPS) {
    for (const dtype of DTYPES) {
      testOnDevices(`${op} ${dtype}: hidden ${HIDDENS.join("/")} x batch ${BATCHES.join("/")}`, (device) => {
        for (const hidden of HIDDENS) for (const rows of BATCHES) checkOp(op, device, dtype, rows, hidden);
      });
    }
  }
  for (const dtype of ["float16", "bfloat16"] as NDType[]) {
    testOnDevices(`layernorm ${dtype} input with float32 gamma/beta (FlashInfer's form)`, (device) => {
      for (const hidden of [127, 4096, 8200]) for (const rows of [1, 7]) checkOp("layernorm", device, dtype, rows, hidden, { gammaF32: true });
    });
  }
});

describe("norm: layouts", () => {
  for (const op of OPS) {
    testOnDevices(`${op}: padded rows, misaligned rows, 3-D input`, (device) => {
      for (const dtype of DTYPES) {
        for (const layout of ["padded", "misaligned", "3d"] as Layout[]) {
          for (const hidden of [127, 4096]) checkOp(op, device, dtype, 9, hidden, { layout });
        }
      }
    });
  }
  for (const op of OPS) {
    testOnDevices(`${op}: rows longer than the CUDA register cache`, (device) => {
      checkOp(op, device, "bfloat16", 3, 40000);
      checkOp(op, device, "float32", 2, 20000, { layout: "misaligned" });
      checkOp(op, device, "float16", 2, 4100, { layout: "misaligned" });
    });
  }
});

describe("norm: eps", () => {
  for (const op of OPS) {
    testOnDevices(`${op}: eps 1e-6, 1e-3, 0.5 on small inputs`, (device) => {
      for (const eps of [1e-6, 1e-3, 0.5]) {
        for (const dtype of DTYPES) checkOp(op, device, dtype, 7, 257, { eps, scale: 0.05 });
      }
    });
  }
});

describe("norm: in place and empty", () => {
  testOnDevices("rmsnorm with out = input", (device) => {
    for (const dtype of DTYPES) {
      using x = placed(randomValues(7 * 4096), 7, 4096, dtype, device, "padded");
      using w = fi.tensor(randomValues(4096, 2), [4096], { dtype, device });
      const ref = rmsnormReference(valuesOf(x), valuesOf(w), 7, 4096, 1e-6);
      fi.rmsnorm(x, w, { out: x });
      expectNear(x, ref, dtype, `rmsnorm in place ${dtype}`);
    }
  });
  testOnDevices("empty batches do nothing", (device) => {
    using x = fi.empty([0, 64], { dtype: "bfloat16", device });
    using r = fi.empty([0, 64], { dtype: "bfloat16", device });
    using w = fi.ones([64], { dtype: "bfloat16", device });
    using y = fi.rmsnorm(x, w);
    expect(y.shape).toEqual([0, 64]);
    fi.fusedAddRmsnorm(x, r, w);
    using z = fi.layernorm(x, w, w);
    expect(z.shape).toEqual([0, 64]);
  });
});

describe("norm: bad input", () => {
  testOnDevices("throws naming the argument and writes nothing", (device) => {
    using x = fi.tensor(randomValues(4 * 16), [4, 16], { dtype: "bfloat16", device });
    using r = fi.tensor(randomValues(4 * 16), [4, 16], { dtype: "bfloat16", device });
    using w = fi.tensor(randomValues(16), [16], { dtype: "bfloat16", device });
    using out = fi.full([4, 16], 7, { dtype: "bfloat16", device });
    const x0 = x.toFloat32Array(), r0 = r.toFloat32Array();
    using w15 = fi.ones([15], { dtype: "bfloat16", device });
    using wF16 = fi.ones([16], { dtype: "float16", device });
    using wF32 = fi.ones([16], { dtype: "float32", device });
    using r2 = fi.zeros([4, 15], { dtype: "bfloat16", device });
    using rF16 = fi.zeros([4, 16], { dtype: "float16", device });
    using xi = fi.zeros([4, 16], { dtype: "int32", device });
    using outF16 = fi.zeros([4, 16], { dtype: "float16", device });
    using out3 = fi.zeros([4, 15], { dtype: "bfloat16", device });
    using colBase = fi.zeros([16, 4], { dtype: "bfloat16", device });
    const xT = colBase.transpose(0, 1); // last dimension not contiguous
    const cases: [string, () => unknown, RegExp][] = [
      ["weight length", () => fi.rmsnorm(x, w15, { out }), /weight/],
      ["weight dtype", () => fi.rmsnorm(x, wF16, { out }), /weight.*dtype/],
      ["gemma weight length", () => fi.gemmaRmsnorm(x, w15, { out }), /weight/],
      ["out dtype", () => fi.rmsnorm(x, w, { out: outF16 }), /out.*dtype/],
      ["out shape", () => fi.rmsnorm(x, w, { out: out3 }), /out.*shape/],
      ["eps 0", () => fi.rmsnorm(x, w, { eps: 0, out }), /eps/],
      ["eps negative", () => fi.rmsnorm(x, w, { eps: -1, out }), /eps/],
      ["eps NaN", () => fi.layernorm(x, w, w, { eps: NaN, out }), /eps/],
      ["eps Infinity", () => fi.gemmaRmsnorm(x, w, { eps: Infinity, out }), /eps/],
      ["integer input", () => fi.rmsnorm(xi, w), /input.*dtype/],
      ["strided last dimension", () => fi.rmsnorm(xT, w), /input.*contiguous/],
      ["residual shape", () => fi.fusedAddRmsnorm(x, r2, w), /residual.*shape/],
      ["residual dtype", () => fi.fusedAddRmsnorm(x, rF16, w), /residual.*dtype/],
      ["fused weight dtype", () => fi.gemmaFusedAddRmsnorm(x, r, wF16), /weight.*dtype/],
      ["fused eps", () => fi.fusedAddRmsnorm(x, r, w, { eps: 0 }), /eps/],
      ["residual is input", () => fi.fusedAddRmsnorm(x, x, w), /residual/],
      ["gamma length", () => fi.layernorm(x, w15, w, { out }), /gamma/],
      ["gamma dtype", () => fi.layernorm(x, wF16, wF16, { out }), /gamma.*dtype/],
      ["beta dtype", () => fi.layernorm(x, wF32, w, { out }), /beta.*dtype/],
      ["not a tensor", () => fi.rmsnorm(x, null as unknown as fi.Tensor), /weight/],
    ];
    for (const [name, fn, pattern] of cases) {
      try {
        expectFlashInferError(fn, "invalid_argument", pattern);
      } catch (e) {
        throw new Error(`${name}: ${(e as Error).message}`);
      }
    }
    expect(Array.from(out.toFloat32Array()).every((v) => v === 7)).toBe(true);
    expect(x.toFloat32Array()).toEqual(x0);
    expect(r.toFloat32Array()).toEqual(r0);
    xT.dispose();
  });
  test.skipIf(!gpu)("device mismatch names the argument", () => {
    using x = fi.tensor(randomValues(32), [2, 16], { dtype: "float32", device: "cuda:0" });
    using r = fi.zeros([2, 16], { dtype: "float32", device: "cuda:0" });
    using wc = fi.ones([16], { dtype: "float32", device: "cpu" });
    using outc = fi.zeros([2, 16], { dtype: "float32", device: "cpu" });
    expectFlashInferError(() => fi.rmsnorm(x, wc), "invalid_argument", /weight.*device|weight: on cpu/);
    using w = fi.ones([16], { dtype: "float32", device: "cuda:0" });
    expectFlashInferError(() => fi.rmsnorm(x, w, { out: outc }), "invalid_argument", /out: on cpu/);
    expectFlashInferError(() => fi.fusedAddRmsnorm(x, r, wc), "invalid_argument", /weight: on cpu/);
    expectFlashInferError(() => fi.layernorm(x, w, wc), "invalid_argument", /beta: on cpu/);
  });
});

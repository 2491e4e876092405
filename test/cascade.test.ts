// Cascade (merging partial attention states): mergeState, mergeStateInPlace and mergeStates
// against a float64 reference on fresh random inputs: every v dtype, odd sizes, strided and
// misaligned inputs, empty (-Infinity) states, masks, poisoned outputs, and bad input. CUDA
// results are also compared with the CPU backend on the same inputs.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { mergeStateInto, mergeStatesInto } from "../lib/cascade.ts";
import { lib } from "../lib/ffi/library.ts";
import { TensorDescBuffer } from "../lib/ffi/structs.ts";
import { expectClose, expectFlashInferError, gpu, randomValues, testOnDevices, withContext } from "./helpers.ts";
import { type MergeReference, mergeStateReference, mergeStatesReference } from "./reference/cascade.ts";

type VDType = "float32" | "float16" | "bfloat16";
const V_DTYPES: VDType[] = ["float32", "float16", "bfloat16"];
// Largest relative error of rounding to the dtype (half an ulp), and half the smallest
// subnormal step (float16's subnormals are within reach of these values; the others' are not).
const ROUNDING: Record<VDType, number> = { float32: 0, float16: 2 ** -11, bfloat16: 2 ** -8 };
const SUBNORMAL: Record<VDType, number> = { float32: 0, float16: 2 ** -25, bfloat16: 0 };

/** Fresh log-sum-exps spread over [-20, 20]; about a fraction `empty` of them -Infinity. */
function lseValues(n: number, empty = 0): number[] {
  return Array.from({ length: n }, () => (Math.random() < empty ? -Infinity : (Math.random() * 2 - 1) * 20));
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

type Layout = "contiguous" | "transposed" | "padded" | "misaligned" | "strided-last";

/**
 * A tensor holding `values` (row-major for `shape`) in the given memory layout; the memory
 * around it holds NaN, so a kernel that reads outside the view poisons its result.
 *   transposed: dims 0 and 1 swapped in memory; padded: rows 8 elements longer (16-byte
 *   aligned); misaligned: rows start one element in (no vector loads); strided-last: the last
 *   dimension has stride 2.
 */
function placed(values: ArrayLike<number>, shape: number[], dtype: fi.DType, device: fi.Device, layout: Layout = "contiguous"): fi.Tensor {
  const src = fi.tensor(Array.from(values), shape, { dtype, device });
  if (layout === "contiguous") return src;
  const n = shape.length, last = shape[n - 1]!, lead = shape.slice(0, -1);
  let base: fi.Tensor, view: fi.Tensor;
  switch (layout) {
    case "transposed":
      base = fi.full([shape[1]!, shape[0]!, ...shape.slice(2)], NaN, { dtype, device });
      view = base.transpose(0, 1);
      break;
    case "padded":
      base = fi.full([...lead, last + 8], NaN, { dtype, device });
      view = base.slice(n - 1, 0, last);
      break;
    case "misaligned":
      base = fi.full([...lead, last + 1], NaN, { dtype, device });
      view = base.slice(n - 1, 1, last + 1);
      break;
    case "strided-last":
      base = fi.full([...shape, 2], NaN, { dtype, device });
      view = base.select(n, 1);
      break;
  }
  base.dispose();
  view.copy_(src);
  src.dispose();
  if (layout !== "transposed" || (shape[0]! > 1 && shape[1]! > 1)) expect(view.isContiguous()).toBe(false);
  return view;
}

/** Raw bytes of a tensor's elements, row-major. */
function rawBytes(t: fi.Tensor): Uint8Array {
  const a = t.toArray();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}

interface Expected {
  v: ArrayLike<number>;
  s: ArrayLike<number>;
  scale: ArrayLike<number>;
}

/**
 * Expects merged (v, s) to match: s within float32 rounding of a float32 log, v within 1e-5 of
 * the magnitude of its weighted terms (float32 arithmetic) plus one rounding to v's dtype.
 * `slack` widens both (2 when comparing two computed results). NaN never passes.
 */
function expectMerged(v: fi.Tensor, s: fi.Tensor, want: Expected, dtype: VDType, what: string, slack = 1): void {
  const gv = v.toFloat32Array(), gs = s.toFloat32Array();
  expect(gv.length).toBe(want.v.length);
  expect(gs.length).toBe(want.s.length);
  for (let i = 0; i < gs.length; ++i) {
    const a = gs[i]!, e = want.s[i]!;
    const ok = e === -Infinity ? a === -Infinity : Number.isFinite(a) && Math.abs(a - e) <= slack * (2e-6 + 1e-6 * Math.abs(e));
    if (!ok) throw new Error(`${what}: s[${i}] = ${a}, expected ${e}`);
  }
  const u = ROUNDING[dtype];
  for (let i = 0; i < gv.length; ++i) {
    const a = gv[i]!, e = want.v[i]!, scale = want.scale[i]!;
    const tol = slack * (1e-5 * scale + u * (Math.abs(e) + 1e-5 * scale) + SUBNORMAL[dtype]);
    if (!(Number.isFinite(a) && Math.abs(a - e) <= tol)) {
      throw new Error(`${what}: v[${i}] = ${a}, expected ${e} (tolerance ${tol}, ${dtype})`);
    }
  }
}

/** Checks a result's shapes, dtypes, device and contiguity. */
function expectOutputs(out: fi.MergedState, shape: number[], dtype: VDType, device: fi.Device): void {
  expect(out.v.shape).toEqual(shape);
  expect(out.s.shape).toEqual(shape.slice(0, 2));
  expect(out.v.dtype).toBe(dtype);
  expect(out.s.dtype).toBe("float32");
  expect(out.v.device).toBe(device);
  expect(out.s.device).toBe(device);
  expect(out.v.isContiguous()).toBe(true);
  expect(out.s.isContiguous()).toBe(true);
}

function dispose(...ts: (fi.Tensor | fi.MergedState | undefined)[]): void {
  for (const t of ts) {
    if (t instanceof fi.Tensor) t.dispose();
    else if (t) {
      t.v.dispose();
      t.s.dispose();
    }
  }
}

/** Runs `fn` on cpu copies of the inputs (for CUDA results: compare with the CPU backend). */
function onCpu(inputs: fi.Tensor[], fn: (...cpu: fi.Tensor[]) => fi.MergedState): fi.MergedState {
  const copies = inputs.map((t) => t.to("cpu"));
  try {
    return fn(...copies);
  } finally {
    dispose(...copies);
  }
}

function expectMatchesCpu(device: fi.Device, out: fi.MergedState, inputs: fi.Tensor[], fn: (...cpu: fi.Tensor[]) => fi.MergedState, ref: MergeReference, dtype: VDType, what: string): void {
  if (device === "cpu") return;
  const cpu = onCpu(inputs, fn);
  try {
    expectMerged(out.v, out.s, { v: cpu.v.toFloat32Array(), s: cpu.s.toFloat32Array(), scale: ref.scale }, dtype, `${what} (cuda vs cpu)`, 2);
  } finally {
    dispose(cpu);
  }
}

// ------------------------------------------------------------------ mergeState

interface PairCase {
  shape: [number, number, number];
  dtype: VDType;
  layouts?: Partial<Record<"vA" | "sA" | "vB" | "sB", Layout>>;
  emptyA?: number;
  emptyB?: number;
}

/** Random inputs of a mergeState case, and their reference. */
function pairInputs(device: fi.Device, c: PairCase) {
  const [L, H, D] = c.shape;
  const l = c.layouts ?? {};
  const vA = placed(randomValues(L * H * D), c.shape, c.dtype, device, l.vA);
  const sA = placed(lseValues(L * H, c.emptyA), [L, H], "float32", device, l.sA);
  const vB = placed(randomValues(L * H * D), c.shape, c.dtype, device, l.vB);
  const sB = placed(lseValues(L * H, c.emptyB), [L, H], "float32", device, l.sB);
  const ref = mergeStateReference(L, H, D, vA.toFloat32Array(), sA.toFloat32Array(), vB.toFloat32Array(), sB.toFloat32Array());
  return { vA, sA, vB, sB, ref };
}

function runMergeState(device: fi.Device, c: PairCase): void {
  const { vA, sA, vB, sB, ref } = pairInputs(device, c);
  const what = `mergeState ${c.dtype} [${c.shape}] ${JSON.stringify(c.layouts ?? {})}`;
  const out = fi.mergeState(vA, sA, vB, sB);
  try {
    expectOutputs(out, c.shape, c.dtype, device);
    expectMerged(out.v, out.s, ref, c.dtype, what);
    expectMatchesCpu(device, out, [vA, sA, vB, sB], (a, b, x, y) => fi.mergeState(a!, b!, x!, y!), ref, c.dtype, what);
  } finally {
    dispose(out, vA, sA, vB, sB);
  }
}

const SHAPES: [number, number, number][] = [[1, 1, 64], [7, 3, 128], [99, 32, 256], [7, 3, 7], [99, 1, 64], [1, 32, 1]];

describe("mergeState", () => {
  for (const dtype of V_DTYPES) {
    testOnDevices(`${dtype}: random states of odd sizes match the float64 reference`, (device) => {
      for (const shape of SHAPES) runMergeState(device, { shape, dtype });
    });
  }

  for (const dtype of V_DTYPES) {
    testOnDevices(`${dtype}: strided, transposed and misaligned inputs`, (device) => {
      const layouts: Layout[] = ["transposed", "padded", "misaligned", "strided-last"];
      for (const shape of [[7, 3, 128], [5, 4, 7], [3, 2, 64]] as [number, number, number][]) {
        for (const layout of layouts) {
          runMergeState(device, { shape, dtype, layouts: { vA: layout, sB: layout } });
          runMergeState(device, { shape, dtype, layouts: { vB: layout, sA: layout } });
        }
        // A and B in different layouts at once
        runMergeState(device, { shape, dtype, layouts: { vA: "transposed", sA: "padded", vB: "padded", sB: "transposed" } });
        runMergeState(device, { shape, dtype, layouts: { vA: "misaligned", vB: "strided-last" } });
      }
    });
  }

  testOnDevices("an empty (-Infinity) state returns the other state unchanged; two give v = 0, s = -Infinity", (device) => {
    for (const dtype of V_DTYPES) {
      for (const shape of [[7, 3, 128], [13, 5, 7]] as [number, number, number][]) {
        const [L, H, D] = shape;
        const { vA, vB } = pairInputs(device, { shape, dtype });
        // Random empty states, and at least one pair of each kind: A empty, B empty, both.
        const sa = new Float32Array(lseValues(L * H, 0.4)), sb = new Float32Array(lseValues(L * H, 0.4));
        sa[0] = sb[0] = sa[1] = sb[2] = -Infinity;
        sb[1] = sa[2] = 3.5;
        using sA = fi.tensor(sa, [L, H], { device });
        using sB = fi.tensor(sb, [L, H], { device });
        const ref = mergeStateReference(L, H, D, vA.toFloat32Array(), sa, vB.toFloat32Array(), sb);
        // An empty state's v is ignored whatever it holds: put NaN there.
        const va = Array.from(vA.toFloat32Array()), vb = Array.from(vB.toFloat32Array());
        for (let p = 0; p < L * H; ++p) {
          for (let d = 0; d < D; ++d) {
            if (sa[p] === -Infinity) va[p * D + d] = NaN;
            if (sb[p] === -Infinity) vb[p * D + d] = NaN;
          }
        }
        using vAn = fi.tensor(va, shape, { dtype, device });
        using vBn = fi.tensor(vb, shape, { dtype, device });
        const out = fi.mergeState(vAn, sA, vBn, sB);
        try {
          const bitsA = rawBytes(vA), bitsB = rawBytes(vB), bitsOut = rawBytes(out.v);
          const rowBytes = D * vA.itemsize;
          const v = out.v.toFloat32Array(), s = out.s.toFloat32Array();
          const counts = [0, 0, 0];
          for (let p = 0; p < L * H; ++p) {
            const row = bitsOut.subarray(p * rowBytes, (p + 1) * rowBytes);
            if (sa[p] === -Infinity && sb[p] === -Infinity) {
              counts[0]!++;
              expect(s[p]).toBe(-Infinity);
              for (let d = 0; d < D; ++d) expect(Object.is(v[p * D + d], 0)).toBe(true);
            } else if (sa[p] === -Infinity) {
              counts[1]!++;
              expect(s[p]).toBe(sb[p]!);
              expect(row).toEqual(bitsB.subarray(p * rowBytes, (p + 1) * rowBytes));
            } else if (sb[p] === -Infinity) {
              counts[2]!++;
              expect(s[p]).toBe(sa[p]!);
              expect(row).toEqual(bitsA.subarray(p * rowBytes, (p + 1) * rowBytes));
            }
          }
          expect(counts.every((n) => n > 0)).toBe(true);
          expectMerged(out.v, out.s, ref, dtype, `mergeState with empty states ${dtype}`);
        } finally {
          dispose(out, vA, vB);
        }
      }
    }
  });

  testOnDevices("extreme but finite log-sum-exps (a difference of 200) neither overflow nor lose the larger state", (device) => {
    using vA = fi.tensor([1, 2, 3, 4], [1, 1, 4], { device });
    using vB = fi.tensor([5, 6, 7, 8], [1, 1, 4], { device });
    using sA = fi.tensor([100], [1, 1], { device });
    using sB = fi.tensor([-100], [1, 1], { device });
    const out = fi.mergeState(vA, sA, vB, sB);
    try {
      expect(Array.from(out.v.toFloat32Array())).toEqual([1, 2, 3, 4]);
      expect(out.s.item()).toBe(100);
    } finally {
      dispose(out);
    }
  });

  testOnDevices("writes every output element and nothing around it (poisoned strided outputs)", (device) => {
    for (const dtype of V_DTYPES) {
      const shape: [number, number, number] = [9, 5, 7 + (dtype === "float32" ? 0 : 57)];
      const [L, H, D] = shape;
      const { vA, sA, vB, sB, ref } = pairInputs(device, { shape, dtype, emptyA: 0.2, emptyB: 0.2 });
      // outputs: every other head of a NaN-filled buffer
      using vBase = fi.full([L, 2 * H, D], NaN, { dtype, device });
      using sBase = fi.full([L, 2 * H], NaN, { device });
      using vOut = vBase.slice(1, 1, 2 * H, 2);
      using sOut = sBase.slice(1, 1, 2 * H, 2);
      mergeStateInto(vA, sA, vB, sB, vOut, sOut);
      expectMerged(vOut, sOut, ref, dtype, `mergeState into poisoned ${dtype}`);
      using vLeft = vBase.slice(1, 0, 2 * H, 2);
      using sLeft = sBase.slice(1, 0, 2 * H, 2);
      expect(Array.from(vLeft.toFloat32Array()).every(Number.isNaN)).toBe(true);
      expect(Array.from(sLeft.toFloat32Array()).every(Number.isNaN)).toBe(true);
      dispose(vA, sA, vB, sB);
    }
  });

  testOnDevices("the output may be the B inputs themselves", (device) => {
    for (const dtype of V_DTYPES) {
      const { vA, sA, vB, sB, ref } = pairInputs(device, { shape: [7, 3, 128], dtype, emptyA: 0.1, emptyB: 0.1 });
      mergeStateInto(vA, sA, vB, sB, vB, sB);
      expectMerged(vB, sB, ref, dtype, `mergeState into B ${dtype}`);
      dispose(vA, sA, vB, sB);
    }
  });

  testOnDevices("zero-sized inputs give zero-sized outputs", (device) => {
    for (const shape of [[0, 3, 64], [4, 0, 64], [4, 3, 0]] as [number, number, number][]) {
      using vA = fi.zeros(shape, { device, dtype: "bfloat16" });
      using vB = fi.zeros(shape, { device, dtype: "bfloat16" });
      using sA = fi.full(shape.slice(0, 2), 1, { device });
      using sB = fi.full(shape.slice(0, 2), 1, { device });
      const out = fi.mergeState(vA, sA, vB, sB);
      expectOutputs(out, shape, "bfloat16", device);
      // head_dim 0 still merges s
      for (const x of out.s.toFloat32Array()) expect(x).toBeCloseTo(1 + Math.log(2), 6);
      dispose(out);
    }
  });
});

// ------------------------------------------------------------------ mergeStateInPlace

describe("mergeStateInPlace", () => {
  for (const dtype of V_DTYPES) {
    testOnDevices(`${dtype}: merges into v and s, strided included`, (device) => {
      for (const [shape, layout] of [[[7, 3, 128], "contiguous"], [[99, 32, 256], "contiguous"], [[5, 4, 7], "padded"], [[7, 3, 64], "transposed"], [[6, 2, 8], "misaligned"]] as [[number, number, number], Layout][]) {
        const { vA, sA, vB, sB, ref } = pairInputs(device, { shape, dtype, layouts: { vA: layout, sA: layout }, emptyA: 0.1, emptyB: 0.1 });
        const cpuInputs = device === "cpu" ? undefined : [vA, sA, vB, sB].map((t) => t.to("cpu"));
        fi.mergeStateInPlace(vA, sA, vB, sB);
        expectMerged(vA, sA, ref, dtype, `mergeStateInPlace ${dtype} [${shape}] ${layout}`);
        if (cpuInputs) {
          const [cv, cs, cvo, cso] = cpuInputs as [fi.Tensor, fi.Tensor, fi.Tensor, fi.Tensor];
          fi.mergeStateInPlace(cv, cs, cvo, cso);
          expectMerged(vA, sA, { v: cv.toFloat32Array(), s: cs.toFloat32Array(), scale: ref.scale }, dtype, "in place, cuda vs cpu", 2);
          dispose(...cpuInputs);
        }
        dispose(vA, sA, vB, sB);
      }
    });
  }

  for (const maskDtype of ["bool", "uint8"] as const) {
    testOnDevices(`mask (${maskDtype}): rows whose mask is 0 stay bit-for-bit, others merge`, (device) => {
      for (const dtype of V_DTYPES) {
        for (const strided of [false, true]) {
          const shape: [number, number, number] = [37, 3, dtype === "float32" ? 7 : 128];
          const [L, H, D] = shape;
          const { vA, sA, vB, sB, ref } = pairInputs(device, { shape, dtype, emptyA: 0.1, emptyB: 0.1 });
          const keep = Array.from({ length: L }, (_, r) => (r % 3 === 1 || Math.random() < 0.3 ? 0 : maskDtype === "uint8" ? 1 + Math.floor(Math.random() * 255) : 1));
          let mask: fi.Tensor;
          if (strided) {
            using base = fi.zeros([L, 3], { dtype: maskDtype, device });
            mask = base.select(1, 2);
            using m = fi.tensor(keep, [L], { dtype: maskDtype, device });
            mask.copy_(m);
          } else {
            mask = fi.tensor(keep, [L], { dtype: maskDtype, device });
          }
          // Poison the rows that must not be touched: NaN in v and s (a merge would change them).
          const va = Array.from(vA.toFloat32Array()), sa = Array.from(sA.toFloat32Array());
          for (let r = 0; r < L; ++r) {
            if (keep[r]) continue;
            for (let i = r * H * D; i < (r + 1) * H * D; ++i) if (Math.random() < 0.5) va[i] = NaN;
            for (let i = r * H; i < (r + 1) * H; ++i) if (Math.random() < 0.5) sa[i] = NaN;
          }
          using v = fi.tensor(va, shape, { dtype, device });
          using s = fi.tensor(sa, [L, H], { device });
          const vBefore = rawBytes(v), sBefore = rawBytes(s);
          fi.mergeStateInPlace(v, s, vB, sB, mask);
          const vAfter = rawBytes(v), sAfter = rawBytes(s);
          const vRow = H * D * v.itemsize, sRow = H * 4;
          const gv = v.toFloat32Array(), gs = s.toFloat32Array();
          for (let r = 0; r < L; ++r) {
            if (!keep[r]) {
              expect(vAfter.subarray(r * vRow, (r + 1) * vRow)).toEqual(vBefore.subarray(r * vRow, (r + 1) * vRow));
              expect(sAfter.subarray(r * sRow, (r + 1) * sRow)).toEqual(sBefore.subarray(r * sRow, (r + 1) * sRow));
            }
          }
          // The merged rows match the reference.
          const rows = keep.map((k, r) => (k ? r : -1)).filter((r) => r >= 0);
          const pick = (a: ArrayLike<number>, width: number) => rows.flatMap((r) => Array.from({ length: width }, (_, i) => a[r * width + i]!));
          using gotV = fi.tensor(pick(gv, H * D), [rows.length, H, D], { device: "cpu" });
          using gotS = fi.tensor(pick(gs, H), [rows.length, H], { device: "cpu" });
          expectMerged(gotV, gotS, { v: pick(ref.v, H * D), s: pick(ref.s, H), scale: pick(ref.scale, H * D) }, dtype, `masked merge ${dtype}`);
          dispose(mask, vA, sA, vB, sB);
        }
      }
    });
  }

  testOnDevices("an all-zero mask changes nothing; an all-ones mask is the unmasked merge", (device) => {
    const { vA, sA, vB, sB, ref } = pairInputs(device, { shape: [9, 4, 64], dtype: "bfloat16" });
    using none = fi.zeros([9], { dtype: "bool", device });
    using all = fi.ones([9], { dtype: "bool", device });
    const before = [rawBytes(vA), rawBytes(sA)];
    fi.mergeStateInPlace(vA, sA, vB, sB, none);
    expect([rawBytes(vA), rawBytes(sA)]).toEqual(before);
    fi.mergeStateInPlace(vA, sA, vB, sB, all);
    expectMerged(vA, sA, ref, "bfloat16", "all-ones mask");
    dispose(vA, sA, vB, sB);
  });

  testOnDevices("merging a state with itself adds log 2 to s and keeps v", (device) => {
    using v = fi.tensor(randomValues(3 * 2 * 16), [3, 2, 16], { device });
    using s = fi.tensor(lseValues(6), [3, 2], { device });
    const v0 = v.toFloat32Array(), s0 = s.toFloat32Array();
    fi.mergeStateInPlace(v, s, v, s);
    expect(Array.from(v.toFloat32Array())).toEqual(Array.from(v0));
    const s1 = s.toFloat32Array();
    for (let i = 0; i < 6; ++i) expect(Math.abs(s1[i]! - (s0[i]! + Math.LN2))).toBeLessThanOrEqual(4e-6);
  });
});

// ------------------------------------------------------------------ mergeStates

interface StatesCase {
  shape: [number, number, number, number]; // [seqLen, numStates, numHeads, headDim]
  dtype: VDType;
  vLayout?: Layout;
  sLayout?: Layout;
  empty?: number;
  /** Put NaN into the v of empty states (they must be ignored). */
  poisonEmpty?: boolean;
}

function statesInputs(device: fi.Device, c: StatesCase) {
  const [L, N, H, D] = c.shape;
  const sValues = lseValues(L * N * H, c.empty);
  const vValues = randomValues(L * N * H * D);
  if (c.poisonEmpty) {
    for (let i = 0; i < L * N * H; ++i) if (sValues[i] === -Infinity) for (let d = 0; d < D; ++d) vValues[i * D + d] = NaN;
  }
  const v = placed(vValues, c.shape, c.dtype, device, c.vLayout);
  const s = placed(sValues, [L, N, H], "float32", device, c.sLayout);
  const vv = v.toFloat32Array(), sv = s.toFloat32Array();
  const ref = mergeStatesReference(L, N, H, D, (l, i, h) => sv[(l * N + i) * H + h]!, (l, i, h, d) => vv[((l * N + i) * H + h) * D + d]!);
  return { v, s, ref };
}

function runMergeStates(device: fi.Device, c: StatesCase): void {
  const { v, s, ref } = statesInputs(device, c);
  const [L, , H, D] = c.shape;
  const what = `mergeStates ${c.dtype} [${c.shape}] ${c.vLayout ?? ""} ${c.sLayout ?? ""}`;
  const out = fi.mergeStates(v, s);
  try {
    expectOutputs(out, [L, H, D], c.dtype, device);
    expectMerged(out.v, out.s, ref, c.dtype, what);
    expectMatchesCpu(device, out, [v, s], (a, b) => fi.mergeStates(a!, b!), ref, c.dtype, what);
  } finally {
    dispose(out, v, s);
  }
}

describe("mergeStates", () => {
  for (const dtype of V_DTYPES) {
    testOnDevices(`${dtype}: 1, 2, 5, 16 and 37 states of odd sizes match the float64 reference`, (device) => {
      for (const N of [1, 2, 5, 16, 37]) {
        for (const [L, H, D] of [[1, 1, 64], [7, 3, 128], [7, 3, 7], [3, 32, 256], [99, 1, 1]]) {
          runMergeStates(device, { shape: [L!, N, H!, D!], dtype, empty: 0.1 });
        }
      }
      runMergeStates(device, { shape: [99, 5, 32, 128], dtype });
    });
  }

  for (const dtype of V_DTYPES) {
    testOnDevices(`${dtype}: strided, transposed and misaligned inputs`, (device) => {
      const layouts: Layout[] = ["transposed", "padded", "misaligned", "strided-last"];
      for (const N of [2, 5, 16]) {
        for (const layout of layouts) {
          runMergeStates(device, { shape: [7, N, 3, 128], dtype, vLayout: layout, empty: 0.1 });
          runMergeStates(device, { shape: [5, N, 4, 7], dtype, sLayout: layout });
        }
        runMergeStates(device, { shape: [6, N, 3, 64], dtype, vLayout: "transposed", sLayout: "transposed" });
      }
    });
  }

  testOnDevices("the bench shape [128, 16, 32, 128] in bfloat16", (device) => {
    runMergeStates(device, { shape: [128, 16, 32, 128], dtype: "bfloat16" });
  });

  testOnDevices("one state is returned exactly; empty states are ignored (NaN in their v included)", (device) => {
    for (const dtype of V_DTYPES) {
      const shape: [number, number, number, number] = [7, 1, 3, 64];
      const { v, s } = statesInputs(device, { shape, dtype, empty: 0.3 });
      const out = fi.mergeStates(v, s);
      const sv = s.toFloat32Array(), ov = out.v.toFloat32Array(), os = out.s.toFloat32Array();
      const vBits = rawBytes(v), outBits = rawBytes(out.v), row = 64 * v.itemsize;
      for (let p = 0; p < 21; ++p) {
        expect(os[p]).toBe(sv[p]!);
        if (sv[p] === -Infinity) for (let d = 0; d < 64; ++d) expect(Object.is(ov[p * 64 + d], 0)).toBe(true);
        else expect(outBits.subarray(p * row, (p + 1) * row)).toEqual(vBits.subarray(p * row, (p + 1) * row));
      }
      dispose(out, v, s);
      for (const N of [2, 5, 16]) {
        runMergeStates(device, { shape: [9, N, 3, 64], dtype, empty: 0.5, poisonEmpty: true });
        runMergeStates(device, { shape: [9, N, 3, 7], dtype, empty: 0.9, poisonEmpty: true });
      }
      // every state empty
      using vAll = fi.full([4, 5, 2, 16], NaN, { dtype, device });
      using sAll = fi.full([4, 5, 2], -Infinity, { device });
      const none = fi.mergeStates(vAll, sAll);
      expect(Array.from(none.s.toFloat32Array()).every((x) => x === -Infinity)).toBe(true);
      expect(Array.from(none.v.toFloat32Array()).every((x) => Object.is(x, 0))).toBe(true);
      dispose(none);
    }
  });

  testOnDevices("zero states give v = 0, s = -Infinity", (device) => {
    for (const dtype of V_DTYPES) {
      using v = fi.empty([5, 0, 3, 64], { dtype, device });
      using s = fi.empty([5, 0, 3], { device });
      // poisoned outputs, so "v = 0" is written and not left over
      using vOut = fi.full([5, 3, 64], NaN, { dtype, device });
      using sOut = fi.full([5, 3], NaN, { device });
      mergeStatesInto(v, s, vOut, sOut);
      expect(Array.from(vOut.toFloat32Array()).every((x) => Object.is(x, 0))).toBe(true);
      expect(Array.from(sOut.toFloat32Array()).every((x) => x === -Infinity)).toBe(true);
      const out = fi.mergeStates(v, s);
      expectOutputs(out, [5, 3, 64], dtype, device);
      expect(Array.from(out.v.toFloat32Array()).every((x) => Object.is(x, 0))).toBe(true);
      expect(Array.from(out.s.toFloat32Array()).every((x) => x === -Infinity)).toBe(true);
      dispose(out);
    }
  });

  testOnDevices("two states agree with mergeState", (device) => {
    for (const dtype of V_DTYPES) {
      const { v, s, ref } = statesInputs(device, { shape: [11, 2, 5, 128], dtype, empty: 0.2 });
      using vA = v.select(1, 0);
      using vB = v.select(1, 1);
      using sA = s.select(1, 0);
      using sB = s.select(1, 1);
      const a = fi.mergeStates(v, s), b = fi.mergeState(vA, sA, vB, sB);
      expectMerged(b.v, b.s, { v: a.v.toFloat32Array(), s: a.s.toFloat32Array(), scale: ref.scale }, dtype, "mergeState vs mergeStates", 2);
      dispose(a, b, v, s);
    }
  });

  testOnDevices("writes every output element and nothing around it (poisoned strided outputs)", (device) => {
    for (const dtype of V_DTYPES) {
      for (const [L, N, H, D] of [[9, 5, 4, 128], [9, 16, 4, 7], [3, 37, 2, 256]]) {
        const { v, s, ref } = statesInputs(device, { shape: [L!, N!, H!, D!], dtype, empty: 0.1 });
        using vBase = fi.full([H!, L!, D! + 8], NaN, { dtype, device });
        using sBase = fi.full([H!, 2 * L!], NaN, { device });
        using vOut = vBase.transpose(0, 1).slice(2, 0, D!);
        using sOut = sBase.slice(1, 0, 2 * L!, 2).transpose(0, 1);
        mergeStatesInto(v, s, vOut, sOut);
        expectMerged(vOut, sOut, ref, dtype, `mergeStates into poisoned ${dtype}`);
        using vPad = vBase.slice(2, D!);
        using sGap = sBase.slice(1, 1, 2 * L!, 2);
        expect(Array.from(vPad.toFloat32Array()).every(Number.isNaN)).toBe(true);
        expect(Array.from(sGap.toFloat32Array()).every(Number.isNaN)).toBe(true);
        dispose(v, s);
      }
    }
  });

  test.skipIf(!gpu)("state strides beyond 32-bit offsets (a view into a 2 GiB tensor) [cuda]", () => {
    const device = "cuda:0";
    const D = 64, stride = 2 ** 29;
    using base = fi.zeros([2, stride], { dtype: "bfloat16", device });
    using rows = base.slice(1, 0, D); // [2, D], strides [2^29, 1]
    using rows3 = rows.unsqueeze(0);
    using v3 = rows3.unsqueeze(2); // [1, 2, 1, D]
    expect(v3.shape).toEqual([1, 2, 1, D]);
    expect(v3.strides[1]).toBe(stride);
    using src = fi.tensor(randomValues(2 * D), [1, 2, 1, D], { dtype: "bfloat16", device });
    v3.copy_(src);
    using s = fi.tensor(lseValues(2), [1, 2, 1], { device });
    const out = fi.mergeStates(v3, s);
    const vv = v3.toFloat32Array(), sv = s.toFloat32Array();
    const ref = mergeStatesReference(1, 2, 1, D, (l, i) => sv[i]!, (l, i, h, d) => vv[i * D + d]!);
    expectMerged(out.v, out.s, ref, "bfloat16", "wide strides");
    dispose(out);
  });
});

// ------------------------------------------------------------------ bad input

describe("bad input", () => {
  /** Expects `fn` to throw (code, pattern) and leave `watched` tensors bit-for-bit unchanged. */
  function expectRejected(fn: () => unknown, code: fi.ErrorCode, pattern: RegExp, watched: fi.Tensor[]): void {
    const before = watched.map(rawBytes);
    expectFlashInferError(fn, code, pattern);
    watched.forEach((t, i) => expect(rawBytes(t)).toEqual(before[i]!));
  }

  testOnDevices("mergeState / mergeStateInPlace name the bad argument and write nothing", (device) => {
    const { vA, sA, vB, sB } = pairInputs(device, { shape: [7, 3, 16], dtype: "bfloat16" });
    const watched = [vA, sA, vB, sB];
    using vWide = fi.zeros([7, 4, 16], { dtype: "bfloat16", device });
    using vLong = fi.zeros([7, 3, 17], { dtype: "bfloat16", device });
    using v2d = fi.zeros([7, 48], { dtype: "bfloat16", device });
    using sWrong = fi.zeros([7, 4], { device });
    using s3d = fi.zeros([7, 3, 1], { device });
    using sHalf = fi.zeros([7, 3], { dtype: "float16", device });
    using vF32 = fi.zeros([7, 3, 16], { device });
    using vInt = fi.zeros([7, 3, 16], { dtype: "int32", device });
    using vF64 = fi.zeros([7, 3, 16], { dtype: "float64", device });
    using vF8 = fi.zeros([7, 3, 16], { dtype: "float8_e4m3fn", device });
    for (const [name, call] of [
      ["mergeState", (a: fi.Tensor, b: fi.Tensor, c: fi.Tensor, d: fi.Tensor) => fi.mergeState(a, b, c, d)],
      ["mergeStateInPlace", (a: fi.Tensor, b: fi.Tensor, c: fi.Tensor, d: fi.Tensor) => fi.mergeStateInPlace(a, b, c, d)],
    ] as const) {
      const [a, sa, b, sb] = name === "mergeState" ? ["vA", "sA", "vB", "sB"] : ["v", "s", "vOther", "sOther"];
      expectRejected(() => call(vA, sA, vWide, sB), "invalid_argument", new RegExp(`^${b}: shape must be \\[7, 3, 16\\]`), watched);
      expectRejected(() => call(vA, sA, vLong, sB), "invalid_argument", new RegExp(`^${b}: shape`), watched);
      expectRejected(() => call(v2d, sA, vB, sB), "invalid_argument", new RegExp(`^${a}: expected 3 dimensions`), watched);
      expectRejected(() => call(vA, sWrong, vB, sB), "invalid_argument", new RegExp(`^${sa}: shape must be \\[7, 3\\]`), watched);
      expectRejected(() => call(vA, sA, vB, s3d), "invalid_argument", new RegExp(`^${sb}: shape`), watched);
      expectRejected(() => call(vA, sHalf, vB, sB), "invalid_argument", new RegExp(`^${sa}: dtype must be float32, got float16`), watched);
      expectRejected(() => call(vA, sA, vB, sHalf), "invalid_argument", new RegExp(`^${sb}: dtype must be float32`), watched);
      expectRejected(() => call(vA, sA, vF32, sB), "invalid_argument", new RegExp(`^${b}: dtype must be bfloat16`), watched);
      expectRejected(() => call(vInt, sA, vB, sB), "invalid_argument", new RegExp(`^${a}: dtype must be float16, bfloat16 or float32, got int32`), watched);
      expectRejected(() => call(vF64, sA, vB, sB), "unsupported", new RegExp(`^${a}: dtype .* got float64`), watched);
      expectRejected(() => call(vF8, sA, vB, sB), "unsupported", new RegExp(`^${a}: dtype .* got float8_e4m3fn`), watched);
      expectRejected(() => call(vA, sA, vB, undefined as unknown as fi.Tensor), "invalid_argument", new RegExp(`^${sb}: expected a Tensor`), watched);
      expectRejected(() => call(vA, sA, [1, 2] as unknown as fi.Tensor, sB), "invalid_argument", new RegExp(`^${b}: expected a Tensor`), watched);
      const gone = fi.zeros([7, 3, 16], { dtype: "bfloat16", device });
      gone.dispose();
      expectRejected(() => call(vA, sA, gone, sB), "invalid_argument", new RegExp(`^${b}: tensor was disposed`), watched);
      const goneS = fi.zeros([7, 3], { device });
      goneS.dispose();
      expectRejected(() => call(vA, goneS, vB, sB), "invalid_argument", new RegExp(`^${sa}: tensor was disposed`), watched);
    }
    // in place: broadcast outputs and bad masks
    using vRow = fi.zeros([1, 3, 16], { dtype: "bfloat16", device });
    using vBroadcast = vRow.expand([7, 3, 16]);
    expectRejected(() => fi.mergeStateInPlace(vBroadcast, sA, vB, sB), "invalid_argument", /^v: is written, so it must not be a broadcast view \(stride 0 in dimension 0\)/, watched);
    using sRow = fi.zeros([7, 1], { device });
    using sBroadcast = sRow.expand([7, 3]);
    expectRejected(() => fi.mergeStateInPlace(vA, sBroadcast, vB, sB), "invalid_argument", /^s: is written/, watched);
    using maskF = fi.ones([7], { device });
    using maskShort = fi.ones([6], { dtype: "bool", device });
    using mask2d = fi.ones([7, 1], { dtype: "uint8", device });
    expectRejected(() => fi.mergeStateInPlace(vA, sA, vB, sB, maskF), "invalid_argument", /^mask: dtype must be bool or uint8, got float32/, watched);
    expectRejected(() => fi.mergeStateInPlace(vA, sA, vB, sB, maskShort), "invalid_argument", /^mask: shape must be \[7\]/, watched);
    expectRejected(() => fi.mergeStateInPlace(vA, sA, vB, sB, mask2d), "invalid_argument", /^mask: shape/, watched);
    const goneMask = fi.ones([7], { dtype: "bool", device });
    goneMask.dispose();
    expectRejected(() => fi.mergeStateInPlace(vA, sA, vB, sB, goneMask), "invalid_argument", /^mask: tensor was disposed/, watched);
    // caller-owned outputs
    using vOutBad = fi.zeros([7, 3, 16], { device });
    using sOut = fi.zeros([7, 3], { device });
    expectRejected(() => mergeStateInto(vA, sA, vB, sB, vOutBad, sOut), "invalid_argument", /^vOut: dtype must be bfloat16/, [...watched, vOutBad, sOut]);
    dispose(...watched);
  });

  testOnDevices("mergeStates names the bad argument and writes nothing", (device) => {
    const { v, s } = statesInputs(device, { shape: [5, 3, 2, 16], dtype: "float16" });
    const watched = [v, s];
    using v3d = fi.zeros([5, 3, 32], { dtype: "float16", device });
    using sWrong = fi.zeros([5, 2, 2], { device });
    using sHalf = fi.zeros([5, 3, 2], { dtype: "float16", device });
    using vInt = fi.zeros([5, 3, 2, 16], { dtype: "uint8", device });
    expectRejected(() => fi.mergeStates(v3d, s), "invalid_argument", /^v: expected 4 dimensions \[seqLen, numStates, numHeads, headDim\]/, watched);
    expectRejected(() => fi.mergeStates(v, sWrong), "invalid_argument", /^s: shape must be \[5, 3, 2\] \(\[seqLen, numStates, numHeads\] of v\), got \[5, 2, 2\]/, watched);
    expectRejected(() => fi.mergeStates(v, sHalf), "invalid_argument", /^s: dtype must be float32, got float16/, watched);
    expectRejected(() => fi.mergeStates(vInt, s), "invalid_argument", /^v: dtype/, watched);
    const gone = fi.zeros([5, 3, 2], { device });
    gone.dispose();
    expectRejected(() => fi.mergeStates(v, gone), "invalid_argument", /^s: tensor was disposed/, watched);
    using vOut = fi.full([5, 2, 16], 3, { dtype: "float16", device });
    using sOut = fi.full([5, 2], 3, { device });
    using sOutWrong = fi.full([5, 3], 3, { device });
    using vOutRow = fi.full([1, 2, 16], 3, { dtype: "float16", device });
    using vOutBroadcast = vOutRow.expand([5, 2, 16]);
    expectRejected(() => mergeStatesInto(v, s, vOut, sOutWrong), "invalid_argument", /^sOut: shape must be \[5, 2\]/, [...watched, vOut, sOutWrong]);
    expectRejected(() => mergeStatesInto(v, s, vOutBroadcast, sOut), "invalid_argument", /^vOut: is written/, [...watched, vOutRow, sOut]);
    dispose(v, s);
  });

  test.skipIf(!gpu)("tensors on different devices are rejected before anything runs [cuda]", () => {
    const { vA, sA, vB, sB } = pairInputs("cpu", { shape: [3, 2, 16], dtype: "float32" });
    using vBGpu = vB.to("cuda:0");
    using sAGpu = sA.to("cuda:0");
    const watched = [vA, sA, vB, sB];
    expectRejected(() => fi.mergeState(vA, sA, vBGpu, sB), "invalid_argument", /^vB: on cuda:0 but vA is on cpu/, watched);
    expectRejected(() => fi.mergeState(vA, sAGpu, vB, sB), "invalid_argument", /^sA: on cuda:0 but vA is on cpu/, watched);
    expectRejected(() => fi.mergeStateInPlace(vA, sA, vBGpu, sB), "invalid_argument", /^vOther: on cuda:0/, watched);
    using mask = fi.ones([3], { dtype: "bool", device: "cuda:0" });
    expectRejected(() => fi.mergeStateInPlace(vA, sA, vB, sB, mask), "invalid_argument", /^mask: on cuda:0 but v is on cpu/, watched);
    using v4 = fi.zeros([3, 2, 2, 16], { device: "cuda:0" });
    using s3 = fi.zeros([3, 2, 2], { device: "cpu" });
    expectFlashInferError(() => fi.mergeStates(v4, s3), "invalid_argument", /^s: on cpu but v is on cuda:0/);
    dispose(...watched);
  });

  describe("the C entries validate on their own", () => {
    const d = Array.from({ length: 7 }, () => new TensorDescBuffer());
    const desc = (i: number, t: fi.Tensor, patch: Partial<ReturnType<fi.Tensor["descFields"]>> = {}) => d[i]!.write({ ...t.descFields(), ...patch });
    const lastError = () => String(lib().fi_last_error());

    test("fi_cascade_merge_state: shapes, dtypes, devices and mask, naming the argument", () => {
      const { vA, sA, vB, sB } = pairInputs("cpu", { shape: [3, 2, 8], dtype: "float32" });
      using vOut = fi.full([3, 2, 8], 7, { device: "cpu" });
      using sOut = fi.full([3, 2], 7, { device: "cpu" });
      using mask = fi.ones([3], { dtype: "bool", device: "cpu" });
      const watched = [vA, sA, vB, sB, vOut, sOut];
      const before = watched.map(rawBytes);
      const call = (patches: Record<number, Partial<ReturnType<fi.Tensor["descFields"]>>>, withMask = false) =>
        lib().fi_cascade_merge_state(desc(0, vA, patches[0]), desc(1, sA, patches[1]), desc(2, vB, patches[2]), desc(3, sB, patches[3]),
          desc(4, vOut, patches[4]), desc(5, sOut, patches[5]), withMask ? desc(6, mask, patches[6]) : null, null);
      const cases: [Record<number, Partial<ReturnType<fi.Tensor["descFields"]>>>, boolean, number, RegExp][] = [
        [{ 2: { shape: [3, 2, 9], strides: [18, 9, 1] } }, false, 1, /^v_b: shape must be \[3, 2, 8\]/],
        [{ 5: { shape: [3, 3], strides: [3, 1] } }, false, 1, /^s_out: shape must be \[3, 2\]/],
        [{ 1: { dtype: 1 } }, false, 1, /^s_a: dtype must be float32, got float16/],
        [{ 4: { dtype: 2 } }, false, 1, /^v_out: dtype must be float32, got bfloat16/],
        [{ 0: { dtype: 5 } }, false, 1, /^v_a: dtype must be float16, bfloat16 or float32, got int32/],
        [{ 0: { dtype: 9 } }, false, 2, /^v_a: dtype must be float16, bfloat16 or float32, got float64/],
        [{ 0: { shape: [3, 16], strides: [16, 1] } }, false, 1, /^v_a: expected 3 dimensions/],
        [{ 3: { shape: [3, -2], strides: [2, 1] } }, false, 1, /^s_b: shape\[1\] must be >= 0/],
        [{ 4: { strides: [0, 8, 1] } }, false, 1, /^v_out: is written, so it must not be a broadcast view/],
        [{ 6: { dtype: 0 } }, true, 1, /^mask: dtype must be bool or uint8, got float32/],
        [{ 6: { shape: [4], strides: [1] } }, true, 1, /^mask: shape must be \[3\]/],
        [{ 2: { address: 0 } }, false, 1, /^v_b: data pointer is null/],
        // a CUDA descriptor: no GPU here, else a device mismatch
        [{ 3: { device: 0 } }, false, gpu ? 1 : 5, gpu ? /^s_b: on cuda:0 but v_a is on cpu/ : /^s_b: cuda:0 requested but no CUDA device/],
        [{ 6: { device: 0 } }, true, gpu ? 1 : 5, /^mask: /],
      ];
      for (const [patches, withMask, status, pattern] of cases) {
        expect(call(patches, withMask)).toBe(status);
        expect(lastError()).toMatch(pattern);
        watched.forEach((t, i) => expect(rawBytes(t)).toEqual(before[i]!));
      }
      expect(call({}, true)).toBe(0);
      dispose(vA, sA, vB, sB);
    });

    test("fi_cascade_merge_states: shapes, dtypes and devices, naming the argument", () => {
      const { v, s } = statesInputs("cpu", { shape: [3, 4, 2, 8], dtype: "bfloat16" });
      using vOut = fi.full([3, 2, 8], 7, { dtype: "bfloat16", device: "cpu" });
      using sOut = fi.full([3, 2], 7, { device: "cpu" });
      const watched = [v, s, vOut, sOut];
      const before = watched.map(rawBytes);
      const call = (patches: Record<number, Partial<ReturnType<fi.Tensor["descFields"]>>>) =>
        lib().fi_cascade_merge_states(desc(0, v, patches[0]), desc(1, s, patches[1]), desc(2, vOut, patches[2]), desc(3, sOut, patches[3]), null);
      const cases: [Record<number, Partial<ReturnType<fi.Tensor["descFields"]>>>, number, RegExp][] = [
        [{ 1: { shape: [3, 5, 2], strides: [10, 2, 1] } }, 1, /^s: shape must be \[3, 4, 2\]/],
        [{ 2: { shape: [3, 2, 9], strides: [18, 9, 1] } }, 1, /^v_out: shape must be \[3, 2, 8\]/],
        [{ 1: { dtype: 2 } }, 1, /^s: dtype must be float32, got bfloat16/],
        [{ 2: { dtype: 0 } }, 1, /^v_out: dtype must be bfloat16, got float32/],
        [{ 3: { dtype: 9 } }, 1, /^s_out: dtype must be float32, got float64/],
        [{ 0: { shape: [3, 4, 16], strides: [64, 16, 1] } }, 1, /^v: expected 4 dimensions/],
        [{ 3: { strides: [1, 0] } }, 1, /^s_out: is written/],
        [{ 2: { device: 0 } }, gpu ? 1 : 5, /^v_out: /],
      ];
      for (const [patches, status, pattern] of cases) {
        expect(call(patches)).toBe(status);
        expect(lastError()).toMatch(pattern);
        watched.forEach((t, i) => expect(rawBytes(t)).toEqual(before[i]!));
      }
      expect(call({})).toBe(0);
      dispose(v, s);
    });
  });
});

// ---- MultiLevelCascadeAttentionWrapper: one attention written several ways.
// Five requests in two groups share a prefix (level 0); each group shares its own pages (level 1);
// each request has its own tokens (level 2, the last page partial), and its query rows are its
// last tokens. Flat: each request's pages concatenated, one paged prefill.
describe("MultiLevelCascadeAttentionWrapper", () => {
  const P = 4, Hq = 4, Hkv = 2, D = 64;
  const groups = [[0, 1, 2], [3, 4]];
  const qoLens = [3, 1, 5, 2, 4], ownLens = [6, 1, 9, 2, 7];
  const sharedPages = [0, 1, 2], groupPages = [[3, 4], [5]];
  const pages = 6 + ownLens.reduce((a, n) => a + Math.ceil(n / P), 0);
  // Own pages of each request, after the shared ones.
  const own: number[][] = [];
  ownLens.reduce((next, n) => (own.push(Array.from({ length: Math.ceil(n / P) }, (_, i) => next + i)), next + Math.ceil(n / P)), 6);
  const groupOf = (r: number) => groups.findIndex((g) => g.includes(r));
  const lastLen = (n: number) => (n === 0 ? 0 : n - (Math.ceil(n / P) - 1) * P);
  const csr = (lists: number[][]) => ({ indptr: Int32Array.from([0, ...lists.map(((s) => (l: number[]) => (s += l.length))(0))]), indices: Int32Array.from(lists.flat()) });
  const qoAll = Int32Array.from([0, ...qoLens.map(((s) => (x: number) => (s += x))(0))]);
  const totalQo = qoAll[5]!;
  const qoGroups = Int32Array.from([0, qoAll[3]!, totalQo]);

  testOnDevices("1, 2 and 3 levels, a flat paged prefill and a BSR over the same keys give the same out and lse (causal in the last level)", (device) => {
    using q = fi.randn([totalQo, Hq, D], { dtype: "float16", device, seed: Math.floor(Math.random() * 2 ** 31) });
    using cache = fi.randn([pages, 2, P, Hkv, D], { dtype: "float16", device, seed: Math.floor(Math.random() * 2 ** 31) });
    using ws = fi.empty([64 << 20], { dtype: "uint8", device });
    const common = { numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, causal: true, qDataType: "float16" as const };
    const results: [string, Float32Array, Float32Array][] = [];
    // Flat.
    {
      const t = csr(qoLens.map((_, r) => [...sharedPages, ...groupPages[groupOf(r)]!, ...own[r]!]));
      using w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD");
      w.plan({ qoIndptr: qoAll, pagedKvIndptr: t.indptr, pagedKvIndices: t.indices, pagedKvLastPageLen: ownLens.map(lastLen), pageSize: P,
        numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: "float16" });
      const r = w.run(q, cache, { returnLse: true }) as { out: fi.Tensor; lse: fi.Tensor };
      results.push(["flat", r.out.toFloat32Array(), r.lse.toFloat32Array()]);
      r.out.dispose();
      r.lse.dispose();
    }
    const full = (lists: number[][]) => lists.map(() => P);
    const levels: Record<number, { qo: Int32Array[]; lists: number[][][]; last: number[][] }> = {
      1: { qo: [qoAll], lists: [qoLens.map((_, r) => [...sharedPages, ...groupPages[groupOf(r)]!, ...own[r]!])], last: [ownLens.map(lastLen)] },
      2: { qo: [qoGroups, qoAll], lists: [groupPages.map((g) => [...sharedPages, ...g]), own], last: [full(groups), ownLens.map(lastLen)] },
      3: { qo: [Int32Array.from([0, totalQo]), qoGroups, qoAll], lists: [[sharedPages], groupPages, own], last: [[P], full(groups), ownLens.map(lastLen)] },
    };
    for (const [n, lv] of Object.entries(levels)) {
      using w = new fi.MultiLevelCascadeAttentionWrapper(Number(n), ws, "NHD");
      const tables = lv.lists.map(csr);
      w.plan({ ...common, qoIndptrArr: lv.qo, pagedKvIndptrArr: tables.map((t) => t.indptr), pagedKvIndicesArr: tables.map((t) => t.indices),
        pagedKvLastPageLenArr: lv.last });
      using out = fi.full([totalQo, Hq, D], NaN, { dtype: "float16", device });
      using lse = fi.full([totalQo, Hq], NaN, { dtype: "float32", device });
      w.run(q, cache, { out, lse });
      results.push([`${n} levels`, out.toFloat32Array(), lse.toFloat32Array()]);
    }
    // BSR: one block row per query row (R = 1), block columns = pages (C = P) of k laid out dense
    // ([pages * P, Hkv, D]); the per-block mask hides the slots past a last page's length and
    // applies each request's causal bound (key j of its sequence visible to row i when
    // j <= i + kvLen - qoLen).
    {
      using kPages = cache.select(1, 0);
      using vPages = cache.select(1, 1);
      using kDense = kPages.contiguous();
      using vDense = vPages.contiguous();
      using k = kDense.view([pages * P, Hkv, D]);
      using v = vDense.view([pages * P, Hkv, D]);
      const indptr = [0], indices: number[] = [], mask: boolean[] = [];
      qoLens.forEach((qoLen, r) => {
        const seqPages = [...sharedPages, ...groupPages[groupOf(r)]!, ...own[r]!];
        const kvLen = (seqPages.length - 1) * P + lastLen(ownLens[r]!);
        for (let i = 0; i < qoLen; ++i) {
          seqPages.forEach((page, b) => {
            indices.push(page);
            for (let c = 0; c < P; ++c) mask.push(b * P + c < kvLen && b * P + c <= i + kvLen - qoLen);
          });
          indptr.push(indices.length);
        }
      });
      using bsr = new fi.BlockSparseAttentionWrapper(ws);
      bsr.plan({ indptr, indices, M: totalQo, N: pages * P, R: 1, C: P, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, mask, qDataType: "float16" });
      const r = bsr.run(q, k, v, { returnLse: true }) as { out: fi.Tensor; lse: fi.Tensor };
      results.push(["BSR", r.out.toFloat32Array(), r.lse.toFloat32Array()]);
      r.out.dispose();
      r.lse.dispose();
    }
    const [, flatOut, flatLse] = results[0]!;
    for (const [name, out, lse] of results.slice(1)) {
      // Each level's output is rounded to float16 before the merge: a few ulps apart from flat.
      withContext(`${name} out`, () => expectClose(out, flatOut, 2e-3, 4e-3));
      withContext(`${name} lse`, () => expectClose(lse, flatLse, 1e-4, 1e-5));
    }
  });

  testOnDevices("shared-prefix decode: the one-row-per-request level's plan picks the decode kernels on CUDA (auto, fa2), and every backend equals a flat paged decode", (device) => {
    // 7 requests, one query row each: a shared prefix of 5 pages (level 0), own tokens of odd lengths (level 1).
    const batch = 7, prefixPages = 5, ownTokens = [1, 4, 9, 3, 17, 2, 6];
    const ownPages = ownTokens.map((n) => Math.ceil(n / P));
    const total = prefixPages + ownPages.reduce((a, b) => a + b, 0);
    const shared = Array.from({ length: prefixPages }, (_, i) => i);
    const ownLists: number[][] = [];
    ownPages.reduce((next, n) => (ownLists.push(Array.from({ length: n }, (_, i) => next + i)), next + n), prefixPages);
    using q = fi.randn([batch, Hq, D], { dtype: "bfloat16", device, seed: Math.floor(Math.random() * 2 ** 31) });
    using cache = fi.randn([total, 2, P, Hkv, D], { dtype: "bfloat16", device, seed: Math.floor(Math.random() * 2 ** 31) });
    using ws = fi.empty([64 << 20], { dtype: "uint8", device });
    const common = { numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: "bfloat16" as const };
    const own = csr(ownLists);
    const cascadePlan = { ...common, qoIndptrArr: [[0, batch], Int32Array.from({ length: batch + 1 }, (_, i) => i)],
      pagedKvIndptrArr: [[0, prefixPages], own.indptr], pagedKvIndicesArr: [shared, own.indices], pagedKvLastPageLenArr: [[P], ownTokens.map(lastLen)], causal: true };
    const results: [string, Float32Array, Float32Array][] = [];
    const hopper = device !== "cpu" && fi.deviceProperties(device).computeCapability[0] === 9;
    const backends: fi.PrefillBackend[] = device === "cpu" ? ["auto", "cpu"] : hopper ? ["auto", "fa2", "fa3"] : ["auto", "fa2"];
    for (const backend of backends) {
      using w = new fi.MultiLevelCascadeAttentionWrapper(2, ws, "NHD", { backend });
      w.plan(cascadePlan);
      // One engine: each level is a paged prefill plan, and the plan of the decode-shaped level
      // (one query row per group) takes the decode kernels where they serve it (CUDA, not pinned to fa3).
      expect(w.levelEngines).toEqual(device === "cpu" || backend === "fa3" ? ["prefill", "prefill"] : ["prefill", "decode"]);
      using out = fi.full([batch, Hq, D], NaN, { dtype: "bfloat16", device });
      using lse = fi.full([batch, Hq], NaN, { dtype: "float32", device });
      w.run(q, cache, { out, lse });
      results.push([`cascade ${backend}`, out.toFloat32Array(), lse.toFloat32Array()]);
    }
    const flat = csr(ownLists.map((l) => [...shared, ...l]));
    using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD");
    w.plan({ ...common, indptr: flat.indptr, indices: flat.indices, lastPageLen: ownTokens.map(lastLen) });
    const r = w.run(q, cache, { returnLse: true }) as { out: fi.Tensor; lse: fi.Tensor };
    const flatOut = r.out.toFloat32Array(), flatLse = r.lse.toFloat32Array();
    r.out.dispose();
    r.lse.dispose();
    for (const [name, out, lse] of results) {
      // Each level's output is rounded to bfloat16 before the merge: a few ulps apart from flat.
      withContext(`${name} out`, () => expectClose(out, flatOut, 1.5e-2, 2e-2));
      withContext(`${name} lse`, () => expectClose(lse, flatLse, 1e-4, 1e-5));
    }
  });

  test("bad input: named errors at plan time", () => {
    using ws = fi.empty([16 << 20], { dtype: "uint8" });
    using w = new fi.MultiLevelCascadeAttentionWrapper(2, ws);
    const table = { pagedKvIndptrArr: [[0, 1], [0, 1, 2]], pagedKvIndicesArr: [[0], [1, 2]], pagedKvLastPageLenArr: [[4], [2, 3]] };
    const ok = { ...table, qoIndptrArr: [[0, 5], [0, 2, 5]], numQoHeads: 4, numKvHeads: 2, headDim: 64, pageSize: 4 };
    expectFlashInferError(() => new fi.MultiLevelCascadeAttentionWrapper(0, ws), "invalid_argument", /numLevels/);
    expectFlashInferError(() => w.plan({ ...ok, qoIndptrArr: [[0, 5]] }), "invalid_argument", /qoIndptrArr: expected one entry per level \(2\)/);
    expectFlashInferError(() => w.plan({ ...ok, qoIndptrArr: [[0, 3, 5], [0, 2, 5]], pagedKvIndptrArr: [[0, 1, 1], [0, 1, 2]], pagedKvLastPageLenArr: [[4, 0], [2, 3]] }),
      "invalid_argument", /levels must nest, but level 0's boundary 3/);
    expectFlashInferError(() => w.plan({ ...ok, qoIndptrArr: [[0, 5], [0, 2, 6]] }), "invalid_argument", /qoIndptrArr\[1\]: expected offsets from 0 to the same total/);
    expectFlashInferError(() => w.plan({ ...ok, pagedKvIndicesArr: [[0], [1]] }), "invalid_argument", /pagedKvIndices/);
    using q = fi.randn([5, 4, 64], { dtype: "float16" });
    using cache = fi.randn([3, 2, 4, 2, 64], { dtype: "float16" });
    expectFlashInferError(() => w.run(q, cache), "invalid_argument", /call plan\(\) first/);
    w.plan(ok);
    using q6 = fi.randn([6, 4, 64], { dtype: "float16" });
    expectFlashInferError(() => w.run(q6, cache), "invalid_argument", /q: expected \[5, 4, 64\]/);
    using out = w.run(q, cache) as fi.Tensor;
    expect(Array.from(out.toFloat32Array()).some(Number.isNaN)).toBe(false);
  });

  testOnDevices("a second plan reuses the levels' wrappers and equals a fresh wrapper's; a plan failing at level 1 drops the plan, at level 0 keeps it", (device) => {
    const P = 4, Hq = 4, Hkv = 2, D = 64;
    using cache = fi.randn([12, 2, P, Hkv, D], { dtype: "float16", device, seed: Math.floor(Math.random() * 2 ** 31) });
    using q = fi.randn([6, Hq, D], { dtype: "float16", device, seed: Math.floor(Math.random() * 2 ** 31) });
    const common = { numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, causal: true, qDataType: "float16" as const };
    // The shared prefix (pages 0-2) for all three requests, then each one's own pages.
    const planOf = (own: number[][], lastLens: number[]) => ({
      ...common, qoIndptrArr: [[0, 6], [0, 2, 5, 6]], pagedKvIndptrArr: [[0, 3], [0, ...own.map(((n) => (o: number[]) => (n += o.length))(0))]],
      pagedKvIndicesArr: [[0, 1, 2], own.flat()], pagedKvLastPageLenArr: [[P], lastLens],
    });
    const a = planOf([[3, 4], [5], [6, 7, 8]], [4, 2, 3]), b = planOf([[3], [9, 5], [6, 7]], [1, 4, 2]);
    const runOn = (w: fi.MultiLevelCascadeAttentionWrapper) => {
      using out = w.run(q, cache) as fi.Tensor;
      return Array.from(out.toFloat32Array());
    };
    const fresh = (plan: typeof a) => {
      using ws1 = fi.empty([16 << 20], { dtype: "uint8", device });
      using f = new fi.MultiLevelCascadeAttentionWrapper(2, ws1, "NHD");
      f.plan(plan);
      return runOn(f);
    };
    using ws = fi.empty([16 << 20], { dtype: "uint8", device });
    using w = new fi.MultiLevelCascadeAttentionWrapper(2, ws, "NHD");
    w.plan(a);
    const outA = runOn(w);
    expect(outA.some(Number.isNaN)).toBe(false);
    expect(outA).toEqual(fresh(a));
    w.plan(b);
    expect(runOn(w)).toEqual(fresh(b));
    // Level 1 fails after level 0 took the new plan: no plan is left.
    expectFlashInferError(() => w.plan({ ...a, pagedKvIndicesArr: [[0, 1, 2], [3, 4, 5, -1, 7, 8]] }), "invalid_argument", /page index must be >= 0/);
    expectFlashInferError(() => w.run(q, cache), "invalid_argument", /call plan\(\) first/);
    // Level 0 fails: the previous plan stays.
    w.plan(a);
    expectFlashInferError(() => w.plan({ ...b, pagedKvIndicesArr: [[0, -1, 2], b.pagedKvIndicesArr[1]!] }), "invalid_argument", /page index must be >= 0/);
    expect(runOn(w)).toEqual(outA);
  });
});

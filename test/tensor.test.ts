// Tensor runtime: creation, views, strided copies and casts, device moves, disposal, bad input.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { expectClose, expectFlashInferError, gpu, randomValues, ravel, testOnDevices, unravel, withContext } from "./helpers.ts";

const f32 = (x: number) => Math.fround(x);

describe("creation", () => {
  testOnDevices("empty/zeros/ones/full give shape, strides, dtype, device", (device) => {
    using e = fi.empty([3, 5, 7], { device, dtype: "bfloat16" });
    expect(e.shape).toEqual([3, 5, 7]);
    expect(e.strides).toEqual([35, 7, 1]);
    expect(e.dtype).toBe("bfloat16");
    expect(e.device).toBe(device);
    expect(e.numel).toBe(105);
    expect(e.nbytes).toBe(210);
    expect(e.isContiguous()).toBe(true);
    using z = fi.zeros([2, 3], { device });
    expect(Array.from(z.toArray() as Float32Array)).toEqual([0, 0, 0, 0, 0, 0]);
    using o = fi.ones([4], { device, dtype: "int64" });
    expect(Array.from(o.toArray() as BigInt64Array)).toEqual([1n, 1n, 1n, 1n]);
    // full rounds the value once to the dtype: 0.1 in float16 is 0.0999755859375
    using h = fi.full([5], 0.1, { device, dtype: "float16" });
    expect(Array.from(h.toFloat32Array())).toEqual(new Array(5).fill(0.0999755859375));
    using s = fi.full([], 2.5, { device });
    expect(s.shape).toEqual([]);
    expect(s.numel).toBe(1);
    expect(s.item()).toBe(2.5);
    using none = fi.zeros([0, 4], { device });
    expect(none.numel).toBe(0);
    expect(none.toArray().length).toBe(0);
  });

  test("defaults: float32 on defaultDevice()", () => {
    using t = fi.empty([2]);
    expect(t.dtype).toBe("float32");
    expect(t.device).toBe(fi.defaultDevice());
  });

  testOnDevices("tensor() keeps typed arrays' dtypes and converts plain arrays to float32", (device) => {
    const values = randomValues(37);
    using a = fi.tensor(values, undefined, { device });
    expect(a.dtype).toBe("float32");
    expect(Array.from(a.toArray() as Float32Array)).toEqual(values.map(f32));
    using b = fi.tensor(new Int32Array([1, -2, 2147483647]), undefined, { device });
    expect(b.dtype).toBe("int32");
    expect(Array.from(b.toArray() as Int32Array)).toEqual([1, -2, 2147483647]);
    using c = fi.tensor(new Float64Array(values), [37, 1], { device });
    expect(c.dtype).toBe("float64");
    expect(c.shape).toEqual([37, 1]);
    expect(Array.from(c.toArray() as Float64Array)).toEqual(values);
    using d = fi.tensor(new BigInt64Array([2n ** 62n, -5n]), undefined, { device });
    expect(Array.from(d.toArray() as BigInt64Array)).toEqual([2n ** 62n, -5n]);
    using e = fi.tensor(values, [1, 37], { device, dtype: "float16" });
    expect(Array.from(e.toArray() as Float16Array)).toEqual(Array.from(new Float16Array(values)));
  });
});

describe("views", () => {
  // A [4, 5, 6] tensor holding 0..119 and its reference values at a multi-index.
  const shape = [4, 5, 6];
  const base = (device: fi.Device) => fi.tensor(Array.from({ length: 120 }, (_, i) => i), shape, { device });

  /** Values of a view whose element at index `idx` is base[map(idx)]. */
  function expectView(view: fi.Tensor, map: (idx: number[]) => number[]) {
    const got = view.toArray() as Float32Array;
    expect(got.length).toBe(view.numel);
    for (let i = 0; i < view.numel; ++i) expect(got[i]).toBe(ravel(map(unravel(i, view.shape)), shape));
  }

  testOnDevices("view, reshape, slice, select, transpose, permute, unsqueeze, expand", (device) => {
    using t = base(device);
    using v = t.view([20, -1]);
    expect(v.shape).toEqual([20, 6]);
    expectView(v, (i) => unravel(ravel(i, [20, 6]), shape));
    using sl = t.slice(1, 1, 4);
    expect(sl.shape).toEqual([4, 3, 6]);
    expect(sl.isContiguous()).toBe(false);
    expectView(sl, ([a, b, c]) => [a!, b! + 1, c!]);
    using stepped = t.slice(2, -5, 100, 2);
    expect(stepped.shape).toEqual([4, 5, 3]);
    expectView(stepped, ([a, b, c]) => [a!, b!, 1 + 2 * c!]);
    using se = t.select(0, -1);
    expect(se.shape).toEqual([5, 6]);
    expectView(se, ([b, c]) => [3, b!, c!]);
    using tr = t.transpose(0, 2);
    expect(tr.shape).toEqual([6, 5, 4]);
    expectView(tr, ([c, b, a]) => [a!, b!, c!]);
    using pe = t.permute([1, 2, 0]);
    expectView(pe, ([b, c, a]) => [a!, b!, c!]);
    using un = t.unsqueeze(1);
    expect(un.shape).toEqual([4, 1, 5, 6]);
    expectView(un, ([a, , b, c]) => [a!, b!, c!]);
    using row = t.select(0, 2).select(0, 3);
    using ex = row.expand([3, 6]);
    expect(ex.strides).toEqual([0, 1]);
    expectView(ex, ([, c]) => [2, 3, c!]);
    // reshape of a non-contiguous tensor copies
    using rs = tr.reshape([-1]);
    expect(rs.isContiguous()).toBe(true);
    expectView(rs, (i) => { const [c, b, a] = unravel(i[0]!, [6, 5, 4]); return [a!, b!, c!]; });
    using sliceEmpty = t.slice(0, 3, 1);
    expect(sliceEmpty.shape).toEqual([0, 5, 6]);
  });

  testOnDevices("views share memory with their base", (device) => {
    using t = fi.zeros([3, 4], { device });
    using col = t.select(1, 2);
    col.fill_(7);
    expect(Array.from(t.toArray() as Float32Array)).toEqual([0, 0, 7, 0, 0, 0, 7, 0, 0, 0, 7, 0]);
    expect(col.dataPtr).toBe(t.dataPtr + 2 * 4);
  });

  test("view of a non-contiguous tensor, bad dims and bad shapes throw", () => {
    using t = base("cpu");
    using tr = t.transpose(0, 1);
    expectFlashInferError(() => tr.view([120]), "invalid_argument", /not contiguous/);
    expectFlashInferError(() => t.view([7, -1]), "invalid_argument", /does not fit/);
    expectFlashInferError(() => t.view([-1, -1]), "invalid_argument", /only one/);
    expectFlashInferError(() => t.view([2, 2]), "invalid_argument", /has 4 elements/);
    expectFlashInferError(() => t.select(3, 0), "invalid_argument", /dim/);
    expectFlashInferError(() => t.select(0, 4), "invalid_argument", /out of range/);
    expectFlashInferError(() => t.permute([0, 0, 1]), "invalid_argument", /repeats/);
    expectFlashInferError(() => t.expand([4, 4, 6]), "invalid_argument", /broadcast/);
    expectFlashInferError(() => t.slice(0, 0, 2, 0), "invalid_argument", /step/);
  });
});

describe("copies", () => {
  // Random strided source and destination views of odd sizes, every element checked.
  function stridedCase(device: fi.Device, srcDtype: fi.DType, dstDtype: fi.DType) {
    const shape = [1 + Math.floor(Math.random() * 7), 99, 1 + Math.floor(Math.random() * 3)];
    const n = shape[0]! * shape[1]! * shape[2]!;
    const values = randomValues(n * 2, 100);
    using bigSrc = fi.tensor(values, [shape[2]!, shape[1]!, shape[0]! * 2], { device, dtype: srcDtype });
    using src = bigSrc.permute([2, 1, 0]).slice(0, 0, shape[0]! * 2, 2); // shape, non-contiguous
    expect(src.shape).toEqual(shape);
    using dstBase = fi.full([shape[0]!, 3, shape[1]!, shape[2]!], NaN, { device, dtype: dstDtype });
    using dst = dstBase.select(1, 1); // poisoned, strided
    dst.copy_(src);
    const srcValues = src.toFloat32Array();
    using expectedT = fi.tensor(srcValues, undefined, { dtype: dstDtype });
    const expected = expectedT.toFloat32Array();
    expect(Array.from(dst.toFloat32Array())).toEqual(Array.from(expected));
    // the other slices of the destination stay poisoned
    const all = dstBase.toFloat32Array();
    let untouched = 0;
    for (const v of all) if (Number.isNaN(v)) untouched++;
    expect(untouched).toBe(2 * n);
  }

  for (const [a, b] of [["float32", "float32"], ["float32", "bfloat16"], ["float16", "float32"], ["bfloat16", "float8_e4m3fn"], ["float32", "float64"]] as const) {
    testOnDevices(`strided copy_ ${a} -> ${b} writes every element`, (device) => stridedCase(device, a, b));
  }

  testOnDevices("copy_ broadcasts src to dst's shape", (device) => {
    using dst = fi.full([3, 4], NaN, { device });
    using row = fi.tensor([1, 2, 3, 4], undefined, { device });
    dst.copy_(row);
    expect(Array.from(dst.toArray() as Float32Array)).toEqual([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]);
    using col = fi.tensor([5, 6, 7], [3, 1], { device, dtype: "int32" });
    dst.copy_(col);
    expect(Array.from(dst.toArray() as Float32Array)).toEqual([5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7]);
  });

  testOnDevices("contiguous() and clone() copy; clone is independent", (device) => {
    const values = randomValues(7 * 11);
    using t = fi.tensor(values, [7, 11], { device });
    using tr = t.transpose(0, 1);
    using c = tr.contiguous();
    expect(c.isContiguous()).toBe(true);
    const expected: number[] = [];
    for (let j = 0; j < 11; ++j) for (let i = 0; i < 7; ++i) expected.push(f32(values[i * 11 + j]!));
    expect(Array.from(c.toArray() as Float32Array)).toEqual(expected);
    using k = t.clone();
    t.fill_(0);
    expect(Array.from(k.toArray() as Float32Array)).toEqual(values.map(f32));
  });

  test.skipIf(!gpu)("to() moves between cpu and cuda, with casts and strided sources", () => {
    const values = randomValues(3 * 99 * 5, 10);
    using h = fi.tensor(values, [3, 99, 5]);
    using d = h.to("cuda:0");
    expect(d.device).toBe("cuda:0");
    expect(Array.from(d.toArray() as Float32Array)).toEqual(Array.from(h.toArray() as Float32Array));
    using dStrided = d.transpose(0, 2).to({ device: "cpu", dtype: "bfloat16" });
    using hStrided = h.transpose(0, 2).to({ dtype: "bfloat16" });
    expect(Array.from(dStrided.toArray() as Uint16Array)).toEqual(Array.from(hStrided.toArray() as Uint16Array));
    // copy_ across devices into a strided, poisoned destination
    using back = fi.full([5, 99, 3], NaN);
    back.copy_(d.transpose(0, 2));
    expect(Array.from(back.toArray() as Float32Array)).toEqual(Array.from(h.transpose(0, 2).contiguous().toArray() as Float32Array));
    // non-blocking move, then synchronize the stream
    using nb = h.to({ device: "cuda:0", nonBlocking: true });
    fi.currentStream("cuda:0").synchronize();
    expect(Array.from(nb.toArray() as Float32Array)).toEqual(Array.from(h.toArray() as Float32Array));
  });

  testOnDevices("to() with nothing to change aliases the same memory", (device) => {
    using t = fi.zeros([4], { device });
    using u = t.to(device);
    expect(u.dataPtr).toBe(t.dataPtr);
    u.fill_(3);
    expect(Array.from(t.toArray() as Float32Array)).toEqual([3, 3, 3, 3]);
  });
});

describe("gatherRows (embedding lookup)", () => {
  testOnDevices("rows picked by host indices, repeats and odd widths, every dtype; into a strided out; every row written", (device) => {
    for (const [dtype, cols] of [["bfloat16", 4096 + 8], ["float32", 7], ["float16", 1], ["int32", 33]] as const) {
      const rows = 50;
      using table = fi.tensor(Float32Array.from({ length: rows * cols }, (_, i) => (i % 997) - 400), [rows, cols], { device }).to({ dtype });
      const ids = Int32Array.from({ length: 2100 }, () => Math.floor(Math.random() * rows)); // > one CUDA launch's 2048
      ids[0] = 0;
      ids[1] = rows - 1;
      using got = fi.gatherRows(table, ids);
      expect(got.shape).toEqual([ids.length, cols]);
      const t = table.toFloat32Array(), g = got.toFloat32Array();
      for (let i = 0; i < ids.length; ++i)
        for (let c = 0; c < cols; c += 1 + (cols >> 3)) expect(g[i * cols + c]).toBe(t[ids[i]! * cols + c]!);
      // Into rows of a wider, poisoned buffer: only the view is written.
      using wide = fi.full([5, cols + 3], 7, { dtype, device });
      using view = wide.slice(1, 0, cols);
      fi.gatherRows(table, [3, 3, 0, 49, 1], { out: view });
      const w = wide.toFloat32Array();
      [3, 3, 0, 49, 1].forEach((id, i) => {
        for (let c = 0; c < cols; ++c) expect(w[i * (cols + 3) + c]).toBe(t[id * cols + c]!);
        for (let c = cols; c < cols + 3; ++c) expect(w[i * (cols + 3) + c]).toBe(7);
      });
    }
  });

  testOnDevices("bad input names the argument and writes nothing", (device) => {
    using table = fi.zeros([4, 8], { device });
    using out = fi.full([2, 8], 5, { device });
    expectFlashInferError(() => fi.gatherRows(table, [1, 4], { out }), "invalid_argument", /indices\[1\]: expected 0..3 \(src's rows\), got 4/);
    expectFlashInferError(() => fi.gatherRows(table, [-1, 0], { out }), "invalid_argument", /indices\[0\]: expected 0..3/);
    expectFlashInferError(() => fi.gatherRows(table, [0.5] as number[]), "invalid_argument", /indices\[0\]: expected an int32 integer/);
    // 2^32 + 1 is not wrapped to row 1
    expectFlashInferError(() => fi.gatherRows(table, [0, 2 ** 32 + 1], { out }), "invalid_argument", /indices\[1\]: expected an int32 integer, got 4294967297/);
    expectFlashInferError(() => fi.gatherRows(table, [0, 1, 2], { out }), "invalid_argument", /dst: expected \[3, 8\]/);
    using out16 = fi.zeros([2, 8], { dtype: "float16", device });
    expectFlashInferError(() => fi.gatherRows(table, [0, 1], { out: out16 }), "invalid_argument", /dst: dtype float16 differs from src's float32/);
    using t3 = fi.zeros([2, 2, 2], { device });
    expectFlashInferError(() => fi.gatherRows(t3, [0]), "invalid_argument", /src: expected \[rows, cols\]/);
    using view = table.slice(0, 0, 2);
    expectFlashInferError(() => fi.gatherRows(table, [0, 1], { out: view }), "invalid_argument", /dst: must not overlap src/);
    expect(Array.from(out.toFloat32Array()).every((x) => x === 5)).toBe(true);
    using empty = fi.gatherRows(table, []);
    expect(empty.shape).toEqual([0, 8]);
  });
});

describe("host access and disposal", () => {
  test("hostView is zero-copy and outlives dispose()", () => {
    const t = fi.zeros([6], { device: "cpu" });
    const view = t.hostView() as Float32Array;
    view[2] = 42;
    expect(Array.from(t.toArray() as Float32Array)).toEqual([0, 0, 42, 0, 0, 0]);
    t.dispose();
    view[3] = 7; // still valid memory: the view holds the storage
    expect(view[2]).toBe(42);
    expect(view[3]).toBe(7);
  });

  test("a view keeps its base's memory alive; dispose is idempotent; use after dispose throws", () => {
    const t = fi.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
    const row = t.select(0, 1);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(Array.from(row.toArray() as Float32Array)).toEqual([4, 5, 6]);
    expectFlashInferError(() => t.toArray(), "invalid_argument", /after dispose/);
    expectFlashInferError(() => t.dataPtr, "invalid_argument", /after dispose/);
    expectFlashInferError(() => row.copy_(t), "invalid_argument", /after dispose/);
    row.dispose();
  });

  test("many allocations released by dispose() do not grow memory", () => {
    for (let i = 0; i < 2000; ++i) {
      using t = fi.empty([1 << 16], { device: "cpu" });
      expect(t.numel).toBe(1 << 16);
    }
  });
});

describe("bad input", () => {
  test("wrong dtype, shape and device are named in the error", () => {
    expectFlashInferError(() => fi.empty([2], { dtype: "float128" as fi.DType }), "invalid_argument", /dtype: expected one of/);
    expectFlashInferError(() => fi.empty([2, -1]), "invalid_argument", /shape\[1\]/);
    expectFlashInferError(() => fi.empty([2.5]), "invalid_argument", /shape\[0\]/);
    expectFlashInferError(() => fi.empty([1, 1, 1, 1, 1, 1, 1, 1, 1]), "invalid_argument", /at most 8/);
    expectFlashInferError(() => fi.empty([2], { device: "gpu" }), "invalid_argument", /device: expected "cpu" or "cuda:N"/);
    expectFlashInferError(() => fi.empty([2], { device: "cuda:77" }), "invalid_argument", /cuda:77/);
    expectFlashInferError(() => fi.tensor([1, 2, 3], [2, 2]), "invalid_argument", /shape: \[2,2\] holds 4 elements, data has 3/);
    expectFlashInferError(() => fi.tensor([1, "x" as unknown as number]), "invalid_argument", /data\[1\]/);
    expectFlashInferError(() => fi.full([2], "1" as unknown as number), "invalid_argument", /value/);
    expectFlashInferError(() => fi.randn([2], { seed: -1 }), "invalid_argument", /seed/);
  });

  testOnDevices("a copy_ whose shapes disagree throws and writes nothing", (device) => {
    using dst = fi.full([3, 4], 9, { device });
    using src = fi.zeros([4, 3], { device });
    expectFlashInferError(() => dst.copy_(src), "invalid_argument", /broadcast/);
    expect(Array.from(dst.toArray() as Float32Array)).toEqual(new Array(12).fill(9));
  });

  test("out of memory is a FlashInferError and the process keeps going", () => {
    expectFlashInferError(() => fi.empty([2 ** 40], { device: "cpu" }), "out_of_memory", /cannot allocate/);
    expectFlashInferError(() => fi.empty([2 ** 30, 2 ** 30]), "invalid_argument", /too large/);
    using ok = fi.ones([3]);
    expect(Array.from(ok.toArray() as Float32Array)).toEqual([1, 1, 1]);
  });

  test.skipIf(!gpu)("out of device memory is a FlashInferError", () => {
    expectFlashInferError(() => fi.empty([2 ** 42], { device: "cuda:0", dtype: "uint8" }), "out_of_memory", /out of memory on cuda:0/);
    using ok = fi.ones([3], { device: "cuda:0" });
    expect(Array.from(ok.toArray() as Float32Array)).toEqual([1, 1, 1]);
  });

  test("item() needs exactly one element", () => {
    using t = fi.zeros([2]);
    expectFlashInferError(() => t.item(), "invalid_argument", /2 elements/);
  });
});

// Issue 16: tensors dropped without dispose() are freed only when the garbage collector gets to
// them; fi.scope frees everything a block made and did not return.
describe("fi.scope and fi.keep", () => {
  testOnDevices("disposes what the block made (views too) except what it returns or keeps; nests; disposes on throw", (device) => {
    let inner: fi.Tensor | null = null, view: fi.Tensor | null = null, kept: fi.Tensor | null = null;
    const out = fi.scope(() => {
      inner = fi.zeros([4], { device });
      view = inner.view([2, 2]);
      kept = fi.keep(fi.ones([3], { device }));
      const nested = fi.scope(() => ({ a: fi.full([2], 7, { device }), b: [fi.zeros([1], { device })], c: 5 }));
      expect(nested.a.disposed).toBe(false);
      return { sum: nested.a, list: [nested.b[0]!] };
    });
    expect(inner!.disposed).toBe(true);
    expect(view!.disposed).toBe(true);
    expect(kept!.disposed).toBe(false);
    expect(out.sum.disposed).toBe(false);
    expect(Array.from(out.sum.toFloat32Array())).toEqual([7, 7]);
    expect(out.list[0]!.disposed).toBe(false);
    for (const t of [kept!, out.sum, out.list[0]!]) t.dispose();
    let made: fi.Tensor | null = null;
    expect(() => fi.scope(() => {
      made = fi.zeros([2], { device });
      throw new Error("boom");
    })).toThrow("boom");
    expect(made!.disposed).toBe(true);
    expectFlashInferError(() => fi.scope((async () => fi.zeros([1], { device })) as never), "invalid_argument", /synchronous/);
  });

  testOnDevices("a wrapper planned inside a scope keeps working after it (its buffers are its own)", (device) => {
    using ws = fi.empty([8 << 20], { dtype: "uint8", device });
    const w = fi.scope(() => {
      const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws);
      w.plan({ qoIndptr: [0, 3], kvIndptr: [0, 5], numQoHeads: 2, numKvHeads: 1, headDimQk: 64, causal: true, customMask: new Array(15).fill(true) });
      return w;
    });
    using q = fi.randn([3, 2, 64], { dtype: "float16", device, seed: 1 });
    using k = fi.randn([5, 1, 64], { dtype: "float16", device, seed: 2 });
    using o = w.run(q, k, k) as fi.Tensor;
    expect(Array.from(o.toFloat32Array()).every(Number.isFinite)).toBe(true);
    w.dispose();
  });
});

describe("memory over many plan/run cycles", () => {
  // Issue 16 asks for 100,000 cycles on the GPU; on the CPU machine a bounded run catches a
  // leak of a few hundred bytes or more per cycle (native or in the bindings). Measured in a
  // child process: in the test runner's own process, other test files' heaps move RSS by
  // megabytes (seen in CI). Even there RSS moves by up to ~4 MiB between windows of 4000 cycles,
  // both ways, as the heap and the allocator's arenas grow and shrink (seen on the CPU machine and
  // in CI), and it climbs for the first ~16,000 cycles before it levels, so the test reads the
  // trend after 13,000 to settle: nine windows, the median RSS of the last three against that of
  // the first three (six windows, 24,000 cycles apart) must differ by less than 3 MiB; a leak of
  // 128 bytes a cycle adds 3 MiB there.
  test("cpu: resident memory stays flat over 36,000 decode plan/run cycles inside fi.scope, after 13,000 to settle", () => {
    const script = `
      import * as fi from ${JSON.stringify(join(import.meta.dir, "..", "lib", "index.ts"))};
      using ws = fi.empty([8 << 20], { dtype: "uint8" });
      using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws);
      using q = fi.randn([2, 4, 64], { dtype: "float16", seed: 1 });
      using cache = fi.randn([3, 2, 16, 2, 64], { dtype: "float16", seed: 2 });
      const cycle = () => fi.scope(() => {
        w.plan({ indptr: [0, 1, 3], indices: [0, 1, 2], lastPageLen: [5, 16], numQoHeads: 4, numKvHeads: 2, headDim: 64, pageSize: 16 });
        w.run(q, cache, { returnLse: true });
      });
      const rssAfter = (n) => { for (let i = 0; i < n; ++i) cycle(); Bun.gc(true); return process.memoryUsage().rss; };
      rssAfter(13000);
      console.log(JSON.stringify({ rss: Array.from({ length: 9 }, () => rssAfter(4000)) }));`;
    const r = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", env: process.env });
    expect(r.status).toBe(0);
    const { rss } = JSON.parse(r.stdout.trim().split("\n").pop()!) as { rss: number[] };
    const median3 = (xs: number[]) => [...xs].sort((x, y) => x - y)[1]!;
    withContext(`RSS after each window (MiB): ${rss.map((x) => (x / 2 ** 20).toFixed(1)).join(" ")}`, () => {
      expect(median3(rss.slice(6)) - median3(rss.slice(0, 3))).toBeLessThan(3 * 2 ** 20);
    });
  });
});


// Streams, events and CUDA graphs (GPU), and their refusal without a GPU.
import { describe, expect, test } from "bun:test";
import * as fi from "../lib/index.ts";
import { expectFlashInferError, gpu } from "./helpers.ts";

describe("without a GPU", () => {
  test.skipIf(gpu)("Stream, Event and CudaGraph refuse with a FlashInferError", () => {
    expectFlashInferError(() => new fi.Stream(), "invalid_argument", /CUDA device/);
    expectFlashInferError(() => new fi.Stream({ device: "cuda:0" }), "invalid_argument", /no CUDA device is available/);
    expectFlashInferError(() => new fi.Event({ device: "cuda:0" }), "invalid_argument", /no CUDA device/);
    expectFlashInferError(() => new fi.CudaGraph({ device: "cuda:0" }), "invalid_argument", /no CUDA device/);
  });

  test("cpu work completes synchronously", () => {
    using t = fi.full([3], 4, { device: "cpu" });
    expect(Array.from(t.toArray() as Float32Array)).toEqual([4, 4, 4]);
  });
});

describe("with a GPU", () => {
  const device = "cuda:0";

  // A test that fails if ops ignore the current stream: on a non-blocking stream (no implicit
  // ordering with the legacy default stream) kept busy for tens of milliseconds, a copy, a fill
  // and an rmsnorm wait behind the busy work; a read on the default stream meanwhile still sees
  // the old values (it would see the new ones had the ops gone to the default stream). Host
  // buffers are allocated beforehand: freeing pinned memory synchronizes the whole device. Each op
  // also runs once before the busy work: with CUDA's lazy module loading, the first launch of a
  // kernel loads its module, and that synchronizes the device (found on the H100: the first
  // rmsnorm in the process waited for the stream to drain).
  test.skipIf(!gpu)("ops launch on the current stream: behind a busy non-blocking stream, the default stream does not see them", () => {
    using s = new fi.Stream({ device, nonBlocking: true });
    using a = fi.rand([1 << 24], { device, seed: 5 });
    using b = fi.empty([1 << 24], { device });
    using src = fi.full([1024], 7, { device });
    using copied = fi.zeros([1024], { device });
    using filled = fi.zeros([1024], { device });
    using x = fi.full([4, 256], 2, { device });
    using w = fi.full([256], 3, { device });
    using normed = fi.zeros([4, 256], { device });
    using host = fi.empty([1024], { device: "cpu" });
    fi.withStream(s, () => {
      copied.copy_(src);
      filled.fill_(5);
      fi.rmsnorm(x, w, { out: normed });
      copied.fill_(0);
      filled.fill_(0);
      normed.fill_(0);
    });
    fi.synchronize(device);
    const read = (t: fi.Tensor) => {
      host.copy_(t.view([1024])); // on the default stream, then that stream is synchronized
      return Array.from(host.hostView() as Float32Array);
    };
    fi.withStream(s, () => {
      expect(fi.currentStream(device)).toBe(s);
      for (let i = 0; i < 1000; ++i) b.copy_(a); // ~128 MB each: tens of milliseconds of copies
      copied.copy_(src);
      filled.fill_(5);
      fi.rmsnorm(x, w, { out: normed });
    });
    expect(fi.currentStream(device)).toBe(fi.Stream.default(device));
    expect(s.query()).toBe(false);
    expect(read(copied).every((v) => v === 0)).toBe(true);
    expect(read(filled).every((v) => v === 0)).toBe(true);
    expect(read(normed).every((v) => v === 0)).toBe(true);
    s.synchronize();
    expect(s.query()).toBe(true);
    expect(read(copied).every((v) => v === 7)).toBe(true);
    expect(read(filled).every((v) => v === 5)).toBe(true);
    expect(read(normed).every((v) => Math.abs(v - 3) < 1e-5)).toBe(true); // 2 / rms(2) * 3
  });

  test.skipIf(!gpu)("events record, synchronize and time", () => {
    using a = fi.rand([1 << 24], { device, seed: 6 });
    using b = fi.empty([1 << 24], { device });
    using start = new fi.Event({ device });
    using end = new fi.Event({ device });
    start.record();
    for (let i = 0; i < 5; ++i) b.copy_(a);
    end.record();
    end.synchronize();
    expect(end.query()).toBe(true);
    const ms = start.elapsedMs(end);
    expect(ms).toBeGreaterThan(0);
    expect(ms).toBeLessThan(1000);
  });

  test.skipIf(!gpu)("synchronizeAsync resolves without blocking the event loop", async () => {
    using s = new fi.Stream({ device });
    using a = fi.rand([1 << 24], { device, seed: 7 });
    using b = fi.empty([1 << 24], { device });
    // About 50 ms of copies (0.13 GB each, 400 of them at ~3 TB/s) keep the stream busy.
    fi.withStream(s, () => {
      for (let i = 0; i < 400; ++i) b.copy_(a);
    });
    expect(s.query()).toBe(false);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    await s.synchronizeAsync();
    clearInterval(timer);
    expect(s.query()).toBe(true);
    expect(ticks).toBeGreaterThan(0); // timers ran while we waited
  });

  test.skipIf(!gpu)("a captured graph replays its launches on new input values", () => {
    using x = fi.rand([1000], { device, seed: 8 });
    using y = fi.empty([1000], { device, dtype: "bfloat16" });
    using z = fi.empty([1000], { device });
    using g = new fi.CudaGraph({ device });
    g.capture(() => {
      y.copy_(x); // cast to bf16
      z.copy_(y); // and back
    });
    expect(g.captured).toBe(true);
    for (const seed of [9, 10]) {
      using fresh = fi.rand([1000], { device, seed });
      x.copy_(fresh);
      g.replay();
      using expected = fresh.to({ dtype: "bfloat16" }).to({ dtype: "float32" });
      expect(Array.from(z.toArray() as Float32Array)).toEqual(Array.from(expected.toArray() as Float32Array));
    }
  });

  test.skipIf(!gpu)("a capture whose function throws leaves the device usable", () => {
    using g = new fi.CudaGraph({ device });
    expect(() => g.capture(() => { throw new Error("boom"); })).toThrow("boom");
    expect(g.captured).toBe(false);
    using t = fi.full([4], 2, { device });
    expect(Array.from(t.toArray() as Float32Array)).toEqual([2, 2, 2, 2]);
    expectFlashInferError(() => g.replay(), "invalid_argument", /nothing captured/);
  });
});

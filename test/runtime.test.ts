// Library loading, devices, errors and the timing helper.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { expectFlashInferError, gpu } from "./helpers.ts";

const root = join(import.meta.dir, "..");

/** Runs a snippet in a fresh Bun process with extra environment; returns its stdout/stderr. */
function runSnippet(code: string, env: Record<string, string>) {
  const r = Bun.spawnSync([process.execPath, "-e", code], { cwd: root, env: { ...process.env, ...env } });
  return { exitCode: r.exitCode, stdout: r.stdout.toString().trim(), stderr: r.stderr.toString() };
}

describe("library", () => {
  test("loads and reports version and backends", () => {
    expect(fi.version()).toMatch(/^\d+\.\d+\.\d+$/);
    expect(typeof fi.hasCudaBackend()).toBe("boolean");
    expect(fi.deviceCount()).toBeGreaterThanOrEqual(0);
    expect(fi.cudaAvailable()).toBe(fi.deviceCount() > 0);
    if (fi.cudaAvailable()) expect(fi.hasCudaBackend()).toBe(true);
  });

  test("a missing library is a FlashInferError that says how to build it", () => {
    const r = runSnippet(
      `import * as fi from "./lib/index.ts"; try { fi.empty([1]); console.log("loaded"); } catch (e) { console.log(e.name, e.code, e.message); }`,
      { FLASHINFER_LIBRARY: "/nonexistent/libflashinfer.so" },
    );
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain("FlashInferError library_not_found");
    expect(r.stdout).toContain("/nonexistent/libflashinfer.so");
    expect(r.stdout).toContain("npm run build");
  });
});

describe("devices", () => {
  test("defaultDevice is cuda:0 with a GPU, else cpu; FLASHINFER_DEVICE overrides", () => {
    expect(fi.defaultDevice()).toBe(gpu && !process.env.FLASHINFER_DEVICE ? "cuda:0" : (process.env.FLASHINFER_DEVICE as fi.Device) ?? "cpu");
    const r = runSnippet(`import * as fi from "./lib/index.ts"; console.log(fi.defaultDevice(), fi.empty([2]).device);`, { FLASHINFER_DEVICE: "cpu" });
    expect(r.stdout).toBe("cpu cpu");
    const bad = runSnippet(`import * as fi from "./lib/index.ts"; try { fi.defaultDevice() } catch (e) { console.log(e.code, e.message) }`, { FLASHINFER_DEVICE: "cuda:63" });
    expect(bad.stdout).toMatch(/^invalid_argument FLASHINFER_DEVICE: "cuda:63"/);
  });

  test("cpu properties", () => {
    const p = fi.deviceProperties("cpu");
    expect(p.name.length).toBeGreaterThan(0);
    expect(p.smCount).toBeGreaterThan(0);
    expect(p.totalMemory).toBeGreaterThan(0);
    expect(p.computeCapability).toEqual([0, 0]);
  });

  test.skipIf(!gpu)("cuda properties", () => {
    const p = fi.deviceProperties("cuda:0");
    expect(p.name).toMatch(/NVIDIA|H100|H200|A100/);
    expect(p.smCount).toBeGreaterThan(0);
    expect(p.totalMemory).toBeGreaterThan(1 << 30);
    expect(p.computeCapability[0]).toBeGreaterThanOrEqual(8);
    expect(p.l2CacheSize).toBeGreaterThan(1 << 20);
    expect(p.peakMemoryBandwidth).toBeGreaterThan(1e11);
    fi.synchronize("cuda:0");
  });

  test("absent devices are refused with a FlashInferError", () => {
    expectFlashInferError(() => fi.deviceProperties("cuda:99"), "invalid_argument", /cuda:99/);
    expectFlashInferError(() => fi.deviceProperties("tpu"), "invalid_argument", /expected "cpu" or "cuda:N"/);
  });
});

describe("timing helper", () => {
  test("benchDeviceTime times cpu work with the host clock", () => {
    using a = fi.rand([1 << 16], { device: "cpu", seed: 3 });
    using b = fi.empty([1 << 16], { device: "cpu" });
    const r = fi.benchDeviceTime(() => b.copy_(a), { device: "cpu", iterations: 9, warmup: 1 });
    expect(r.samplesMs.length).toBe(9);
    expect(r.medianMs).toBeGreaterThan(0);
    expect(r.minMs).toBeLessThanOrEqual(r.medianMs);
    expect(r.maxMs).toBeGreaterThanOrEqual(r.medianMs);
    expectFlashInferError(() => fi.benchDeviceTime(() => {}, { device: "cpu", iterations: 0 }), "invalid_argument", /iterations/);
  });

  test.skipIf(!gpu)("benchDeviceTime times cuda work with events, L2 flushed", () => {
    using a = fi.rand([1 << 24], { device: "cuda:0", seed: 3 });
    using b = fi.empty([1 << 24], { device: "cuda:0" });
    const r = fi.benchDeviceTime(() => b.copy_(a), { device: "cuda:0", iterations: 11 });
    expect(r.samplesMs.length).toBe(11);
    // 128 MiB moved: more than 10 us and less than 100 ms on any GPU this runs on
    expect(r.medianMs).toBeGreaterThan(0.01);
    expect(r.medianMs).toBeLessThan(100);
  });
});

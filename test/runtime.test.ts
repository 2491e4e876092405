// Library loading, devices, errors and the timing helper.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { cString, lib } from "../lib/ffi/library.ts";
import { StructLayout, i32, pointer } from "../lib/ffi/layout.ts";
import {
  ABI_LAYOUTS,
  PrefillPlanArgsLayout,
  PrefillPlanInfoLayout,
  PrefillRunArgsLayout,
  readTensorDesc,
  writePrefillPlanArgs,
  writePrefillRunArgs,
} from "../lib/ffi/structs.ts";
import { expectFlashInferError, gpu, testOnDevices } from "./helpers.ts";

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

describe("ABI struct layouts", () => {
  const offsetOf = (struct: string, field: string) => Number(lib().fi_struct_offset(cString(struct), cString(field)));

  /** The structs of flashinfer.h and their field names, in declaration order. */
  function headerStructs(): Map<string, string[]> {
    const header = readFileSync(join(root, "native", "include", "flashinfer.h"), "utf8").replace(/\/\*[\s\S]*?\*\//g, "");
    const structs = new Map<string, string[]>();
    for (const m of header.matchAll(/typedef struct (\w+) \{([^}]*)\} \1;/g)) {
      const fields = m[2]!.split(";").map((d) => d.trim()).filter((d) => d.length > 0)
        .map((d) => /(\w+)\s*(?:\[[^\]]*\])?$/.exec(d)![1]!);
      structs.set(m[1]!, fields);
    }
    return structs;
  }

  test("every struct of the header is declared field by field, and every field resolves in order", () => {
    const header = headerStructs();
    expect(header.size).toBe(6);
    expect(ABI_LAYOUTS.map((l) => l.name).sort()).toEqual([...header.keys()].sort());
    for (const layout of ABI_LAYOUTS) {
      const fields = Object.keys(layout.fields);
      expect(fields).toEqual(header.get(layout.name)!);
      expect(layout.size).toBe(Number(lib().fi_struct_size(cString(layout.name))));
      const offsets = layout.offsets as Record<string, number>;
      let end = 0;
      for (const field of fields) {
        const at = offsets[field]!;
        expect(at).toBe(offsetOf(layout.name, field));
        expect(at).toBeGreaterThanOrEqual(end); // increasing, no overlap
        end = at + (layout.fields as Record<string, { size(): number }>)[field]!.size();
        expect(end).toBeLessThanOrEqual(layout.size);
      }
    }
  });

  test("fi_struct_offset is -1 for an unknown struct or field, fi_struct_size 0", () => {
    expect(offsetOf("fi_prefill_plan_args", "no_such_field")).toBe(-1);
    expect(offsetOf("fi_no_such_struct", "batch_size")).toBe(-1);
    expect(offsetOf("fi_prefill_run_args", "q.shape")).toBe(-1);
    expect(Number(lib().fi_struct_offset(null, null))).toBe(-1);
    expect(Number(lib().fi_struct_size(cString("fi_no_such_struct")))).toBe(0);
    expect(offsetOf("fi_prefill_run_args", "plan")).toBeGreaterThan(0);
    // decode is a prefill plan with one query row per request: its structs are gone
    expect(Number(lib().fi_struct_size(cString("fi_decode_plan_args")))).toBe(0);
    expect(offsetOf("fi_decode_run_args", "plan")).toBe(-1);
  });

  test("the writers put every value where the library looks for it", () => {
    const args = writePrefillPlanArgs({
      qoIndptr: 0x800, kvIndptr: 0x1000, kvIndices: 0x2000, kvLastPageLen: 2 ** 40 + 8, batchSize: 7, numQoHeads: 32, numKvHeads: 8,
      headDimQk: 128, headDimVo: 64, pageSize: 16, qDtype: 1, kvDtype: 2, device: -1, maskMode: 1, windowLeft: -1, backend: 3,
      posEncodingMode: 2, fixedGrid: true, useTensorCores: false, fixedSplitSize: 512, disableSplitKv: true, maxTotalQo: 4097,
    });
    expect(args.byteLength).toBe(PrefillPlanArgsLayout.size);
    const raw = new DataView(args.buffer, args.byteOffset, args.byteLength);
    const at = (field: string) => offsetOf("fi_prefill_plan_args", field);
    expect(raw.getBigUint64(at("kv_last_page_len"), true)).toBe(2n ** 40n + 8n);
    expect(raw.getInt32(at("head_dim_vo"), true)).toBe(64);
    expect(raw.getInt32(at("device"), true)).toBe(-1);
    expect(raw.getInt32(at("fixed_grid"), true)).toBe(1);
    expect(raw.getInt32(at("use_tensor_cores"), true)).toBe(0);
    expect(raw.getInt32(at("fixed_split_size"), true)).toBe(512);
    expect(raw.getInt32(at("disable_split_kv"), true)).toBe(1);
    expect(raw.getInt32(at("max_total_qo"), true)).toBe(4097);
    expect(PrefillPlanArgsLayout.read(args)).toEqual({
      qo_indptr: 0x800, kv_indptr: 0x1000, kv_indices: 0x2000, kv_last_page_len: 2 ** 40 + 8, batch_size: 7, num_qo_heads: 32, num_kv_heads: 8,
      head_dim_qk: 128, head_dim_vo: 64, page_size: 16, q_dtype: 1, kv_dtype: 2, device: -1, mask_mode: 1, window_left: -1, backend: 3,
      pos_encoding_mode: 2, fixed_grid: 1, use_tensor_cores: 0, fixed_split_size: 512, disable_split_kv: 1, max_total_qo: 4097,
    });

    const plan = PrefillPlanInfoLayout.alloc();
    const planView = new DataView(plan.buffer);
    PrefillPlanInfoLayout.set(planView, "num_work", 77);
    PrefillPlanInfoLayout.set(planView, "mask_bytes", 2 ** 33);
    const desc = (address: number, shape: number[]) => ({ address, device: -1, dtype: 0, shape, strides: shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1)) });
    const run = writePrefillRunArgs({
      q: desc(64, [5, 4, 64]), k: desc(128, [9, 2, 64]), v: desc(192, [9, 2, 64]), out: desc(256, [5, 4, 64]), lse: null, customMask: desc(320, [11]),
      plan, workspace: 4096, workspaceBytes: 1 << 20, posEncodingMode: 1, smScale: 0.125, logitsSoftCap: 0, ropeScale: 1, ropeTheta: 1e4, kScale: 1, vScale: 0.5,
    });
    const rv = new DataView(run.buffer, run.byteOffset, run.byteLength);
    const runAt = (field: string) => offsetOf("fi_prefill_run_args", field);
    expect(readTensorDesc(rv, runAt("k"))).toEqual(desc(128, [9, 2, 64]));
    expect(readTensorDesc(rv, runAt("custom_mask"))).toEqual(desc(320, [11]));
    expect(rv.getBigUint64(runAt("lse"), true)).toBe(0n);
    expect(rv.getInt32(runAt("plan") + offsetOf("fi_prefill_plan_info", "num_work"), true)).toBe(77);
    expect(rv.getBigInt64(runAt("plan") + offsetOf("fi_prefill_plan_info", "mask_bytes"), true)).toBe(2n ** 33n);
    expect(rv.getBigUint64(runAt("workspace_bytes"), true)).toBe(1n << 20n);
    expect(rv.getFloat32(runAt("sm_scale"), true)).toBe(0.125);
    expect(rv.getFloat32(runAt("v_scale"), true)).toBe(0.5);
    expect(PrefillRunArgsLayout.get(rv, "rope_theta")).toBe(1e4);
  });

  test("a field the library does not know, or a kind that does not fit, is an internal error naming it", () => {
    lib();
    const unknown = new StructLayout("fi_prefill_plan_args", { qo_indptr: pointer, no_such_field: i32 });
    expectFlashInferError(() => unknown.size, "internal", /fi_prefill_plan_args has no field no_such_field/);
    const fields = { ...PrefillPlanArgsLayout.fields, batch_size: pointer }; // int32_t in the header
    const misfit = new StructLayout("fi_prefill_plan_args", fields);
    expectFlashInferError(() => misfit.offsets, "internal", /fi_prefill_plan_args\.num_qo_heads \(i32\) is at byte 36, but fi_prefill_plan_args\.batch_size ends at byte 40/);
    const unknownStruct = new StructLayout("fi_no_such_struct", { x: i32 });
    expectFlashInferError(() => unknownStruct.size, "internal", /does not know the struct fi_no_such_struct/);
  });

  test("a layout the library disagrees with fails the load, before any call", () => {
    const r = runSnippet(
      `import { StructLayout, i32 } from "./lib/ffi/layout.ts"; import * as fi from "./lib/index.ts";
       new StructLayout("fi_sampling_params", { renamed_field: i32 });
       try { fi.empty([1]); console.log("loaded"); } catch (e) { console.log(e.name, e.code, e.message); }`,
      {},
    );
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain("FlashInferError internal");
    expect(r.stdout).toContain("fi_sampling_params has no field renamed_field");
  });
});

describe("devices", () => {
  // (Device memory comes from a stream-ordered pool that keeps what it freed, so an allocation
  // need not lower the device's free memory: only the bounds are checked.)
  testOnDevices("memoryInfo: free and total bytes of the device", (device) => {
    const m = fi.memoryInfo(device);
    expect(m.total).toBeGreaterThan(device === "cpu" ? 0 : 1 << 30);
    expect(m.free).toBeGreaterThan(0);
    expect(m.free).toBeLessThanOrEqual(m.total);
    expectFlashInferError(() => fi.memoryInfo("cuda:99"), "invalid_argument", /cuda:99|device/);
  });
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

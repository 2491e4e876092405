// Loads libflashinfer.so lazily and turns native statuses into FlashInferErrors.
// This folder is the only place that imports bun:ffi.
import { dlopen, toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { FlashInferError, codeOfStatus } from "../errors.ts";
import { symbols } from "./symbols.ts";

export type Native = ReturnType<typeof dlopen<typeof symbols>>["symbols"];

/** Byte size of fi_tensor_desc; checked against the library at load. */
export const TENSOR_DESC_BYTES = 152;
export const DEVICE_PROPERTIES_BYTES = 296;
export const DECODE_PLAN_ARGS_BYTES = 64;
export const DECODE_PLAN_INFO_BYTES = 120;
export const DECODE_RUN_ARGS_BYTES = 928;
export const PREFILL_PLAN_ARGS_BYTES = 88;
export const PREFILL_PLAN_INFO_BYTES = 144;
export const PREFILL_RUN_ARGS_BYTES = 1104;
export const SAMPLING_PARAMS_BYTES = 960;

let native: Native | undefined;

export function libraryPath(): string {
  return process.env.FLASHINFER_LIBRARY || resolve(join(import.meta.dir, "..", "..", "build", "libflashinfer.so"));
}

function cString(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

/** The loaded library (loaded on first use; never closed: calling into a closed library crashes). */
export function lib(): Native {
  if (native) return native;
  const path = libraryPath();
  if (!existsSync(path)) {
    throw new FlashInferError(
      "library_not_found",
      `libflashinfer.so not found at ${path}: build it with \`npm run build\` (or set FLASHINFER_LIBRARY)`,
    );
  }
  let loaded: Native;
  try {
    loaded = dlopen(path, symbols).symbols;
  } catch (e) {
    throw new FlashInferError("library_not_found", `cannot load ${path}: ${(e as Error).message}; rebuild with \`npm run build\``);
  }
  const layouts = [
    ["fi_tensor_desc", TENSOR_DESC_BYTES],
    ["fi_device_properties", DEVICE_PROPERTIES_BYTES],
    ["fi_decode_plan_args", DECODE_PLAN_ARGS_BYTES],
    ["fi_decode_plan_info", DECODE_PLAN_INFO_BYTES],
    ["fi_decode_run_args", DECODE_RUN_ARGS_BYTES],
    ["fi_prefill_plan_args", PREFILL_PLAN_ARGS_BYTES],
    ["fi_prefill_plan_info", PREFILL_PLAN_INFO_BYTES],
    ["fi_prefill_run_args", PREFILL_RUN_ARGS_BYTES],
    ["fi_sampling_params", SAMPLING_PARAMS_BYTES],
  ] as const;
  for (const [name, size] of layouts) {
    const got = Number(loaded.fi_struct_size(cString(name)));
    if (got !== size) {
      throw new FlashInferError("internal", `${path}: ${name} is ${got} bytes, the bindings expect ${size}; rebuild with \`npm run build\``);
    }
  }
  native = loaded;
  return native;
}

/** Throws a FlashInferError with the library's message unless `status` is FI_OK. */
export function check(status: number, context?: string): void {
  if (status === 0) return;
  const message = String(lib().fi_last_error());
  throw new FlashInferError(codeOfStatus(status), context ? `${context}: ${message}` : message, status);
}

/** Zero-copy view of native memory (the caller keeps the memory alive). */
export function viewBytes(address: number, byteLength: number): ArrayBuffer {
  if (byteLength === 0) return new ArrayBuffer(0);
  return toArrayBuffer(address as Pointer, 0, byteLength);
}

/** A pointer value for a `ptr` argument (0 is NULL). */
export function asPointer(address: number): Pointer | null {
  return address === 0 ? null : (address as Pointer);
}

// Out-parameters: one reusable slot each (calls are synchronous, so no two uses overlap).
const outU64 = new BigUint64Array(2);
const outI32 = new Int32Array(2);
const outF32 = new Float32Array(1);

/** Calls `fn` with an out-pointer slot and returns what it wrote there as a number. */
export function outPointer(fn: (slot: BigUint64Array) => number, context?: string): number {
  outU64[0] = 0n;
  check(fn(outU64), context);
  return Number(outU64[0]);
}
export function outInt(fn: (slot: Int32Array) => number, context?: string): number {
  outI32[0] = 0;
  check(fn(outI32), context);
  return outI32[0]!;
}
export function outFloat(fn: (slot: Float32Array) => number, context?: string): number {
  check(fn(outF32), context);
  return outF32[0]!;
}

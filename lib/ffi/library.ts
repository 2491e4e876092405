// Loads libflashinfer.so lazily and turns native statuses into FlashInferErrors.
// This folder is the only place that touches the runtime's FFI (lib/ffi/backend.ts).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { FlashInferError, codeOfStatus } from "../errors.ts";
import { packageRoot } from "../paths.ts";
import { run, which } from "../process.ts";
import { type Library, type Pointer, ffi } from "./backend.ts";
import { symbols } from "./symbols.ts";

export type { Pointer };
export type Native = Library<typeof symbols>;

let native: Native | undefined;

/** Checks run once the library is opened, before lib() returns it (a throw fails the load). */
const loadChecks: ((loaded: Native, path: string) => void)[] = [];

/** Registers a check run at load (at once, if the library is already loaded). */
export function onLoad(fn: (loaded: Native, path: string) => void): void {
  loadChecks.push(fn);
  if (native) fn(native, libraryPath());
}


const localBuild = join(packageRoot, "build", "libflashinfer.so");
/** A library shipped in the package for this platform (scripts/pack.ts puts it there). */
const prebuilt = join(packageRoot, "prebuilt", `${process.platform}-${process.arch}`, "libflashinfer.so");

/**
 * The library to load: $FLASHINFER_LIBRARY, else a local build (build/, made by `npm run build`),
 * else the package's prebuilt one for this platform, else where a build would put it.
 */
export function libraryPath(): string {
  if (process.env.FLASHINFER_LIBRARY) return process.env.FLASHINFER_LIBRARY;
  return [localBuild, prebuilt].find((p) => existsSync(p)) ?? localBuild;
}

/**
 * No library anywhere: build one from the package's sources (as `npm run build`, CPU backend plus
 * CUDA for the GPUs present), which needs CMake and a C++ compiler. Returns whether it was built.
 */
function buildFromSource(): boolean {
  const script = join(packageRoot, "scripts", "build.ts");
  const bun = ffi.runtime === "bun" ? process.execPath : which("bun");
  if (process.env.FLASHINFER_LIBRARY || !existsSync(script) || !which("cmake") || !bun) return false;
  console.error(`flashinfer-bun: no prebuilt library for ${process.platform}-${process.arch} and no local build; building one (bun ${script})`);
  const r = run([bun, script], { cwd: packageRoot, inherit: true });
  return r.exitCode === 0 && existsSync(localBuild);
}

/** A NUL-terminated UTF-8 string for a `ptr` argument. */
export function cString(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

/** The loaded library (loaded on first use; never closed: calling into a closed library crashes). */
export function lib(): Native {
  if (native) return native;
  let path = libraryPath();
  if (!existsSync(path) && buildFromSource()) path = libraryPath();
  if (!existsSync(path)) {
    throw new FlashInferError(
      "library_not_found",
      `libflashinfer.so not found at ${path} (nor a prebuilt one at ${prebuilt}): build it with \`npm run build\` (CMake and a C++17 compiler) or set FLASHINFER_LIBRARY`,
    );
  }
  let loaded: Native;
  try {
    loaded = ffi.open(path, symbols);
  } catch (e) {
    throw new FlashInferError("library_not_found", `cannot load ${path}: ${(e as Error).message}; rebuild with \`npm run build\``);
  }
  // The struct layouts (lib/ffi/layout.ts) ask for their sizes and field offsets here.
  for (const fn of loadChecks) fn(loaded, path);
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
  return ffi.view(address, byteLength);
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

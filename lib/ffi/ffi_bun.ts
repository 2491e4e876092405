// bun:ffi behind lib/ffi/backend.ts's interface. Calls go straight to bun's generated stubs
// (typed arrays, addresses and null are all valid pointer arguments there); only C-string
// results are turned into strings.
import { dlopen, ptr, toArrayBuffer, type Pointer as BunPointer } from "bun:ffi";
import type { Ffi, Library, SymbolSpec } from "./backend.ts";

export const ffi: Ffi = {
  runtime: "bun",
  open<T extends Record<string, SymbolSpec>>(path: string, symbols: T): Library<T> {
    const raw = dlopen(path, symbols as never).symbols as Record<string, (...args: unknown[]) => unknown>;
    const out: Record<string, (...args: unknown[]) => unknown> = {};
    for (const [name, spec] of Object.entries(symbols)) {
      const f = raw[name]!;
      out[name] = spec.returns === "cstring" ? (...args: unknown[]) => String(f(...args)) : f;
    }
    return out as Library<T>;
  },
  address: (view) => ptr(view as Uint8Array),
  view: (address, byteLength) => toArrayBuffer(address as BunPointer, 0, byteLength),
};

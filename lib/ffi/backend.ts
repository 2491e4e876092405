// The foreign-function interface of the runtime we run on: bun:ffi under Bun, Deno.dlopen under
// Deno, behind one small interface. Only lib/ffi/ imports this; nothing outside it knows which
// runtime it is on. Symbol tables use these type names (lib/ffi/symbols.ts).
export type NativeType = "i32" | "u32" | "i64" | "u64" | "f32" | "f64" | "ptr" | "cstring";
export interface SymbolSpec {
  readonly args: readonly NativeType[];
  readonly returns: NativeType;
}

/** A native address as a number (0, or null where a pointer is returned, is NULL). */
export type Pointer = number;

/** What a pointer argument takes: a typed array (its data), an address, or null. */
type ArgOf<T> = T extends "ptr" ? ArrayBufferView | Pointer | null : T extends "i64" | "u64" ? number | bigint : number;
type ReturnOf<T> = T extends "cstring" ? string : T extends "ptr" ? Pointer | null : T extends "i64" | "u64" ? number | bigint : number;
type ArgsOf<A extends readonly NativeType[]> = { -readonly [K in keyof A]: ArgOf<A[K]> };
type Fn<S extends SymbolSpec> = (...args: ArgsOf<S["args"]>) => ReturnOf<S["returns"]>;
export type Library<T extends Record<string, SymbolSpec>> = { [K in keyof T]: Fn<T[K]> };

export interface Ffi {
  readonly runtime: "bun" | "deno";
  /** Opens a shared library with these symbols (throws when it or a symbol is missing). */
  open<T extends Record<string, SymbolSpec>>(path: string, symbols: T): Library<T>;
  /** The address of a typed array's data (valid while the array lives). */
  address(view: ArrayBufferView): Pointer;
  /** Zero-copy view of native memory (the caller keeps the memory alive). */
  view(address: Pointer, byteLength: number): ArrayBuffer;
}

const onDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
export const ffi: Ffi = onDeno ? (await import("./ffi_deno.ts")).ffi : (await import("./ffi_bun.ts")).ffi;

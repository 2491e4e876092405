// Deno.dlopen behind lib/ffi/backend.ts's interface. Deno's pointer parameters take pointer
// objects: each call converts typed arrays, addresses and null; pointer results come back as
// addresses (null for NULL), C strings as strings.
import type { Ffi, Library, NativeType, SymbolSpec } from "./backend.ts";

// The part of Deno's FFI used here (typed locally: the project type-checks against Bun's types).
interface DenoPointers {
  of(view: ArrayBufferView): unknown;
  create(address: bigint): unknown;
  value(pointer: unknown): bigint | number;
}
interface DenoFfi {
  dlopen(path: string, symbols: Record<string, { parameters: string[]; result: string }>): { symbols: Record<string, (...args: unknown[]) => unknown> };
  UnsafePointer: DenoPointers;
  UnsafePointerView: { getCString(pointer: unknown): string; getArrayBuffer(pointer: unknown, byteLength: number, offset?: number): ArrayBuffer };
}
const Deno = (globalThis as unknown as { Deno: DenoFfi }).Deno;

const DENO_TYPE: Record<NativeType, string> = { i32: "i32", u32: "u32", i64: "i64", u64: "u64", f32: "f32", f64: "f64", ptr: "pointer", cstring: "pointer" };

function toPointer(x: unknown): unknown {
  if (x === null || x === undefined || x === 0 || x === 0n) return null;
  if (ArrayBuffer.isView(x)) return Deno.UnsafePointer.of(x);
  if (typeof x === "number" || typeof x === "bigint") return Deno.UnsafePointer.create(BigInt(x));
  throw new TypeError(`expected a typed array, an address or null for a pointer argument, got ${typeof x}`);
}

export const ffi: Ffi = {
  runtime: "deno",
  open<T extends Record<string, SymbolSpec>>(path: string, symbols: T): Library<T> {
    const specs: Record<string, { parameters: string[]; result: string }> = {};
    for (const [name, s] of Object.entries(symbols)) specs[name] = { parameters: s.args.map((a) => DENO_TYPE[a]), result: DENO_TYPE[s.returns] };
    const raw = Deno.dlopen(path, specs).symbols;
    const out: Record<string, (...args: unknown[]) => unknown> = {};
    for (const [name, s] of Object.entries(symbols)) {
      const f = raw[name]!;
      const pointerArgs = s.args.map((a) => a === "ptr");
      const call = (...args: unknown[]) => f(...args.map((x, i) => (pointerArgs[i] ? toPointer(x) : x)));
      if (s.returns === "cstring") out[name] = (...args) => {
        const p = call(...args);
        return p === null ? "" : Deno.UnsafePointerView.getCString(p);
      };
      else if (s.returns === "ptr") out[name] = (...args) => {
        const p = call(...args);
        return p === null ? null : Number(Deno.UnsafePointer.value(p));
      };
      else out[name] = call;
    }
    return out as Library<T>;
  },
  address: (view) => (view.byteLength === 0 ? 0 : Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)))),
  view: (address, byteLength) => Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(BigInt(address)), byteLength),
};

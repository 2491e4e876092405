// The FFI symbol table (lib/ffi/symbols.ts) against the C ABI it binds: every FI_API function
// of native/include/flashinfer.h, parsed here, has an entry with the same argument and return
// types, and no entry names a function the header lacks. (The struct layouts are checked field by
// field when the library loads: lib/ffi/layout.ts.)
import { expect, test } from "bun:test";
import type { NativeType } from "../lib/ffi/backend.ts";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { symbols } from "../lib/ffi/symbols.ts";

const C_TO_FFI: Record<string, NativeType> = { int32_t: "i32", int64_t: "i64", uint32_t: "u32", uint64_t: "u64", double: "f64", float: "f32" };

/** An FFI type for one C parameter or return type. */
function ffiOf(cType: string, isReturn: boolean): NativeType {
  const t = cType.replace(/\bconst\b/g, "").replace(/\s+/g, " ").trim();
  if (isReturn && t === "char*") return "cstring";
  if (t.includes("*")) return "ptr";
  const f = C_TO_FFI[t];
  if (f === undefined) throw new Error(`no FFI type for C type "${cType}"`);
  return f;
}

function headerFunctions(): Map<string, { args: NativeType[]; returns: NativeType }> {
  const text = readFileSync(join(import.meta.dir, "..", "native", "include", "flashinfer.h"), "utf8")
    .replace(/\/\*[\s\S]*?\*\//g, "")
    .replace(/\/\/.*$/gm, "");
  const out = new Map<string, { args: NativeType[]; returns: NativeType }>();
  for (const m of text.matchAll(/FI_API\s+([^;(]+?)\s*\b(fi_\w+)\s*\(([^)]*)\)\s*;/g)) {
    const [, ret, name, params] = m;
    const list = params!.trim() === "void" || params!.trim() === "" ? [] : params!.split(",");
    // A parameter's type is its declaration without the trailing name ("const fi_tensor_desc* dst").
    const args = list.map((p) => ffiOf(p.trim().replace(/\s*\b\w+$/, "").replace(/\*\s*$/, "*"), false));
    out.set(name!, { args, returns: ffiOf(ret!.replace(/\s*\*/g, "*"), true) });
  }
  return out;
}

test("every FI_API function of flashinfer.h is bound with its argument and return types, and nothing else is", () => {
  const header = headerFunctions();
  expect(header.size).toBeGreaterThan(50);
  const bound = symbols as Record<string, { args: readonly NativeType[]; returns: NativeType }>;
  for (const [name, decl] of header) {
    const s = bound[name];
    expect(s === undefined ? `${name}: not in lib/ffi/symbols.ts` : name).toBe(name);
    expect({ name, args: [...s!.args] }).toEqual({ name, args: decl.args });
    expect({ name, returns: s!.returns }).toEqual({ name, returns: decl.returns });
  }
  for (const name of Object.keys(bound)) expect(header.has(name) ? name : `${name}: not declared in flashinfer.h`).toBe(name);
});

test("setInt64 writes numbers as two 32-bit halves: equal to BigInt writes over the safe-integer range, and bigints as is", async () => {
  const { setInt64 } = await import("../lib/ffi/layout.ts");
  const v = new DataView(new ArrayBuffer(16));
  const values = [0, 1, -1, 2 ** 31, -(2 ** 31), 2 ** 32 - 1, 2 ** 32, -(2 ** 32), 2 ** 32 + 1, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 0x7fff_ffff_f000];
  for (let i = 0; i < 200; ++i) values.push(Math.round((Math.random() * 2 - 1) * Number.MAX_SAFE_INTEGER), Math.floor(Math.random() * 2 ** 40));
  for (const x of values) {
    setInt64(v, 0, x);
    v.setBigInt64(8, BigInt(x), true);
    expect([v.getUint32(0, true), v.getUint32(4, true)]).toEqual([v.getUint32(8, true), v.getUint32(12, true)]);
    expect(Number(v.getBigInt64(0, true))).toBe(x);
  }
  setInt64(v, 0, -(2n ** 63n));
  expect(v.getBigInt64(0, true)).toBe(-(2n ** 63n));
});

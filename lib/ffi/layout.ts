// Byte layouts of the C ABI's structs (native/include/flashinfer.h). A StructLayout names the C
// struct and its fields (C names, declaration order) with their kinds; the offsets and the size
// come from the library (fi_struct_offset, fi_struct_size), never from numbers typed here. Every
// layout declared before the library loads is resolved at load, later ones on first use; a field
// the library does not know, or kinds that do not tile the struct as C lays it out (a field that
// changed type), throw FlashInferError("internal") naming the struct and field, so a changed
// header fails the load instead of corrupting a call.
import { FlashInferError } from "../errors.ts";
import { cString, lib, libraryPath, onLoad, type Native } from "./library.ts";

/** How a field is stored: its size and alignment in bytes, and how to write and read it. */
export interface FieldKind<In = unknown, Out = In> {
  readonly name: string;
  /** Byte size (a nested struct's needs the library: call only after it loads). */
  size(): number;
  readonly align: number;
  write(v: DataView, at: number, value: In): void;
  read(v: DataView, at: number): Out;
}

type AnyKind = FieldKind<any, any>;
export type FieldKinds = Record<string, AnyKind>;
export type InOf<K> = K extends FieldKind<infer I, any> ? I : never;
export type OutOf<K> = K extends FieldKind<any, infer O> ? O : never;

/** Values for every field; fields named reserved* may be left out (written as 0). */
export type StructValues<F extends FieldKinds> =
  & { [K in keyof F as K extends `reserved${string}` ? never : K]: InOf<F[K]> }
  & { [K in keyof F as K extends `reserved${string}` ? K : never]?: InOf<F[K]> };

/**
 * Writes a 64-bit integer field (int64, uint64 or a pointer: the same 8 bytes): a number (an
 * integer below 2^53 in magnitude, as every size, stride and address here is) as its two 32-bit
 * halves, a bigint as is (setBigInt64 wraps modulo 2^64, so uint64 values above 2^63 keep their
 * bits). The hot path of every call: a BigInt per field cost a tensor descriptor (17 such
 * fields) about 2 us.
 */
export function setInt64(v: DataView, at: number, x: number | bigint): void {
  if (typeof x === "bigint") {
    v.setBigInt64(at, x, true);
    return;
  }
  const high = Math.floor(x / 4294967296);
  v.setUint32(at, x - high * 4294967296, true);
  v.setInt32(at + 4, high, true);
}

export const i32: FieldKind<number> = {
  name: "i32", size: () => 4, align: 4,
  write: (v, at, x) => v.setInt32(at, x, true),
  read: (v, at) => v.getInt32(at, true),
};
export const f32: FieldKind<number> = {
  name: "f32", size: () => 4, align: 4,
  write: (v, at, x) => v.setFloat32(at, x, true),
  read: (v, at) => v.getFloat32(at, true),
};
export const f64: FieldKind<number> = {
  name: "f64", size: () => 8, align: 8,
  write: (v, at, x) => v.setFloat64(at, x, true),
  read: (v, at) => v.getFloat64(at, true),
};
/** uint64_t; reads as a number (byte counts and offsets stay far below 2^53). */
export const u64: FieldKind<number | bigint, number> = {
  name: "u64", size: () => 8, align: 8,
  write: setInt64,
  read: (v, at) => Number(v.getBigUint64(at, true)),
};
export const i64: FieldKind<number | bigint, number> = {
  name: "i64", size: () => 8, align: 8,
  write: setInt64,
  read: (v, at) => Number(v.getBigInt64(at, true)),
};
/** A pointer as an address (0 = NULL); reads back as a BigInt above 2^53. */
export const pointer: FieldKind<number | bigint, number | bigint> = {
  name: "pointer", size: () => 8, align: 8,
  write: setInt64,
  read: (v, at) => {
    const x = v.getBigUint64(at, true);
    return x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x;
  },
};

/** char[n]: a string of at most n - 1 UTF-8 bytes, NUL-terminated (reads up to the first NUL). */
export function chars(n: number): FieldKind<string> {
  return {
    name: `char[${n}]`, size: () => n, align: 1,
    write: (v, at, s) => {
      const dst = new Uint8Array(v.buffer, v.byteOffset + at, n);
      dst.fill(0);
      const src = new TextEncoder().encode(s);
      dst.set(src.subarray(0, n - 1));
    },
    read: (v, at) => {
      const b = new Uint8Array(v.buffer, v.byteOffset + at, n);
      const end = b.indexOf(0);
      return new TextDecoder().decode(b.subarray(0, end < 0 ? n : end));
    },
  };
}

/** T[n]: element i at the member's offset + i * the element's size; missing elements write 0. */
export function array<I, O>(element: FieldKind<I, O>, n: number, zero: I): FieldKind<readonly I[], O[]> {
  return {
    name: `${element.name}[${n}]`, size: () => n * element.size(), align: element.align,
    write: (v, at, xs) => {
      const step = element.size();
      for (let i = 0; i < n; ++i) element.write(v, at + i * step, xs[i] ?? zero);
    },
    read: (v, at) => {
      const step = element.size();
      return Array.from({ length: n }, (_, i) => element.read(v, at + i * step));
    },
  };
}

/** A nested struct as raw bytes (written from, and read into a copy of, a buffer of its size). */
export function bytesOf(layout: { readonly name: string; readonly size: number; readonly align: number }): FieldKind<Uint8Array> {
  return {
    name: layout.name, size: () => layout.size, align: layout.align,
    write: (v, at, bytes) => {
      if (bytes.byteLength !== layout.size) {
        throw new FlashInferError("internal", `${layout.name}: expected ${layout.size} bytes, got ${bytes.byteLength}`);
      }
      new Uint8Array(v.buffer, v.byteOffset + at, layout.size).set(bytes);
    },
    read: (v, at) => new Uint8Array(v.buffer, v.byteOffset + at, layout.size).slice(),
  };
}

const declared: { resolve(): void }[] = [];
// While the library loads, layouts resolve against it (lib() would load it again).
let loading: { native: Native; path: string } | undefined;

onLoad((native, path) => {
  loading = { native, path };
  try {
    for (const layout of declared) layout.resolve();
  } finally {
    loading = undefined;
  }
});

const roundUp = (x: number, a: number) => Math.ceil(x / a) * a;

/** One C struct: field offsets and size from the library, typed access, a reusable buffer. */
export class StructLayout<F extends FieldKinds> {
  readonly name: string;
  readonly fields: F;
  /** Alignment: the largest of the fields'. */
  readonly align: number;
  #offsets: Readonly<Record<keyof F, number>> | undefined;
  #size = 0;
  #buffer: Uint8Array | undefined;
  #view: DataView | undefined;

  constructor(name: string, fields: F) {
    this.name = name;
    this.fields = fields;
    this.align = Math.max(1, ...Object.values(fields).map((k) => k.align));
    declared.push(this);
  }

  /** Asks the library for the size and every field's offset (once); throws naming what it lacks. */
  resolve(): void {
    if (this.#offsets) return;
    const { native, path } = loading ?? { native: lib(), path: libraryPath() };
    const fail = (what: string) =>
      new FlashInferError("internal", `${path}: ${what}; the bindings (lib/ffi/structs.ts) and the library disagree: rebuild with \`npm run build\``);
    const name = cString(this.name);
    const size = Number(native.fi_struct_size(name));
    if (size === 0) throw fail(`the library does not know the struct ${this.name}`);
    const offsets: Record<string, number> = {};
    let end = 0, before = "the start";
    for (const [field, kind] of Object.entries(this.fields)) {
      const at = Number(native.fi_struct_offset(name, cString(field)));
      if (at < 0) throw fail(`${this.name} has no field ${field}`);
      // C places each field at the next offset its alignment allows: anything else means a kind
      // here does not match the header (a field changed type, or one is missing in between).
      if (at !== roundUp(end, kind.align)) {
        throw fail(`${this.name}.${field} (${kind.name}) is at byte ${at}, but ${before} ends at byte ${end}`);
      }
      offsets[field] = at;
      end = at + kind.size();
      before = `${this.name}.${field}`;
    }
    if (roundUp(end, this.align) !== size) throw fail(`${this.name} is ${size} bytes, but its fields end at byte ${end}`);
    this.#size = size;
    this.#offsets = offsets as Record<keyof F, number>;
  }

  /** Byte offset of every field. */
  get offsets(): Readonly<Record<keyof F, number>> {
    if (!this.#offsets) this.resolve();
    return this.#offsets!;
  }
  get size(): number {
    if (!this.#offsets) this.resolve();
    return this.#size;
  }
  offset(field: keyof F): number {
    return this.offsets[field];
  }

  /** A new zeroed buffer of the struct's size. */
  alloc(): Uint8Array {
    return new Uint8Array(this.size);
  }
  /** The struct's reusable buffer (calls are synchronous, so no two uses overlap). */
  get buffer(): Uint8Array {
    return (this.#buffer ??= this.alloc());
  }
  get view(): DataView {
    return (this.#view ??= new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength));
  }

  set<K extends keyof F>(v: DataView, field: K, value: InOf<F[K]>, base = 0): void {
    this.fields[field]!.write(v, base + this.offsets[field], value);
  }
  get<K extends keyof F>(v: DataView, field: K, base = 0): OutOf<F[K]> {
    return this.fields[field]!.read(v, base + this.offsets[field]);
  }

  /** Zeroes the reusable buffer, writes every field (reserved ones may be left out), returns it. */
  write(values: StructValues<F>): Uint8Array {
    const bytes = this.buffer, v = this.view, offsets = this.offsets;
    bytes.fill(0);
    const given = values as Record<string, unknown>;
    for (const field in this.fields) {
      const value = given[field];
      if (value === undefined) {
        if (field.startsWith("reserved")) continue;
        throw new FlashInferError("internal", `${this.name}.${field}: no value given`);
      }
      this.fields[field]!.write(v, offsets[field], value);
    }
    return bytes;
  }

  /** Every field of a struct held in `bytes` (a buffer of this struct's size). */
  read(bytes: Uint8Array): { [K in keyof F]: OutOf<F[K]> } {
    if (bytes.byteLength !== this.size) {
      throw new FlashInferError("internal", `${this.name}: expected a buffer of ${this.size} bytes, got ${bytes.byteLength}`);
    }
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out: Record<string, unknown> = {};
    for (const field of Object.keys(this.fields)) out[field] = this.get(v, field);
    return out as { [K in keyof F]: OutOf<F[K]> };
  }
}

// A safetensors reader and writer (the format of Hugging Face checkpoints): an 8-byte little-endian
// header length, a JSON header naming each tensor's dtype, shape and byte range in the data that
// follows, then the data. The reader maps the file (Bun.mmap: the OS pages it in on first touch),
// checks the whole header before handing out anything, and copies each tensor once into library
// memory (page-locked on CUDA machines) on load.
import { readFileSync, writeFileSync } from "node:fs";
import { itemsize } from "../../lib/dtype.ts";
import * as fi from "../../lib/index.ts";

const DTYPES: Record<string, fi.DType> = {
  F64: "float64", F32: "float32", F16: "float16", BF16: "bfloat16", F8_E4M3: "float8_e4m3fn", F8_E5M2: "float8_e5m2",
  I64: "int64", I32: "int32", U8: "uint8", BOOL: "bool",
};
const NAMES = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v, k])) as Record<fi.DType, string>;
const MAX_HEADER = 100 << 20;

export interface TensorEntry {
  dtype: fi.DType;
  shape: number[];
  /** Byte range in the data section. */
  begin: number;
  end: number;
}

function bad(path: string, what: string): never {
  throw new fi.FlashInferError("invalid_argument", `${path}: not a valid safetensors file: ${what}`);
}

/** An opened safetensors file: its entries, its metadata, and tensors loaded on demand. */
export class SafetensorsFile {
  readonly path: string;
  readonly entries: ReadonlyMap<string, TensorEntry>;
  readonly metadata: Readonly<Record<string, string>>;
  readonly #bytes: Uint8Array;
  readonly #dataStart: number;

  private constructor(path: string, bytes: Uint8Array) {
    this.path = path;
    this.#bytes = bytes;
    if (bytes.length < 8) bad(path, `${bytes.length} bytes, shorter than the 8-byte header length`);
    const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
    if (headerLen > Math.min(MAX_HEADER, bytes.length - 8)) bad(path, `header length ${headerLen} exceeds the file (${bytes.length} bytes) or 100 MiB`);
    this.#dataStart = 8 + headerLen;
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)));
    } catch (e) {
      bad(path, `header is not UTF-8 JSON (${(e as Error).message})`);
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) bad(path, "header is not a JSON object");
    const dataLen = bytes.length - this.#dataStart;
    const entries = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") {
        const ok = typeof value === "object" && value !== null && Object.values(value).every((v) => typeof v === "string");
        if (!ok) bad(path, "__metadata__ must map names to strings");
        metadata = value as Record<string, string>;
        continue;
      }
      const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const dtype = typeof v?.dtype === "string" ? DTYPES[v.dtype] : undefined;
      if (!dtype) bad(path, `tensor "${name}": dtype ${JSON.stringify(v?.dtype)} is not one of ${Object.keys(DTYPES).join(", ")}`);
      const shape = v.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) bad(path, `tensor "${name}": shape must be a list of sizes`);
      const off = v.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[0] > off[1] || off[1] > dataLen)
        bad(path, `tensor "${name}": data_offsets ${JSON.stringify(off)} must be [begin, end] within the ${dataLen} data bytes`);
      const want = shape.reduce((a: number, d: number) => a * d, 1) * itemsize(dtype);
      if (off[1] - off[0] !== want) bad(path, `tensor "${name}": ${off[1] - off[0]} bytes for ${dtype} [${shape}], which needs ${want}`);
      entries.set(name, { dtype, shape: [...shape], begin: off[0], end: off[1] });
    }
    const sorted = [...entries].sort((a, b) => a[1].begin - b[1].begin);
    for (let i = 1; i < sorted.length; ++i) {
      const [prevName, prev] = sorted[i - 1]!, [name, cur] = sorted[i]!;
      if (cur.begin < prev.end) bad(path, `tensors "${prevName}" and "${name}" overlap`);
    }
    this.entries = entries;
    this.metadata = metadata;
  }

  /** Opens (maps, under Bun; reads, elsewhere) and checks a file. */
  static open(path: string): SafetensorsFile {
    let bytes: Uint8Array;
    try {
      bytes = typeof Bun !== "undefined" ? Bun.mmap(path) : readFileSync(path);
    } catch (e) {
      throw new fi.FlashInferError("invalid_argument", `${path}: cannot open (${(e as Error).message})`);
    }
    return new SafetensorsFile(path, bytes);
  }

  /** Tensor `name` as a new tensor on `device` (default cpu). */
  load(name: string, opts: { device?: fi.Device } = {}): fi.Tensor {
    const e = this.entries.get(name);
    if (!e) throw new fi.FlashInferError("invalid_argument", `${this.path}: no tensor "${name}"`);
    const host = fi.empty(e.shape, { dtype: e.dtype, device: "cpu" });
    try {
      if (e.end > e.begin) {
        const view = host.hostView();
        new Uint8Array(view.buffer, view.byteOffset, host.nbytes).set(this.#bytes.subarray(this.#dataStart + e.begin, this.#dataStart + e.end));
      }
      if ((opts.device ?? "cpu") === "cpu") return host;
      const moved = host.to(opts.device!);
      host.dispose();
      return moved;
    } catch (err) {
      host.dispose();
      throw err;
    }
  }
}

/** Writes tensors (any device; read back through the host) and string metadata as a safetensors file. */
export function writeSafetensors(path: string, tensors: Record<string, fi.Tensor>, metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    using onHost = t.to("cpu");
    using host = onHost.contiguous();
    const view = host.hostView();
    const bytes = new Uint8Array(view.buffer, view.byteOffset, host.nbytes).slice();
    header[name] = { dtype: NAMES[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  // The header is padded with spaces to a multiple of 8 bytes, so the data starts aligned.
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  writeFileSync(path, out);
}

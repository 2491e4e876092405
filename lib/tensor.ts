// The small tensor runtime FlashInfer borrows from PyTorch: strided tensors on cpu (page-locked
// host memory when a GPU is present) or cuda:N (stream-ordered pool memory), views, copies,
// casts, fills and seeded random fills.
import type { Pointer } from "./ffi/backend.ts";
import { type Device, defaultDevice, deviceIndex, parseDevice } from "./device.ts";
import {
  type DType,
  type NaturalArray,
  checkDType,
  dtypeCode,
  dtypeOfTypedArray,
  itemsize,
  naturalArray,
} from "./dtype.ts";
import { FlashInferError, argCheck, checkOptions, int32ArrayOf } from "./errors.ts";
import { asPointer, check, lib, outPointer, viewBytes } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";

const MAX_DIMS = 8;

// ---------------------------------------------------------------- storage

/** A native allocation shared by a tensor and its views; freed when the last user lets go. */
class Storage {
  #refs = 1;
  constructor(
    readonly address: number,
    readonly nbytes: number,
    readonly device: Device,
    readonly pinned: boolean,
  ) {}

  static allocate(nbytes: number, device: Device): Storage {
    if (device === "cpu") {
      const out = new BigUint64Array(1);
      const pinned = new Int32Array(1);
      check(lib().fi_host_malloc(nbytes, out, pinned), "empty");
      return new Storage(Number(out[0]), nbytes, device, pinned[0] === 1);
    }
    // Allocated (and later freed) on the legacy default stream, which orders against every
    // stream this library creates, so no stream can still be using memory the pool hands out.
    const address = outPointer((slot) => lib().fi_device_malloc(deviceIndex(device), nbytes, null, slot), "empty");
    return new Storage(address, nbytes, device, false);
  }

  get alive(): boolean {
    return this.#refs > 0;
  }
  retain(): this {
    this.#refs++;
    return this;
  }
  release(): void {
    if (this.#refs <= 0) return;
    if (--this.#refs > 0) return;
    if (this.address === 0) return;
    const p = this.address as Pointer;
    if (this.device === "cpu") lib().fi_host_free(p, this.pinned ? 1 : 0);
    else lib().fi_device_free(deviceIndex(this.device), p, null);
  }
}

// Open fi.scope() calls, innermost last: the tensors created inside each, to dispose at its end.
const scopes: Set<Tensor>[] = [];

// A tensor that is garbage-collected without dispose() still returns its memory.
const tensorRegistry = new FinalizationRegistry<Storage>((s) => s.release());
// A zero-copy host view keeps its storage alive until the view's buffer is collected.
const viewRegistry = new FinalizationRegistry<Storage>((s) => s.release());

// ---------------------------------------------------------------- shape helpers

function checkShape(shape: unknown, what = "shape"): number[] {
  argCheck(Array.isArray(shape), () => `${what}: expected an array of sizes, got ${String(shape)}`);
  argCheck(shape.length <= MAX_DIMS, () => `${what}: at most ${MAX_DIMS} dimensions, got ${shape.length}`);
  for (let d = 0; d < shape.length; ++d) {
    const n = shape[d];
    argCheck(Number.isSafeInteger(n) && n >= 0, () => `${what}[${d}]: expected a non-negative integer, got ${String(n)}`);
  }
  return [...shape] as number[];
}

function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; --d) {
    strides[d] = s;
    s *= shape[d]!;
  }
  return strides;
}

function product(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

function normalizeDim(dim: number, ndim: number, what = "dim"): number {
  argCheck(Number.isInteger(dim) && dim >= -ndim && dim < ndim, () => `${what}: expected an integer in [${-ndim}, ${ndim - 1}], got ${String(dim)}`);
  return dim < 0 ? dim + ndim : dim;
}

// ---------------------------------------------------------------- tensor

export interface TensorOptions {
  /** Default "float32". */
  dtype?: DType;
  /** Default fi.defaultDevice(). */
  device?: Device | string;
}

export interface ToOptions {
  device?: Device | string;
  dtype?: DType;
  /** Cross-device copies wait for completion unless true (then synchronize the stream yourself). */
  nonBlocking?: boolean;
}

const descA = new TensorDescBuffer();
const descB = new TensorDescBuffer();

export class Tensor {
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Offset of element 0 from the start of the storage, in elements. */
  readonly storageOffset: number;
  #storage: Storage | null;

  /** @internal use fi.empty / fi.tensor / views; this adopts one reference to `storage`. */
  constructor(storage: Storage, shape: readonly number[], strides: readonly number[], offset: number, dtype: DType) {
    this.#storage = storage;
    // Own copies (a caller's array may change later); not frozen: Object.freeze was a quarter of
    // an op's host time on the GPU machine (every op makes views and outputs), and the fields
    // are readonly to TypeScript.
    this.shape = [...shape];
    this.strides = [...strides];
    this.storageOffset = offset;
    this.dtype = dtype;
    this.device = storage.device;
    tensorRegistry.register(this, storage, this);
    scopes[scopes.length - 1]?.add(this);
  }

  get ndim(): number {
    return this.shape.length;
  }
  get numel(): number {
    return product(this.shape);
  }
  get nbytes(): number {
    return this.numel * itemsize(this.dtype);
  }
  get itemsize(): number {
    return itemsize(this.dtype);
  }
  get disposed(): boolean {
    return this.#storage === null;
  }
  /** Address of element 0 (a device pointer for CUDA tensors). */
  get dataPtr(): number {
    return this.#live().address + this.storageOffset * itemsize(this.dtype);
  }

  #live(): Storage {
    if (this.#storage === null) throw new FlashInferError("invalid_argument", "tensor: used after dispose()");
    return this.#storage;
  }

  /** @internal the fi_tensor_desc fields of this tensor. */
  descFields() {
    return { address: this.dataPtr, device: deviceIndex(this.device), dtype: dtypeCode(this.dtype), shape: this.shape, strides: this.strides };
  }

  isContiguous(): boolean {
    let expected = 1;
    for (let d = this.ndim - 1; d >= 0; --d) {
      if (this.shape[d] !== 1 && this.strides[d] !== expected) return false;
      expected *= this.shape[d]!;
    }
    return true;
  }

  /** A new tensor over the same memory. */
  #alias(shape: readonly number[], strides: readonly number[], offset = this.storageOffset): Tensor {
    return new Tensor(this.#live().retain(), shape, strides, offset, this.dtype);
  }

  // ------------------------------------------------------------ views

  /**
   * @internal One view over the rows of `a` followed by those of `b` when `b` starts where `a`
   * ends in the same memory (same dtype, strides and row shape), else null: two slices of one
   * batch tensor join without a copy.
   */
  static adjacentRows(a: Tensor, b: Tensor): Tensor | null {
    if (a.#storage === null || a.#storage !== b.#storage || a.dtype !== b.dtype || a.ndim < 1 || a.ndim !== b.ndim) return null;
    if (a.strides.some((s, d) => s !== b.strides[d]) || a.shape.some((n, d) => d > 0 && n !== b.shape[d])) return null;
    if (b.storageOffset !== a.storageOffset + a.shape[0]! * a.strides[0]!) return null;
    return a.#alias([a.shape[0]! + b.shape[0]!, ...a.shape.slice(1)], a.strides);
  }

  /** Same memory, new shape (one size may be -1); the tensor must be contiguous. */
  view(shape: readonly number[]): Tensor {
    const target = this.#inferShape(shape);
    argCheck(this.isContiguous(), () => `view: tensor of shape [${this.shape}] is not contiguous; use reshape() or contiguous()`);
    return this.#alias(target, contiguousStrides(target));
  }

  /** view() when the memory allows it, else a contiguous copy in the new shape. */
  reshape(shape: readonly number[]): Tensor {
    const target = this.#inferShape(shape);
    if (this.isContiguous()) return this.#alias(target, contiguousStrides(target));
    const c = this.contiguous();
    try {
      return c.view(target);
    } finally {
      c.dispose();
    }
  }

  #inferShape(shape: readonly number[]): number[] {
    argCheck(Array.isArray(shape), "shape: expected an array of sizes");
    const free = shape.indexOf(-1);
    argCheck(shape.lastIndexOf(-1) === free, "shape: only one size may be -1");
    const known = shape.map((s, d) => (d === free ? 1 : s));
    checkShape(known);
    const rest = product(known);
    const out = [...known];
    if (free >= 0) {
      argCheck(rest > 0 && this.numel % rest === 0, () => `shape: [${shape}] does not fit ${this.numel} elements`);
      out[free] = this.numel / rest;
    }
    argCheck(product(out) === this.numel, () => `shape: [${shape}] has ${product(out)} elements, the tensor has ${this.numel}`);
    return out;
  }

  /** Elements start <= i < end along `dim` (Python-style negative and clamped bounds), every `step`-th. */
  slice(dim: number, start = 0, end = Number.MAX_SAFE_INTEGER, step = 1): Tensor {
    const d = normalizeDim(dim, this.ndim);
    argCheck(Number.isInteger(start) && Number.isInteger(end), "slice: start and end must be integers");
    argCheck(Number.isInteger(step) && step > 0, () => `slice: step must be a positive integer, got ${String(step)}`);
    const n = this.shape[d]!;
    const clamp = (i: number) => Math.min(Math.max(i < 0 ? i + n : i, 0), n);
    const s = clamp(start), e = Math.max(clamp(end), s);
    const shape = [...this.shape];
    const strides = [...this.strides];
    shape[d] = Math.ceil((e - s) / step);
    strides[d] = this.strides[d]! * step;
    return this.#alias(shape, strides, this.storageOffset + s * this.strides[d]!);
  }

  /** The sub-tensor at `index` along `dim`, with that dimension removed. */
  select(dim: number, index: number): Tensor {
    const d = normalizeDim(dim, this.ndim);
    const n = this.shape[d]!;
    argCheck(Number.isInteger(index) && index >= -n && index < n, () => `select: index ${String(index)} is out of range for dimension ${d} of size ${n}`);
    const i = index < 0 ? index + n : index;
    const shape = this.shape.filter((_, k) => k !== d);
    const strides = this.strides.filter((_, k) => k !== d);
    return this.#alias(shape, strides, this.storageOffset + i * this.strides[d]!);
  }

  transpose(dim0: number, dim1: number): Tensor {
    const a = normalizeDim(dim0, this.ndim, "dim0"), b = normalizeDim(dim1, this.ndim, "dim1");
    const order = this.shape.map((_, k) => k);
    [order[a], order[b]] = [order[b]!, order[a]!];
    return this.permute(order);
  }

  permute(order: readonly number[]): Tensor {
    argCheck(Array.isArray(order) && order.length === this.ndim, () => `permute: expected ${this.ndim} dimensions, got ${Array.isArray(order) ? `[${order.map(String)}]` : String(order)}`);
    const dims = order.map((o) => normalizeDim(o, this.ndim, "permute"));
    argCheck(new Set(dims).size === dims.length, () => `permute: [${order}] repeats a dimension`);
    return this.#alias(dims.map((k) => this.shape[k]!), dims.map((k) => this.strides[k]!));
  }

  /** A view of size 1 inserted at `dim`. */
  unsqueeze(dim: number): Tensor {
    const d = normalizeDim(dim, this.ndim + 1);
    const shape = [...this.shape], strides = [...this.strides];
    shape.splice(d, 0, 1);
    strides.splice(d, 0, d < this.ndim ? this.strides[d]! * this.shape[d]! : 1);
    return this.#alias(shape, strides);
  }

  /** A broadcast view of this tensor as `shape` (size-1 and missing leading dims repeat). */
  expand(shape: readonly number[]): Tensor {
    const target = checkShape(shape);
    const lead = target.length - this.ndim;
    argCheck(lead >= 0, () => `expand: cannot expand [${this.shape}] to fewer dimensions [${target}]`);
    const strides = target.map((size, d) => {
      if (d < lead) return 0;
      const own = this.shape[d - lead]!;
      argCheck(own === size || own === 1, () => `expand: shape [${this.shape}] does not broadcast to [${target}]`);
      return own === size ? this.strides[d - lead]! : 0;
    });
    return this.#alias(target, strides);
  }

  // ------------------------------------------------------------ copies

  /** This tensor when contiguous (as a new handle), else a contiguous copy. */
  contiguous(): Tensor {
    if (this.isContiguous()) return this.#alias(this.shape, this.strides);
    const out = empty(this.shape, { dtype: this.dtype, device: this.device });
    copySameDevice(out, this);
    return out;
  }

  /** A contiguous copy. */
  clone(): Tensor {
    const out = empty(this.shape, { dtype: this.dtype, device: this.device });
    copySameDevice(out, this);
    return out;
  }

  /**
   * Copies `src` into this tensor in place, casting to this dtype and moving across devices;
   * `src` broadcasts to this shape. Returns this.
   */
  copy_(src: Tensor, opts: { nonBlocking?: boolean } = {}): this {
    argCheck(src instanceof Tensor, "src: expected a Tensor");
    this.#live();
    src.#live();
    if (src.device === this.device) {
      const expanded = src.expand(this.shape);
      try {
        copySameDevice(this, expanded);
      } finally {
        expanded.dispose();
      }
      return this;
    }
    argCheck(src.ndim <= this.ndim, () => `src: shape [${src.shape}] does not broadcast to [${this.shape}]`);
    if (src.dtype === this.dtype && src.numel === this.numel && src.isContiguous() && this.isContiguous() &&
        src.shape.length === this.shape.length && src.shape.every((n, d) => n === this.shape[d])) {
      moveBytes(this, src, opts.nonBlocking ?? false);
      return this;
    }
    const moved = src.to({ device: this.device, dtype: this.dtype, nonBlocking: opts.nonBlocking });
    try {
      return this.copy_(moved);
    } finally {
      moved.dispose();
    }
  }

  /** Fills in place with `value` (rounded to this dtype). Returns this. */
  fill_(value: number): this {
    argCheck(typeof value === "number", () => `value: expected a number, got ${typeof value}`);
    check(lib().fi_tensor_fill(descA.write(this.descFields()), value, currentStreamPointer(this.device)), "fill_");
    return this;
  }

  /**
   * This tensor on another device and/or dtype. Always a new handle (same memory when nothing
   * changes). Cross-device copies complete before returning unless `nonBlocking`.
   */
  to(target: Device | string | ToOptions): Tensor {
    const opts: ToOptions = typeof target === "string" ? { device: target } : target;
    argCheck(typeof opts === "object" && opts !== null, "to: expected a device string or { device?, dtype? }");
    const device = parseDevice(opts.device ?? this.device);
    const dtype = checkDType(opts.dtype ?? this.dtype);
    this.#live();
    if (device === this.device) {
      if (dtype === this.dtype) return this.#alias(this.shape, this.strides);
      const out = empty(this.shape, { dtype, device });
      copySameDevice(out, this);
      return out;
    }
    // Cast and compact on the source side, then move the bytes.
    const packed = dtype === this.dtype && this.isContiguous() ? this.#alias(this.shape, this.strides) : this.#castContiguous(dtype);
    try {
      const out = empty(this.shape, { dtype, device });
      moveBytes(out, packed, opts.nonBlocking ?? false);
      return out;
    } finally {
      packed.dispose();
    }
  }

  #castContiguous(dtype: DType): Tensor {
    const out = empty(this.shape, { dtype, device: this.device });
    copySameDevice(out, this);
    return out;
  }

  /** The elements, row-major, copied into their natural typed array (bfloat16 and float8 as bits). */
  toArray(): NaturalArray {
    const host = this.to("cpu");
    try {
      const packed = host.isContiguous() ? host : host.contiguous();
      try {
        const view = naturalArray(this.dtype, viewBytes(packed.dataPtr, packed.nbytes), 0, packed.numel);
        return view.slice() as NaturalArray;
      } finally {
        if (packed !== host) packed.dispose();
      }
    } finally {
      host.dispose();
    }
  }

  /** The elements converted to float32, row-major. */
  toFloat32Array(): Float32Array {
    const f = this.dtype === "float32" ? this.#alias(this.shape, this.strides) : this.to({ dtype: "float32" });
    try {
      return f.toArray() as Float32Array;
    } finally {
      f.dispose();
    }
  }

  /** The single element of a one-element tensor, as a number. */
  item(): number {
    argCheck(this.numel === 1, () => `item: tensor has ${this.numel} elements, expected 1`);
    const f = this.to({ device: "cpu", dtype: "float64" });
    try {
      return (f.toArray() as Float64Array)[0]!;
    } finally {
      f.dispose();
    }
  }

  /**
   * Zero-copy typed array over a contiguous cpu tensor's (page-locked) memory. The memory stays
   * allocated while the array is reachable, even after dispose().
   */
  hostView(): NaturalArray {
    const storage = this.#live();
    argCheck(this.device === "cpu", () => `hostView: tensor is on ${this.device}; use toArray() or to("cpu") first`);
    argCheck(this.isContiguous(), "hostView: tensor is not contiguous; use contiguous() first");
    const buffer = viewBytes(this.dataPtr, this.nbytes);
    viewRegistry.register(buffer, storage.retain());
    return naturalArray(this.dtype, buffer, 0, this.numel);
  }

  /** Releases this handle's memory now (views keep it alive until they are disposed too). */
  dispose(): void {
    const s = this.#storage;
    if (s === null) return;
    this.#storage = null;
    tensorRegistry.unregister(this);
    s.release();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(shape=[${this.shape}], dtype=${this.dtype}, device=${this.device}${this.disposed ? ", disposed" : ""})`;
  }
}

/** Copies the bytes of contiguous `src` into contiguous `dst` (same size) on another device. */
function moveBytes(dst: Tensor, src: Tensor, nonBlocking: boolean): void {
  const stream = currentStreamPointer(dst.device === "cpu" ? src.device : dst.device);
  check(lib().fi_memcpy(asPointer(dst.dataPtr), deviceIndex(dst.device), asPointer(src.dataPtr), deviceIndex(src.device), dst.nbytes, stream), "copy_");
  if (!nonBlocking) check(lib().fi_stream_synchronize(stream), "copy_");
}

function copySameDevice(dst: Tensor, src: Tensor): void {
  check(lib().fi_tensor_copy(descA.write(dst.descFields()), descB.write(src.descFields()), currentStreamPointer(dst.device)), "copy_");
}

/**
 * Rows of src picked by host indices, an embedding lookup (gatherRows(table, tokenIds)):
 * out[i] = src[indices[i]] for src [rows, cols] and out [n, cols] (src's dtype and device; give
 * `out` to write into an existing one, any row stride). Every index is checked to lie in
 * [0, rows) before anything is written. One launch per 2048 indices on CUDA.
 */
export function gatherRows(src: Tensor, indices: Int32Array | number[], opts: { out?: Tensor } = {}): Tensor {
  argCheck(src instanceof Tensor && !src.disposed, "src: expected a live Tensor");
  checkOptions(opts);
  argCheck(indices instanceof Int32Array || Array.isArray(indices), "indices: expected an Int32Array or number[]");
  const idx = indices instanceof Int32Array ? indices : int32ArrayOf(indices, "indices");
  argCheck(src.ndim === 2, () => `src: expected [rows, cols], got [${src.shape}]`);
  if (opts.out != null) argCheck(opts.out instanceof Tensor && !opts.out.disposed, "out: expected a live Tensor");
  const out = opts.out ?? empty([idx.length, src.shape[1]!], { dtype: src.dtype, device: src.device });
  try {
    check(lib().fi_tensor_gather_rows(descA.write(out.descFields()), descB.write(src.descFields()), idx.length ? idx : null, idx.length,
      currentStreamPointer(src.device)), "gatherRows");
  } catch (e) {
    if (opts.out == null) out.dispose();
    throw e;
  }
  return out;
}

// ---------------------------------------------------------------- creation

function resolveOptions(opts: TensorOptions | undefined, fallbackDtype: DType = "float32"): { dtype: DType; device: Device } {
  argCheck(opts === undefined || (typeof opts === "object" && opts !== null), "options: expected an object { dtype?, device? }");
  return { dtype: checkDType(opts?.dtype ?? fallbackDtype), device: parseDevice(opts?.device ?? defaultDevice()) };
}

/** An uninitialized contiguous tensor. */
export function empty(shape: readonly number[], opts?: TensorOptions): Tensor {
  const s = checkShape(shape);
  const { dtype, device } = resolveOptions(opts);
  const nbytes = product(s) * itemsize(dtype);
  argCheck(Number.isSafeInteger(nbytes), () => `shape: [${s}] of ${dtype} is too large (${nbytes} bytes)`);
  return new Tensor(Storage.allocate(nbytes, device), s, contiguousStrides(s), 0, dtype);
}

export function full(shape: readonly number[], value: number, opts?: TensorOptions): Tensor {
  argCheck(typeof value === "number", () => `value: expected a number, got ${typeof value}`);
  const t = empty(shape, opts);
  return t.fill_(value);
}

export function zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
  return full(shape, 0, opts);
}

export function ones(shape: readonly number[], opts?: TensorOptions): Tensor {
  return full(shape, 1, opts);
}

/**
 * A tensor from host data, converted to `dtype` with round-to-nearest-even. The dtype defaults
 * to the typed array's own (Int32Array -> int32, ...) and to float32 for plain arrays; the shape
 * defaults to [data.length].
 */
export function tensor(data: ArrayLike<number> | ArrayBufferView, shape?: readonly number[], opts?: TensorOptions): Tensor {
  const isView = ArrayBuffer.isView(data);
  argCheck(isView || (data !== null && typeof data === "object" && typeof (data as ArrayLike<number>).length === "number"),
    "data: expected an array or typed array of numbers");
  const length = (data as ArrayLike<number>).length;
  const target = checkShape(shape ?? [length]);
  argCheck(product(target) === length, () => `shape: [${target}] holds ${product(target)} elements, data has ${length}`);
  const natural = isView ? dtypeOfTypedArray(data) : undefined;
  const { dtype, device } = resolveOptions(opts, natural ?? "float32");
  const sourceDtype: DType = natural ?? "float64"; // plain arrays are staged as float64
  const staging = empty(target, { dtype: sourceDtype, device: "cpu" });
  try {
    const view = naturalArray(sourceDtype, viewBytes(staging.dataPtr, staging.nbytes), 0, length);
    if (natural) {
      view.set(data as never);
    } else {
      const src = data as ArrayLike<number>;
      const out = view as Float64Array;
      for (let i = 0; i < length; ++i) {
        const v = src[i];
        argCheck(typeof v === "number" || typeof v === "boolean", () => `data[${i}]: expected a number, got ${typeof v}`);
        out[i] = Number(v);
      }
    }
    return staging.to({ device, dtype });
  } finally {
    staging.dispose();
  }
}

// ---------------------------------------------------------------- random

export interface RandomOptions extends TensorOptions {
  /** Same seed -> bit-identical values on cpu and cuda. Default: the global generator. */
  seed?: number | bigint;
}

let globalSeed = 0x2545f491n;
let globalOffset = 0n;

/** Seeds the global generator used by randn/rand calls without a seed. */
export function manualSeed(seed: number | bigint): void {
  globalSeed = toSeed(seed);
  globalOffset = 0n;
}

function toSeed(seed: number | bigint): bigint {
  argCheck((typeof seed === "number" && Number.isSafeInteger(seed) && seed >= 0) || (typeof seed === "bigint" && seed >= 0n && seed < 1n << 64n),
    () => `seed: expected a non-negative integer below 2^64, got ${String(seed)}`);
  return BigInt(seed);
}

function randomFill(shape: readonly number[], opts: RandomOptions | undefined, distribution: number, a: number, b: number): Tensor {
  const t = empty(shape, opts);
  let seed: bigint, offset: bigint;
  if (opts?.seed !== undefined) {
    seed = toSeed(opts.seed);
    offset = 0n;
  } else {
    seed = globalSeed;
    offset = globalOffset;
    globalOffset += BigInt(Math.ceil(t.numel / 4)); // one Philox counter per 4 values
  }
  try {
    check(lib().fi_tensor_random(descA.write(t.descFields()), distribution, seed, offset, a, b, currentStreamPointer(t.device)), "random");
  } catch (e) {
    t.dispose();
    throw e;
  }
  return t;
}

/** Standard normal samples (Philox4x32-10 + Box-Muller). */
export function randn(shape: readonly number[], opts?: RandomOptions): Tensor {
  return randomFill(shape, opts, 1, 0, 1);
}

/** Normal samples with this mean and standard deviation (torch.normal with a size). */
export function normal(shape: readonly number[], mean: number, std: number, opts?: RandomOptions): Tensor {
  argCheck(Number.isFinite(mean), () => `mean: must be finite, got ${String(mean)}`);
  argCheck(Number.isFinite(std) && std >= 0, () => `std: expected a finite value >= 0, got ${String(std)}`);
  return randomFill(shape, opts, 1, mean, std);
}

/** Uniform samples in [0, 1). */
export function rand(shape: readonly number[], opts?: RandomOptions): Tensor {
  return randomFill(shape, opts, 0, 0, 1);
}

// ---------------------------------------------------------------- scopes

/**
 * Runs `fn` and disposes every Tensor created while it runs (views included) except the ones it
 * returns (a Tensor, or Tensors inside the arrays and plain objects it returns) and the ones
 * passed to keep(): as TensorFlow.js's tidy. Without it, a tensor dropped without dispose() is
 * freed only when the garbage collector finalizes it, which a long synchronous loop may never let
 * happen. Scopes nest; what an inner scope returns belongs to the outer one. `fn` must be
 * synchronous (a returned Promise throws, after its tensors are disposed).
 */
export function scope<T>(fn: () => T): T {
  argCheck(typeof fn === "function", "scope: expected a function");
  const created = new Set<Tensor>();
  scopes.push(created);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of created) t.dispose();
    throw e;
  }
  scopes.pop();
  const returned = new Set<Tensor>();
  collectTensors(result, returned, new Set());
  for (const t of created) if (!returned.has(t)) t.dispose();
  const outer = scopes[scopes.length - 1];
  if (outer) for (const t of returned) if (created.has(t)) outer.add(t);
  argCheck(!(result instanceof Promise), "scope: fn must be synchronous (it returned a Promise; its tensors are disposed)");
  return result;
}

/** Takes `t` out of every open scope(): it lives until disposed (or finalized). Returns it. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

function collectTensors(x: unknown, out: Set<Tensor>, seen: Set<object>): void {
  if (x instanceof Tensor) {
    out.add(x);
    return;
  }
  if (x === null || typeof x !== "object" || seen.has(x)) return;
  seen.add(x);
  if (Array.isArray(x)) {
    for (const v of x) collectTensors(v, out, seen);
  } else if (Object.getPrototypeOf(x) === Object.prototype) {
    for (const v of Object.values(x)) collectTensors(v, out, seen);
  }
}

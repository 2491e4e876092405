// FlashInferError: every failure of this library, native or TypeScript-side.

/** Status codes of the C ABI (native/include/flashinfer.h), by name. */
export type ErrorCode =
  | "invalid_argument"
  | "unsupported"
  | "out_of_memory"
  | "cuda_error"
  | "no_device"
  | "internal"
  | "library_not_found"
  /** The kernel generator's compiler rejected a variant (the message carries its errors). */
  | "compile_error";

const CODES: Record<number, ErrorCode> = {
  1: "invalid_argument",
  2: "unsupported",
  3: "out_of_memory",
  4: "cuda_error",
  5: "no_device",
  6: "internal",
};

export class FlashInferError extends Error {
  readonly code: ErrorCode;
  /** The native status (0 for errors raised in TypeScript). */
  readonly status: number;
  constructor(code: ErrorCode, message: string, status = 0) {
    super(message);
    this.name = "FlashInferError";
    this.code = code;
    this.status = status;
  }
}

export function codeOfStatus(status: number): ErrorCode {
  return CODES[status] ?? "internal";
}

/** Throws an invalid_argument FlashInferError naming the argument unless `ok`. */
export function argCheck(ok: boolean, message: string | (() => string)): asserts ok {
  if (!ok) throw new FlashInferError("invalid_argument", typeof message === "string" ? message : message());
}

/** Throws unless an options argument is an object (null is not: reading its fields would throw a TypeError). */
export function checkOptions(opts: unknown, name = "opts"): void {
  argCheck(typeof opts === "object" && opts !== null, () => `${name}: expected an options object, got ${opts === null ? "null" : typeof opts}`);
}

/**
 * A plain array of int32 values as an Int32Array, each checked first: Int32Array.from alone would
 * wrap what lies outside int32 (2^32 + 1 becomes 1, a valid-looking index) and truncate fractions.
 */
export function int32ArrayOf(values: readonly unknown[], name: string): Int32Array {
  values.forEach((v, i) => argCheck(Number.isInteger(v) && (v as number) >= -0x80000000 && (v as number) <= 0x7fffffff,
    () => `${name}[${i}]: expected an int32 integer, got ${String(v)}`));
  return Int32Array.from(values as number[]);
}

// Dtypes: names follow FlashInfer and PyTorch; codes are the C ABI's FI_* values.
import { argCheck } from "./errors.ts";

export type DType =
  | "float32"
  | "float16"
  | "bfloat16"
  | "float8_e4m3fn"
  | "float8_e5m2"
  | "int32"
  | "int64"
  | "uint8"
  | "bool"
  | "float64";

interface DTypeInfo {
  code: number;
  itemsize: number;
  floating: boolean;
}

const INFO: Record<DType, DTypeInfo> = {
  float32: { code: 0, itemsize: 4, floating: true },
  float16: { code: 1, itemsize: 2, floating: true },
  bfloat16: { code: 2, itemsize: 2, floating: true },
  float8_e4m3fn: { code: 3, itemsize: 1, floating: true },
  float8_e5m2: { code: 4, itemsize: 1, floating: true },
  int32: { code: 5, itemsize: 4, floating: false },
  int64: { code: 6, itemsize: 8, floating: false },
  uint8: { code: 7, itemsize: 1, floating: false },
  bool: { code: 8, itemsize: 1, floating: false },
  float64: { code: 9, itemsize: 8, floating: true },
};

export const DTYPES = Object.keys(INFO) as DType[];

export function checkDType(dtype: unknown, what = "dtype"): DType {
  argCheck(typeof dtype === "string" && dtype in INFO, () => `${what}: expected one of ${DTYPES.join(", ")}, got ${String(dtype)}`);
  return dtype as DType;
}

export const dtypeCode = (d: DType): number => INFO[d].code;
export const itemsize = (d: DType): number => INFO[d].itemsize;
export const isFloating = (d: DType): boolean => INFO[d].floating;

/** The typed array that holds a dtype's values (bfloat16 and float8 as their raw bits). */
export type NaturalArray = Float32Array | Float64Array | Float16Array | Uint16Array | Uint8Array | Int32Array | BigInt64Array;

export function naturalArray(dtype: DType, buffer: ArrayBuffer, byteOffset: number, length: number): NaturalArray {
  switch (dtype) {
    case "float32": return new Float32Array(buffer, byteOffset, length);
    case "float64": return new Float64Array(buffer, byteOffset, length);
    case "float16": return new Float16Array(buffer, byteOffset, length);
    case "bfloat16": return new Uint16Array(buffer, byteOffset, length);
    case "int32": return new Int32Array(buffer, byteOffset, length);
    case "int64": return new BigInt64Array(buffer, byteOffset, length);
    default: return new Uint8Array(buffer, byteOffset, length); // float8_*, uint8, bool
  }
}

/** The dtype whose natural array a typed array is, when there is exactly one. */
export function dtypeOfTypedArray(data: ArrayLike<number> | ArrayBufferView): DType | undefined {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof Float64Array) return "float64";
  if (data instanceof Float16Array) return "float16";
  if (data instanceof Int32Array) return "int32";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof Uint8Array) return "uint8";
  return undefined;
}

// Byte layouts of the C ABI's structs (native/include/flashinfer.h); sizes are checked at load.
import { DEVICE_PROPERTIES_BYTES, TENSOR_DESC_BYTES } from "./library.ts";

export interface TensorDescFields {
  address: number;
  device: number; // -1 cpu, else CUDA ordinal
  dtype: number;
  shape: readonly number[];
  strides: readonly number[];
}

const MAX_DIMS = 8;

/** A reusable fi_tensor_desc buffer (pass the Uint8Array itself to the native call). */
export class TensorDescBuffer {
  readonly bytes = new Uint8Array(TENSOR_DESC_BYTES);
  readonly #view = new DataView(this.bytes.buffer);

  write(t: TensorDescFields): Uint8Array {
    const v = this.#view;
    v.setBigUint64(0, BigInt(t.address), true);
    v.setInt32(8, t.device, true);
    v.setInt32(12, t.dtype, true);
    v.setInt32(16, t.shape.length, true);
    v.setInt32(20, 0, true);
    for (let d = 0; d < MAX_DIMS; ++d) {
      v.setBigInt64(24 + 8 * d, BigInt(t.shape[d] ?? 0), true);
      v.setBigInt64(88 + 8 * d, BigInt(t.strides[d] ?? 0), true);
    }
    return this.bytes;
  }
}

export interface DevicePropertiesStruct {
  name: string;
  totalMemory: number;
  smCount: number;
  major: number;
  minor: number;
  l2CacheSize: number;
  maxSharedMemoryPerBlockOptin: number;
  memoryBusWidth: number;
  memoryClockKhz: number;
}

export function readDeviceProperties(bytes: Uint8Array): DevicePropertiesStruct {
  if (bytes.length !== DEVICE_PROPERTIES_BYTES) throw new Error("fi_device_properties: wrong buffer size");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.indexOf(0);
  return {
    name: new TextDecoder().decode(bytes.subarray(0, end < 0 || end > 256 ? 256 : end)),
    totalMemory: Number(v.getBigUint64(256, true)),
    smCount: v.getInt32(264, true),
    major: v.getInt32(268, true),
    minor: v.getInt32(272, true),
    l2CacheSize: v.getInt32(276, true),
    maxSharedMemoryPerBlockOptin: v.getInt32(280, true),
    memoryBusWidth: v.getInt32(284, true),
    memoryClockKhz: v.getInt32(288, true),
  };
}

// Devices: "cpu" or "cuda:N".
import { cpus, freemem, totalmem } from "node:os";
import { argCheck } from "./errors.ts";
import { check, lib, outInt } from "./ffi/library.ts";
import { newDeviceProperties, readDeviceProperties } from "./ffi/structs.ts";

export type Device = "cpu" | `cuda:${number}`;

/** The C ABI's device number: -1 for cpu, else the CUDA ordinal. */
export function deviceIndex(device: Device): number {
  return device === "cpu" ? -1 : Number(device.slice(5));
}

export function deviceName(index: number): Device {
  return index < 0 ? "cpu" : `cuda:${index}`;
}

let cachedCount: number | undefined;

/** Number of CUDA devices (0 without a GPU, driver or CUDA backend). */
export function deviceCount(): number {
  cachedCount ??= outInt((slot) => lib().fi_device_count(slot), "deviceCount");
  return cachedCount;
}

export function cudaAvailable(): boolean {
  return deviceCount() > 0;
}

/**
 * Parses and checks a device: "cpu", "cuda" (= "cuda:0") or "cuda:N". Throws a FlashInferError
 * naming `what` if it is malformed or absent on this machine.
 */
export function parseDevice(device: unknown, what = "device"): Device {
  argCheck(typeof device === "string", () => `${what}: expected "cpu" or "cuda:N", got ${String(device)}`);
  if (device === "cpu") return "cpu";
  const m = /^cuda(?::(\d+))?$/.exec(device);
  argCheck(m !== null, () => `${what}: expected "cpu" or "cuda:N", got "${device}"`);
  const index = m[1] === undefined ? 0 : Number(m[1]);
  const n = deviceCount();
  argCheck(index < n, () =>
    n === 0
      ? `${what}: "${device}" requested but no CUDA device is available (use "cpu")`
      : `${what}: "${device}" does not exist; this machine has ${n} CUDA device(s)`,
  );
  return `cuda:${index}`;
}

/** The default device: FLASHINFER_DEVICE if set, else cuda:0 when a GPU is present, else cpu. */
export function defaultDevice(): Device {
  const env = process.env.FLASHINFER_DEVICE;
  if (env) return parseDevice(env, "FLASHINFER_DEVICE");
  return cudaAvailable() ? "cuda:0" : "cpu";
}

export interface DeviceProperties {
  name: string;
  smCount: number;
  totalMemory: number;
  computeCapability: [number, number];
  l2CacheSize: number;
  /** Largest dynamic shared memory a block may opt into, bytes (0 on cpu). */
  maxSharedMemoryPerBlockOptin: number;
  /** Theoretical DRAM bandwidth from the memory clock and bus width, bytes/s (0 on cpu). */
  peakMemoryBandwidth: number;
}

const propertiesCache = new Map<Device, DeviceProperties>();

/** Properties of a device (default: defaultDevice()). On cpu, smCount is the core count. */
export function deviceProperties(device?: Device | string): DeviceProperties {
  const d = parseDevice(device ?? defaultDevice());
  const cached = propertiesCache.get(d);
  if (cached) return cached;
  let props: DeviceProperties;
  if (d === "cpu") {
    props = {
      name: cpus()[0]?.model ?? "cpu",
      smCount: cpus().length,
      totalMemory: totalmem(),
      computeCapability: [0, 0],
      l2CacheSize: 0,
      maxSharedMemoryPerBlockOptin: 0,
      peakMemoryBandwidth: 0,
    };
  } else {
    const bytes = newDeviceProperties();
    check(lib().fi_device_get_properties(deviceIndex(d), bytes), "deviceProperties");
    const p = readDeviceProperties(bytes);
    props = {
      name: p.name,
      smCount: p.smCount,
      totalMemory: p.totalMemory,
      computeCapability: [p.major, p.minor],
      l2CacheSize: p.l2CacheSize,
      maxSharedMemoryPerBlockOptin: p.maxSharedMemoryPerBlockOptin,
      // DDR: two transfers per clock
      peakMemoryBandwidth: 2 * p.memoryClockKhz * 1000 * (p.memoryBusWidth / 8),
    };
  }
  propertiesCache.set(d, props);
  return props;
}

/** Waits for all work on a device. */
export function synchronize(device?: Device | string): void {
  const d = parseDevice(device ?? defaultDevice());
  check(lib().fi_device_synchronize(deviceIndex(d)), "synchronize");
}

/** Free and total memory of a device, bytes (cuda: cudaMemGetInfo; cpu: the host's). */
export function memoryInfo(device?: Device | string): { free: number; total: number } {
  const d = parseDevice(device ?? defaultDevice());
  if (d === "cpu") return { free: freemem(), total: totalmem() };
  const free = new BigUint64Array(1), total = new BigUint64Array(1);
  check(lib().fi_device_mem_info(deviceIndex(d), free, total), "memoryInfo");
  return { free: Number(free[0]), total: Number(total[0]) };
}

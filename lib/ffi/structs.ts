// Byte layouts of the C ABI's structs (native/include/flashinfer.h); sizes are checked at load.
import {
  DECODE_PLAN_ARGS_BYTES,
  DECODE_PLAN_INFO_BYTES,
  DECODE_RUN_ARGS_BYTES,
  DEVICE_PROPERTIES_BYTES,
  PREFILL_PLAN_ARGS_BYTES,
  PREFILL_PLAN_INFO_BYTES,
  PREFILL_RUN_ARGS_BYTES,
  TENSOR_DESC_BYTES,
} from "./library.ts";

export interface TensorDescFields {
  address: number;
  device: number; // -1 cpu, else CUDA ordinal
  dtype: number;
  shape: readonly number[];
  strides: readonly number[];
}

const MAX_DIMS = 8;

/** Writes an fi_tensor_desc at byte `offset` of `v`. */
export function writeTensorDesc(v: DataView, offset: number, t: TensorDescFields | null): void {
  if (t === null) {
    for (let i = 0; i < TENSOR_DESC_BYTES; i += 8) v.setBigUint64(offset + i, 0n, true);
    return;
  }
  v.setBigUint64(offset, BigInt(t.address), true);
  v.setInt32(offset + 8, t.device, true);
  v.setInt32(offset + 12, t.dtype, true);
  v.setInt32(offset + 16, t.shape.length, true);
  v.setInt32(offset + 20, 0, true);
  for (let d = 0; d < MAX_DIMS; ++d) {
    v.setBigInt64(offset + 24 + 8 * d, BigInt(t.shape[d] ?? 0), true);
    v.setBigInt64(offset + 88 + 8 * d, BigInt(t.strides[d] ?? 0), true);
  }
}

/** A reusable fi_tensor_desc buffer (pass the Uint8Array itself to the native call). */
export class TensorDescBuffer {
  readonly bytes = new Uint8Array(TENSOR_DESC_BYTES);
  readonly #view = new DataView(this.bytes.buffer);

  write(t: TensorDescFields): Uint8Array {
    writeTensorDesc(this.#view, 0, t);
    return this.bytes;
  }
}

// ---- decode attention

export interface DecodePlanArgs {
  indptr: number; // host addresses
  indices: number;
  lastPageLen: number;
  batchSize: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  qDtype: number;
  kvDtype: number;
  device: number;
  fixedGrid: boolean;
  useTensorCores: boolean;
}

const planArgs = new Uint8Array(DECODE_PLAN_ARGS_BYTES);
const planArgsView = new DataView(planArgs.buffer);

/** Fills the (reused) fi_decode_plan_args buffer. */
export function writeDecodePlanArgs(a: DecodePlanArgs): Uint8Array {
  const bytes = planArgs;
  const v = planArgsView;
  v.setBigUint64(0, BigInt(a.indptr), true);
  v.setBigUint64(8, BigInt(a.indices), true);
  v.setBigUint64(16, BigInt(a.lastPageLen), true);
  const ints = [a.batchSize, a.numQoHeads, a.numKvHeads, a.headDim, a.pageSize, a.qDtype, a.kvDtype, a.device, a.fixedGrid ? 1 : 0, a.useTensorCores ? 1 : 0];
  ints.forEach((x, i) => v.setInt32(24 + 4 * i, x, true));
  return bytes;
}

/** The fields of fi_decode_plan_info the bindings read (the bytes travel back to run as they are). */
export interface DecodePlanInfo {
  bytes: Uint8Array;
  hostBytes: number;
  workspaceBytes: number;
  batchSize: number;
  numWork: number;
  numPartials: number;
  chunkTokens: number;
  maxPageIndex: number;
}

export function newDecodePlanInfo(): Uint8Array {
  return new Uint8Array(DECODE_PLAN_INFO_BYTES);
}

export function readDecodePlanInfo(bytes: Uint8Array): DecodePlanInfo {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    bytes,
    hostBytes: Number(v.getBigUint64(0, true)),
    workspaceBytes: Number(v.getBigUint64(8, true)),
    batchSize: v.getInt32(56, true),
    numWork: v.getInt32(92, true),
    numPartials: v.getInt32(96, true),
    chunkTokens: v.getInt32(100, true),
    maxPageIndex: v.getInt32(104, true),
  };
}

export interface DecodeRunArgs {
  q: TensorDescFields;
  k: TensorDescFields;
  v: TensorDescFields;
  out: TensorDescFields;
  lse: TensorDescFields | null;
  plan: Uint8Array;
  workspace: number;
  workspaceBytes: number;
  posEncodingMode: number;
  windowLeft: number;
  smScale: number;
  logitsSoftCap: number;
  ropeScale: number;
  ropeTheta: number;
  kScale: number;
  vScale: number;
}

const runArgs = new Uint8Array(DECODE_RUN_ARGS_BYTES);
const runView = new DataView(runArgs.buffer);

/** Fills the (reused) fi_decode_run_args buffer. */
export function writeDecodeRunArgs(a: DecodeRunArgs): Uint8Array {
  const v = runView;
  [a.q, a.k, a.v, a.out].forEach((t, i) => writeTensorDesc(v, i * TENSOR_DESC_BYTES, t));
  writeTensorDesc(v, 4 * TENSOR_DESC_BYTES, a.lse);
  runArgs.set(a.plan, 5 * TENSOR_DESC_BYTES);
  v.setBigUint64(880, BigInt(a.workspace), true);
  v.setBigUint64(888, BigInt(a.workspaceBytes), true);
  v.setInt32(896, a.posEncodingMode, true);
  v.setInt32(900, a.windowLeft, true);
  [a.smScale, a.logitsSoftCap, a.ropeScale, a.ropeTheta, a.kScale, a.vScale].forEach((x, i) => v.setFloat32(904 + 4 * i, x, true));
  return runArgs;
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

// ---- prefill attention

export interface PrefillPlanArgs {
  qoIndptr: number; // host addresses (0 = NULL)
  kvIndptr: number;
  kvIndices: number;
  kvLastPageLen: number;
  batchSize: number;
  numQoHeads: number;
  numKvHeads: number;
  headDimQk: number;
  headDimVo: number;
  pageSize: number; // 0 = ragged
  qDtype: number;
  kvDtype: number;
  device: number;
  maskMode: number;
  windowLeft: number;
  backend: number; // FI_BACKEND_*
  posEncodingMode: number;
}

const prefillPlanArgs = new Uint8Array(PREFILL_PLAN_ARGS_BYTES);
const prefillPlanArgsView = new DataView(prefillPlanArgs.buffer);

/** Fills the (reused) fi_prefill_plan_args buffer. */
export function writePrefillPlanArgs(a: PrefillPlanArgs): Uint8Array {
  const v = prefillPlanArgsView;
  [a.qoIndptr, a.kvIndptr, a.kvIndices, a.kvLastPageLen].forEach((x, i) => v.setBigUint64(8 * i, BigInt(x), true));
  const ints = [a.batchSize, a.numQoHeads, a.numKvHeads, a.headDimQk, a.headDimVo, a.pageSize, a.qDtype, a.kvDtype, a.device, a.maskMode, a.windowLeft,
    a.backend, a.posEncodingMode, 0];
  ints.forEach((x, i) => v.setInt32(32 + 4 * i, x, true));
  return prefillPlanArgs;
}

/** The fields of fi_prefill_plan_info the bindings read (the bytes travel back to run as they are). */
export interface PrefillPlanInfo {
  bytes: Uint8Array;
  hostBytes: number;
  workspaceBytes: number;
  totalKvLen: number;
  maskBytes: number;
  batchSize: number;
  numQoHeads: number;
  headDimVo: number;
  pageSize: number;
  numWork: number;
  ctaTileQ: number;
  totalQo: number;
  numPartials: number;
  kvChunksMax: number;
  backend: number; // FI_BACKEND_* the plan runs on
}

export function newPrefillPlanInfo(): Uint8Array {
  return new Uint8Array(PREFILL_PLAN_INFO_BYTES);
}

export function readPrefillPlanInfo(bytes: Uint8Array): PrefillPlanInfo {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    bytes,
    hostBytes: Number(v.getBigUint64(0, true)),
    workspaceBytes: Number(v.getBigUint64(8, true)),
    totalKvLen: Number(v.getBigInt64(48, true)),
    maskBytes: Number(v.getBigInt64(56, true)),
    batchSize: v.getInt32(64, true),
    numQoHeads: v.getInt32(68, true),
    headDimVo: v.getInt32(80, true),
    pageSize: v.getInt32(84, true),
    numWork: v.getInt32(108, true),
    ctaTileQ: v.getInt32(112, true),
    totalQo: v.getInt32(116, true),
    numPartials: v.getInt32(120, true),
    kvChunksMax: v.getInt32(124, true),
    backend: v.getInt32(140, true),
  };
}

export interface PrefillRunArgs {
  q: TensorDescFields;
  k: TensorDescFields;
  v: TensorDescFields;
  out: TensorDescFields;
  lse: TensorDescFields | null;
  customMask: TensorDescFields | null;
  plan: Uint8Array;
  workspace: number;
  workspaceBytes: number;
  posEncodingMode: number;
  smScale: number;
  logitsSoftCap: number;
  ropeScale: number;
  ropeTheta: number;
  kScale: number;
  vScale: number;
}

const prefillRunArgs = new Uint8Array(PREFILL_RUN_ARGS_BYTES);
const prefillRunView = new DataView(prefillRunArgs.buffer);

/** Fills the (reused) fi_prefill_run_args buffer. */
export function writePrefillRunArgs(a: PrefillRunArgs): Uint8Array {
  const v = prefillRunView;
  [a.q, a.k, a.v, a.out, a.lse, a.customMask].forEach((t, i) => writeTensorDesc(v, i * TENSOR_DESC_BYTES, t));
  prefillRunArgs.set(a.plan, 6 * TENSOR_DESC_BYTES);
  v.setBigUint64(1056, BigInt(a.workspace), true);
  v.setBigUint64(1064, BigInt(a.workspaceBytes), true);
  v.setInt32(1072, a.posEncodingMode, true);
  [a.smScale, a.logitsSoftCap, a.ropeScale, a.ropeTheta, a.kScale, a.vScale].forEach((x, i) => v.setFloat32(1076 + 4 * i, x, true));
  v.setInt32(1100, 0, true);
  return prefillRunArgs;
}

// The C ABI's structs (native/include/flashinfer.h) and their writers and readers. The layouts
// list each struct's fields by their C names in declaration order; offsets and sizes come from
// the library at load (lib/ffi/layout.ts), so no byte offset is typed here.
import { FlashInferError } from "../errors.ts";
import { StructLayout, array, bytesOf, chars, f32, f64, i32, i64, pointer, setInt64, u64, type FieldKind } from "./layout.ts";

export interface TensorDescFields {
  address: number;
  device: number; // -1 cpu, else CUDA ordinal
  dtype: number;
  shape: readonly number[];
  strides: readonly number[];
}

const MAX_DIMS = 8; // FI_MAX_DIMS

export const TensorDescLayout = new StructLayout("fi_tensor_desc", {
  data: pointer,
  device: i32,
  dtype: i32,
  ndim: i32,
  reserved: i32,
  shape: array(i64, MAX_DIMS, 0),
  strides: array(i64, MAX_DIMS, 0),
});

/** Writes an fi_tensor_desc at byte `base` of `v` (null: all zero, the "absent" tensor). */
export function writeTensorDesc(v: DataView, base: number, t: TensorDescFields | null): void {
  const o = TensorDescLayout.offsets;
  if (t === null) {
    new Uint8Array(v.buffer, v.byteOffset + base, TensorDescLayout.size).fill(0);
    return;
  }
  // The hot path of every call: plain DataView writes at the resolved offsets.
  setInt64(v, base + o.data, t.address);
  v.setInt32(base + o.device, t.device, true);
  v.setInt32(base + o.dtype, t.dtype, true);
  v.setInt32(base + o.ndim, t.shape.length, true);
  v.setInt32(base + o.reserved, 0, true);
  for (let d = 0; d < MAX_DIMS; ++d) {
    setInt64(v, base + o.shape + 8 * d, t.shape[d] ?? 0);
    setInt64(v, base + o.strides + 8 * d, t.strides[d] ?? 0);
  }
}

/** Reads an fi_tensor_desc at byte `base` of `v` (shape and strides cut to ndim). */
export function readTensorDesc(v: DataView, base: number): TensorDescFields {
  const L = TensorDescLayout;
  const ndim = Math.max(0, Math.min(MAX_DIMS, L.get(v, "ndim", base)));
  return {
    address: Number(L.get(v, "data", base)),
    device: L.get(v, "device", base),
    dtype: L.get(v, "dtype", base),
    shape: L.get(v, "shape", base).slice(0, ndim),
    strides: L.get(v, "strides", base).slice(0, ndim),
  };
}

/** An fi_tensor_desc member of another struct. */
export const tensorDesc: FieldKind<TensorDescFields | null, TensorDescFields> = {
  name: "fi_tensor_desc",
  size: () => TensorDescLayout.size,
  align: TensorDescLayout.align,
  write: writeTensorDesc,
  read: readTensorDesc,
};

/** A reusable fi_tensor_desc buffer (pass the Uint8Array itself to the native call). */
export class TensorDescBuffer {
  #bytes: Uint8Array | undefined;
  #view: DataView | undefined;

  /** The buffer (allocated on first use: its size comes from the library). */
  get bytes(): Uint8Array {
    return (this.#bytes ??= TensorDescLayout.alloc());
  }

  write(t: TensorDescFields | null): Uint8Array {
    const bytes = this.bytes;
    writeTensorDesc((this.#view ??= new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)), 0, t);
    return bytes;
  }
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---- devices

export const DevicePropertiesLayout = new StructLayout("fi_device_properties", {
  name: chars(256),
  total_memory: u64,
  sm_count: i32,
  major: i32,
  minor: i32,
  l2_cache_size: i32,
  max_shared_memory_per_block_optin: i32,
  memory_bus_width: i32,
  memory_clock_khz: i32,
  reserved: i32,
});

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

/** A zeroed fi_device_properties buffer for fi_device_get_properties. */
export function newDeviceProperties(): Uint8Array {
  return DevicePropertiesLayout.alloc();
}

export function readDeviceProperties(bytes: Uint8Array): DevicePropertiesStruct {
  if (bytes.byteLength !== DevicePropertiesLayout.size) throw new FlashInferError("internal", "fi_device_properties: wrong buffer size");
  const p = DevicePropertiesLayout.read(bytes);
  return {
    name: p.name,
    totalMemory: p.total_memory,
    smCount: p.sm_count,
    major: p.major,
    minor: p.minor,
    l2CacheSize: p.l2_cache_size,
    maxSharedMemoryPerBlockOptin: p.max_shared_memory_per_block_optin,
    memoryBusWidth: p.memory_bus_width,
    memoryClockKhz: p.memory_clock_khz,
  };
}

// ---- attention (one engine: prefill, and decode as qo_len 1)

export const PrefillPlanArgsLayout = new StructLayout("fi_prefill_plan_args", {
  qo_indptr: pointer,
  kv_indptr: pointer,
  kv_indices: pointer,
  kv_last_page_len: pointer,
  batch_size: i32,
  num_qo_heads: i32,
  num_kv_heads: i32,
  head_dim_qk: i32,
  head_dim_vo: i32,
  page_size: i32,
  q_dtype: i32,
  kv_dtype: i32,
  device: i32,
  mask_mode: i32,
  window_left: i32,
  backend: i32,
  pos_encoding_mode: i32,
  fixed_grid: i32,
  use_tensor_cores: i32,
  fixed_split_size: i32,
  disable_split_kv: i32,
  max_total_qo: i32,
});

export const PrefillPlanInfoLayout = new StructLayout("fi_prefill_plan_info", {
  host_bytes: u64,
  workspace_bytes: u64,
  plan_bytes: u64,
  off_partial_o: u64,
  off_partial_lse: u64,
  off_indices: u64,
  total_kv_len: i64,
  mask_bytes: i64,
  batch_size: i32,
  num_qo_heads: i32,
  num_kv_heads: i32,
  head_dim_qk: i32,
  head_dim_vo: i32,
  page_size: i32,
  q_dtype: i32,
  kv_dtype: i32,
  device: i32,
  mask_mode: i32,
  window_left: i32,
  num_work: i32,
  cta_tile_q: i32,
  total_qo: i32,
  num_partials: i32,
  kv_chunks_max: i32,
  max_page_index: i32,
  nnz_pages: i32,
  any_split: i32,
  backend: i32,
  kernel: i32,
  fixed_grid: i32,
  chunk_tokens: i32,
  plan_serial: i32,
});

export const PrefillRunArgsLayout = new StructLayout("fi_prefill_run_args", {
  q: tensorDesc,
  k: tensorDesc,
  v: tensorDesc,
  out: tensorDesc,
  lse: tensorDesc,
  custom_mask: tensorDesc,
  q_rope: tensorDesc,
  k_rope: tensorDesc,
  plan: bytesOf(PrefillPlanInfoLayout),
  workspace: pointer,
  workspace_bytes: u64,
  pos_encoding_mode: i32,
  sm_scale: f32,
  logits_soft_cap: f32,
  rope_scale: f32,
  rope_theta: f32,
  k_scale: f32,
  v_scale: f32,
  reserved: i32,
});

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
  /** CUDA-graph mode (paged caches, no custom mask, no KV split). */
  fixedGrid: boolean;
  /** CUDA-graph mode: the most query rows a plan of this shape may have (0: one per request). */
  maxTotalQo: number;
  /** Tensor-core decode: true for any group, false for groups >= 4, "never" (a variant with hooks that kernel lacks). */
  useTensorCores: boolean | "never";
  /** Keys per split piece (0: the scheduler's choice). */
  fixedSplitSize: number;
  disableSplitKv: boolean;
}

/** Fills the (reused) fi_prefill_plan_args buffer. */
export function writePrefillPlanArgs(a: PrefillPlanArgs): Uint8Array {
  return PrefillPlanArgsLayout.write({
    qo_indptr: a.qoIndptr,
    kv_indptr: a.kvIndptr,
    kv_indices: a.kvIndices,
    kv_last_page_len: a.kvLastPageLen,
    batch_size: a.batchSize,
    num_qo_heads: a.numQoHeads,
    num_kv_heads: a.numKvHeads,
    head_dim_qk: a.headDimQk,
    head_dim_vo: a.headDimVo,
    page_size: a.pageSize,
    q_dtype: a.qDtype,
    kv_dtype: a.kvDtype,
    device: a.device,
    mask_mode: a.maskMode,
    window_left: a.windowLeft,
    backend: a.backend,
    pos_encoding_mode: a.posEncodingMode,
    fixed_grid: a.fixedGrid ? 1 : 0,
    use_tensor_cores: a.useTensorCores === "never" ? -1 : a.useTensorCores ? 1 : 0,
    fixed_split_size: a.fixedSplitSize,
    disable_split_kv: a.disableSplitKv ? 1 : 0,
    max_total_qo: a.maxTotalQo,
  });
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
  kernel: number; // FI_KERNEL_* the plan runs on
  chunkTokens: number;
}

export function newPrefillPlanInfo(): Uint8Array {
  return PrefillPlanInfoLayout.alloc();
}

export function readPrefillPlanInfo(bytes: Uint8Array): PrefillPlanInfo {
  const L = PrefillPlanInfoLayout, v = viewOf(bytes);
  return {
    bytes,
    hostBytes: L.get(v, "host_bytes"),
    workspaceBytes: L.get(v, "workspace_bytes"),
    totalKvLen: L.get(v, "total_kv_len"),
    maskBytes: L.get(v, "mask_bytes"),
    batchSize: L.get(v, "batch_size"),
    numQoHeads: L.get(v, "num_qo_heads"),
    headDimVo: L.get(v, "head_dim_vo"),
    pageSize: L.get(v, "page_size"),
    numWork: L.get(v, "num_work"),
    ctaTileQ: L.get(v, "cta_tile_q"),
    totalQo: L.get(v, "total_qo"),
    numPartials: L.get(v, "num_partials"),
    kvChunksMax: L.get(v, "kv_chunks_max"),
    backend: L.get(v, "backend"),
    kernel: L.get(v, "kernel"),
    chunkTokens: L.get(v, "chunk_tokens"),
  };
}

export interface PrefillRunArgs {
  q: TensorDescFields;
  k: TensorDescFields;
  v: TensorDescFields;
  out: TensorDescFields;
  lse: TensorDescFields | null;
  customMask: TensorDescFields | null;
  /** MLA: the rope parts of q and k (null otherwise). */
  qRope?: TensorDescFields | null;
  kRope?: TensorDescFields | null;
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

/** Fills the (reused) fi_prefill_run_args buffer. */
export function writePrefillRunArgs(a: PrefillRunArgs): Uint8Array {
  return PrefillRunArgsLayout.write({
    q: a.q,
    k: a.k,
    v: a.v,
    out: a.out,
    lse: a.lse,
    custom_mask: a.customMask,
    q_rope: a.qRope ?? null,
    k_rope: a.kRope ?? null,
    plan: a.plan,
    workspace: a.workspace,
    workspace_bytes: a.workspaceBytes,
    pos_encoding_mode: a.posEncodingMode,
    sm_scale: a.smScale,
    logits_soft_cap: a.logitsSoftCap,
    rope_scale: a.ropeScale,
    rope_theta: a.ropeTheta,
    k_scale: a.kScale,
    v_scale: a.vScale,
  });
}

// ---- sampling (written by lib/sampling.ts)

export const SamplingParamsLayout = new StructLayout("fi_sampling_params", {
  probs: tensorDesc,
  indices: tensorDesc,
  out: tensorDesc,
  top_k: tensorDesc,
  top_p: tensorDesc,
  min_p: tensorDesc,
  seed: u64,
  offset: u64,
  top_p_val: f64,
  min_p_val: f64,
  top_k_val: i32,
  filters: i32,
  from_logits: i32,
  deterministic: i32,
  reserved: i32,
  seeds: tensorDesc,
  offsets: tensorDesc,
});

/** Every struct of the C ABI, for the load-time check's tests. */
export const ABI_LAYOUTS = [
  TensorDescLayout,
  DevicePropertiesLayout,
  PrefillPlanArgsLayout,
  PrefillPlanInfoLayout,
  PrefillRunArgsLayout,
  SamplingParamsLayout,
] as const;

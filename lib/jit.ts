// The kernel generator: attention variants described in TypeScript (FlashInfer's "attention
// variant" hooks: a logits transform, a logits mask, extra parameters, softmax on or off), turned
// into C++, compiled into a small shared library per variant and cached on disk, then run by the
// prefill and decode wrappers (one engine: both run through fi_prefill_run_variant) with the same
// plans and scheduler.
//
// One description gives two sources: the CPU backend (native/src/attention/prefill_cpu.h
// instantiated with the variant, built with the host C++ compiler; decode plans are prefill plans
// with one query row per request there too) and, per configuration (head dims, dtypes, GPU
// architecture), the CUDA backend (the kernels a plan may pick: the mma.sync "fa2" and Hopper
// kernels of prefill_kernels.cuh / prefill_sm90.cuh and the decode kernels of
// decode_kernels.cuh, instantiated with it through prefill_variant.cuh, built with nvcc). Each is
// one small shared library in the cache, loaded with dlopen (lib/ffi/variant.ts), whose one entry
// (fi_variant_entry) runs whichever kernel the plan names.
//
//   const sigmoid = fi.jit.attentionVariant({
//     name: "sigmoid_attention",
//     params: { logitsScale: "float", sigmoidBias: "float" },
//     logitsTransform: "return 1.0f / (1.0f + expf(-(logits * params.logitsScale + params.sigmoidBias)));",
//     useSoftmax: false,
//   });
//   const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", { variant: sigmoid });
//   w.plan({ ..., variantParams: { logitsScale: 0.088, sigmoidBias: -2 } });
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { type Device, deviceProperties, parseDevice } from "./device.ts";
import { type DType, checkDType } from "./dtype.ts";
import { FlashInferError, argCheck } from "./errors.ts";
import { packageRoot } from "./paths.ts";
import { run, which } from "./process.ts";
import { type VariantLibrary, loadVariantLibrary } from "./ffi/variant.ts";
import { BUILTIN_HEADER, writeBuiltinVariantHeader } from "./jit_builtin.ts";
import { Tensor, empty, keep } from "./tensor.ts";

/** A parameter of a variant: a scalar, or a contiguous cpu tensor (float32 / int32) seen as a pointer. */
export type VariantParamType = "float" | "int" | "float*" | "int*";

export interface AttentionVariantSpec {
  /** A C identifier; names the variant in caches and messages. */
  name: string;
  /** Extra per-plan parameters, by name (C identifiers), in the order given. */
  params?: Record<string, VariantParamType>;
  /**
   * Body of a C++ function returning the new logit (a double on the CPU backend, a float in CUDA:
   * write C that compiles as both, with the C math functions: expf, tanhf, fminf...). It sees `params` (the values given to
   * plan as variantParams), `logits` (q.k * smScale * kScale), and the indices `batchIdx` (request),
   * `qoIdx` (query row in the request), `kvIdx` (key in the request), `qoHeadIdx`, `kvHeadIdx`,
   * `qoLen`, `kvLen` and `qoRow` (the global query row). Without it, the built-in transform
   * (ALiBi, logitsSoftCap) applies.
   */
  logitsTransform?: string;
  /** Body of a C++ function returning bool (key visible), with the same names but `logits`; applied after the plan's causal / custom / window mask. */
  logitsMask?: string;
  /**
   * Element transforms (FlashInfer's QueryTransform / KeyTransform / OutputTransform): bodies
   * returning the new value of one element. queryTransform sees `q` (after RoPE, before smScale),
   * `dimIdx`, `batchIdx`, `qoIdx`, `qoHeadIdx`, `kvHeadIdx`, `qoLen`, `kvLen`, `qoRow`;
   * keyTransform sees `k` (after RoPE), `dimIdx`, `batchIdx`, `kvIdx`, `kvHeadIdx`, `kvLen`;
   * outputTransform sees `o` (normalized, merged across split pieces, times vScale) with the
   * query's names. They run on the CPU backend, the mma.sync ("fa2"), the Hopper ("fa3", when the
   * wrapper asks for it: "auto" plans "fa2") and the CUDA-core decode kernels.
   */
  queryTransform?: string;
  keyTransform?: string;
  outputTransform?: string;
  /** Default true. false: out = sum over visible keys of (transformed logit) * v, no normalization and no lse. */
  useSoftmax?: boolean;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RESERVED = new Set(["params", "logits", "batchIdx", "qoIdx", "kvIdx", "qoHeadIdx", "kvHeadIdx", "qoLen", "kvLen", "qoRow", "p", "ix", "q", "k", "o",
  "dimIdx"]);
const SNIPPETS = ["logitsTransform", "logitsMask", "queryTransform", "keyTransform", "outputTransform"] as const;
type Snippets = Partial<Record<(typeof SNIPPETS)[number], string>>;
const C_TYPES: Record<VariantParamType, string> = { float: "float", int: "int32_t", "float*": "const float*", "int*": "const int32_t*" };

/** A described, generated (not yet compiled) attention variant; make it with attentionVariant(). */
export class AttentionVariant {
  readonly name: string;
  readonly params: readonly (readonly [string, VariantParamType])[];
  readonly useSoftmax: boolean;
  readonly hasLogitsTransform: boolean;
  /** Whether it has a query, key or output transform (auto then plans fa2 on CUDA; fa3 runs them when asked). */
  readonly hasElementTransforms: boolean;
  /** The generated C++ source of the CPU backend. */
  readonly source: string;
  readonly #snippets: Snippets;

  /** @internal use attentionVariant() */
  constructor(spec: AttentionVariantSpec) {
    argCheck(typeof spec === "object" && spec !== null, "attentionVariant: expected a description object");
    argCheck(typeof spec.name === "string" && IDENTIFIER.test(spec.name), () => `name: expected a C identifier, got ${String(spec.name)}`);
    const params = Object.entries(spec.params ?? {});
    for (const [name, type] of params) {
      argCheck(IDENTIFIER.test(name) && !RESERVED.has(name), () => `params.${name}: expected a C identifier other than ${[...RESERVED].join(", ")}`);
      argCheck(type in C_TYPES, () => `params.${name}: expected "float", "int", "float*" or "int*", got ${String(type)}`);
    }
    for (const key of SNIPPETS) argCheck(spec[key] === undefined || typeof spec[key] === "string", () => `${key}: expected C++ source text`);
    argCheck(spec.useSoftmax === undefined || typeof spec.useSoftmax === "boolean", "useSoftmax: expected a boolean");
    argCheck(spec.useSoftmax !== false || spec.logitsTransform !== undefined, "useSoftmax: false needs a logitsTransform (the weight of each key)");
    this.name = spec.name;
    this.params = params;
    this.useSoftmax = spec.useSoftmax ?? true;
    this.hasLogitsTransform = spec.logitsTransform !== undefined;
    this.hasElementTransforms = spec.queryTransform !== undefined || spec.keyTransform !== undefined || spec.outputTransform !== undefined;
    this.#snippets = Object.fromEntries(SNIPPETS.filter((k) => spec[k] !== undefined).map((k) => [k, spec[k]]));
    this.source = generateSource(this, this.#snippets, null);
  }

  /** The generated CUDA source for one configuration. */
  cudaSource(config: CudaConfig): string {
    return generateSource(this, this.#snippets, config);
  }
}

/** Describes an attention variant (FlashInfer's AttentionVariant / JIT spec) for the prefill wrappers' `variant` option. */
export function attentionVariant(spec: AttentionVariantSpec): AttentionVariant {
  return new AttentionVariant(spec);
}

// ---------------------------------------------------------------- code generation

/** What a CUDA build of a variant is specialized for. */
export interface CudaConfig {
  headDimQk: number;
  headDimVo: number;
  qDataType: "float16" | "bfloat16";
  /** kv in q's dtype ("16bit") or a float8 cache. */
  kvKind: "16bit" | "fp8";
  /** GPU architecture, as nvcc's sm_<arch> ("90a", "80"). */
  arch: string;
}

const CUDA_HEAD_DIMS = new Set(["64,64", "128,128", "192,128", "256,256"]);

// One source for both backends: the parameter struct, the hooks (with the snippets inside), the
// exports that tell the loader the struct's layout; only the hook signatures and the entry differ.
function generateSource(variant: AttentionVariant, snippets: Snippets, cuda: CudaConfig | null): string {
  const { name, params, useSoftmax } = variant;
  const { logitsTransform: transform, logitsMask: mask, queryTransform, keyTransform, outputTransform } = snippets;
  const lines: string[] = [];
  const file = `${name}.generated.${cuda ? "cu" : "cpp"}`;
  // A snippet keeps its own line numbers in compiler messages (#line), so an error names the
  // snippet and its line; the generated lines after it get theirs back.
  const snippet = (label: string, body: string) => {
    lines.push(`#line 1 "${label}"`, ...body.split("\n"));
    lines.push(`#line ${lines.length + 2} "${file}"`);
  };
  // The names a snippet sees, from each kernel's own index types (the decode kernels: one query
  // row per request, so qoIdx 0, qoLen 1 and the global row is the request).
  const unused = "    (void)batchIdx, (void)qoIdx, (void)kvIdx, (void)qoHeadIdx, (void)kvHeadIdx, (void)qoLen, (void)kvLen, (void)qoRow, (void)params;";
  const prefillIndices = cuda
    ? [
        "    const int batchIdx = it.request, qoIdx = row.qi, kvIdx = key, qoHeadIdx = row.qo_head, kvHeadIdx = it.kv_head;",
        "    const int qoLen = it.qo_len, kvLen = it.kv_len;",
        "    const int64_t qoRow = int64_t(it.qo_row0) + row.qi;",
        unused,
      ]
    : [
        "    const int batchIdx = ix.batch_idx, qoIdx = ix.qo_idx, kvIdx = ix.kv_idx, qoHeadIdx = ix.qo_head_idx, kvHeadIdx = ix.kv_head_idx;",
        "    const int qoLen = ix.qo_len, kvLen = ix.kv_len;",
        "    const int64_t qoRow = ix.qo_row;",
        unused,
      ];
  const decodeIndices = [
    "    const int batchIdx = row.request, qoIdx = 0, kvIdx = key, qoHeadIdx = row.qo_head, kvHeadIdx = row.kv_head, qoLen = 1, kvLen = row.kv_len;",
    "    const int64_t qoRow = row.request;",
    unused,
  ];
  // The element transforms' names, as [name, C type, value] from the hook's own arguments.
  type Names = [string, string, string][];
  const declare = (names: Names) => [
    ...names.map(([n, t, v]) => `    const ${t} ${n} = ${v};`),
    `    ${names.map(([n]) => `(void)${n}`).join(", ")}, (void)params;`,
  ];
  const queryNames = (ix: Record<string, string>): Names => [
    ["batchIdx", "int", ix.batch!], ["qoIdx", "int", ix.qo!], ["qoHeadIdx", "int", ix.qoHead!], ["kvHeadIdx", "int", ix.kvHead!],
    ["qoLen", "int", ix.qoLen!], ["kvLen", "int", ix.kvLen!], ["qoRow", "int64_t", ix.qoRow!], ["dimIdx", "int", "dim"],
  ];
  const keyNames = (ix: Record<string, string>): Names => [
    ["batchIdx", "int", ix.batch!], ["kvIdx", "int", ix.kv!], ["kvHeadIdx", "int", ix.kvHead!], ["kvLen", "int", ix.kvLen!], ["dimIdx", "int", "dim"],
  ];
  // VariantIndex (CPU) and OutputIndex (CUDA) fields.
  const fromIndex = (v: string) => ({ batch: `${v}.batch_idx`, qo: `${v}.qo_idx`, kv: `${v}.kv_idx`, qoHead: `${v}.qo_head_idx`,
    kvHead: `${v}.kv_head_idx`, qoLen: `${v}.qo_len`, kvLen: `${v}.kv_len`, qoRow: `${v}.qo_row` });
  const hook = (signature: string, prologue: string[], indices: string[], label: string, body: string, result: string, ret: string) => {
    lines.push(`  ${signature} {`, ...prologue, ...indices, `    auto body = [&]() -> ${result} {`);
    snippet(label, body);
    lines.push(`    };`, `    ${ret}`, `  }`);
  };
  const target = cuda
    ? `CUDA sm_${cuda.arch}, head dims (${cuda.headDimQk}, ${cuda.headDimVo}), q ${cuda.qDataType}, kv ${cuda.kvKind}`
    : "the CPU backend";
  lines.push(
    `// Generated by flashinfer-bun's kernel generator (lib/jit.ts) for the attention variant "${name}", ${target}. Do not edit.`,
    `#include <cmath>`,
    `#include <cstdint>`,
    `#include <cstddef>`,
  );
  if (cuda) {
    lines.push(
      `#define FI_VARIANT_DQK ${cuda.headDimQk}`,
      `#define FI_VARIANT_DVO ${cuda.headDimVo}`,
      `#define FI_VARIANT_DT ${cuda.qDataType === "float16" ? "__half" : "__nv_bfloat16"}`,
      `#define FI_VARIANT_KV_KINDS fi::${cuda.kvKind === "fp8" ? "kKvFp8" : "kKv16"}`,
      `#include "attention/prefill_variant.cuh"`,
    );
  } else {
    lines.push(`#include "attention/prefill_cpu.h"`, `using namespace std;`);
  }
  lines.push(
    `// A named namespace, not an anonymous one: with internal linkage GCC folds the whole template into`,
    `// run() and the key loop measured 20% slower than the library's own instantiation.`,
    `namespace fi_variant {`,
    `struct VariantParams {`,
    ...(params.length ? params.map(([n, t]) => `  ${C_TYPES[t]} ${n};`) : ["  char unused;"]),
    `};`,
  );
  if (cuda && outputTransform !== undefined) {
    lines.push(`// The output transform, shared by every kernel and the merge of split rows.`, `struct OutputHook {`, `  using Params = VariantParams;`,
      `  static constexpr bool kActive = true;`);
    hook("static __device__ __forceinline__ float apply(const VariantParams& params, float o, const fi::OutputIndex& ix, int dim)", [],
      declare(queryNames(fromIndex("ix"))), "outputTransform", outputTransform, "float", "return body();");
    lines.push(`};`);
  }
  const output = outputTransform !== undefined ? "OutputHook" : "fi::NoOutputTransform";
  const transformFlags = [
    `  static constexpr bool kQueryTransform = ${queryTransform !== undefined}, kKeyTransform = ${keyTransform !== undefined};`,
  ];
  if (cuda) {
    lines.push(
      `using fi::prefill_detail::ItemInfo;`,
      `using fi::prefill_detail::RowInfo;`,
      `// The hooks not given here are the built-in ones (RoPE, ALiBi, soft cap, the plan's masks).`,
      `struct Variant : fi::prefill_detail::DefaultVariant {`,
      `  struct KernelParams : fi::prefill_detail::PrefillKernelParams {`,
      `    VariantParams vp;`,
      `  };`,
      `  static constexpr bool kUseSoftmax = ${useSoftmax};`,
      `  static constexpr bool kElementwiseMask = ${mask !== undefined};`,
      ...transformFlags,
      `  using Output = ${output};`,
    );
    const item = { batch: "it.request", kvHead: "it.kv_head", qoLen: "it.qo_len", kvLen: "it.kv_len" };
    if (queryTransform !== undefined)
      hook("static __device__ __forceinline__ float query(const KernelParams& kp, float q, const ItemInfo& it, int qo_idx, int qo_head, int dim)",
        ["    const VariantParams& params = kp.vp;"],
        declare(queryNames({ ...item, qo: "qo_idx", qoHead: "qo_head", qoRow: "int64_t(it.qo_row0) + qo_idx" })), "queryTransform", queryTransform,
        "float", "return body();");
    if (keyTransform !== undefined)
      hook("static __device__ __forceinline__ float key(const KernelParams& kp, float k, const ItemInfo& it, int key, int dim)",
        ["    const VariantParams& params = kp.vp;"], declare(keyNames({ ...item, kv: "key" })), "keyTransform", keyTransform, "float", "return body();");
    if (transform !== undefined) {
      lines.push(`  static __device__ __forceinline__ bool plain_logits(const KernelParams&) { return false; }`);
      // The kernel keeps softmax logits in the log2 domain (exp2); the snippet sees and returns natural ones.
      hook("static __device__ __forceinline__ float logit(const KernelParams& kp, float dot, const ItemInfo& it, const RowInfo& row, int key)",
        ["    const VariantParams& params = kp.vp;", "    const float logits = dot * (kp.a.sm_scale * kp.a.k_scale);"], prefillIndices,
        "logitsTransform", transform, "float", "return kUseSoftmax ? body() * fi::kLog2e : body();");
    }
    if (mask !== undefined) {
      hook("static __device__ __forceinline__ bool visible(const KernelParams& kp, const uint8_t* mask, const ItemInfo& it, const RowInfo& row, int key)",
        ["    if (!DefaultVariant::visible(kp, mask, it, row, key)) return false;", "    const VariantParams& params = kp.vp;"], prefillIndices,
        "logitsMask", mask, "bool", "return body();");
    }
    lines.push(
      `};`,
      `// The same hooks for the decode kernels (CUDA-core and tensor-core): they scale q by smScale * kScale`,
      `// only when kCustomLogits, so \`logits\` arrives natural.`,
      `struct DecodeVariant : fi::decode_detail::DecodeDefaultVariant {`,
      `  struct KernelParams : fi::decode_detail::DecodeKernelParams {`,
      `    VariantParams vp;`,
      `  };`,
      `  static constexpr bool kUseSoftmax = ${useSoftmax};`,
      `  static constexpr bool kCustomLogits = ${transform !== undefined};`,
      `  static constexpr bool kCustomMask = ${mask !== undefined};`,
      ...transformFlags,
      `  using Output = ${output};`,
    );
    const decodeItem = { batch: "row.request", kvHead: "row.kv_head", qoLen: "1", kvLen: "row.kv_len" };
    if (queryTransform !== undefined)
      hook("static __device__ __forceinline__ float query(const KernelParams& kp, float q, const fi::decode_detail::DecodeRow& row, int dim)",
        ["    const VariantParams& params = kp.vp;"], declare(queryNames({ ...decodeItem, qo: "0", qoHead: "row.qo_head", qoRow: "row.request" })),
        "queryTransform", queryTransform, "float", "return body();");
    if (keyTransform !== undefined)
      hook("static __device__ __forceinline__ float key(const KernelParams& kp, float k, const fi::decode_detail::DecodeRow& row, int key, int dim)",
        ["    const VariantParams& params = kp.vp;"], declare(keyNames({ ...decodeItem, kv: "key" })), "keyTransform", keyTransform, "float",
        "return body();");
    if (transform !== undefined) {
      hook("static __device__ __forceinline__ float logit(const KernelParams& kp, float logits, const fi::decode_detail::DecodeRow& row, int key)",
        ["    const VariantParams& params = kp.vp;"], decodeIndices, "logitsTransform", transform, "float",
        "return kUseSoftmax ? body() * fi::kLog2e : body();");
    }
    if (mask !== undefined) {
      hook("static __device__ __forceinline__ bool visible(const KernelParams& kp, const fi::decode_detail::DecodeRow& row, int key)",
        ["    if (!DecodeDefaultVariant::visible(kp, row, key)) return false;", "    const VariantParams& params = kp.vp;"], decodeIndices,
        "logitsMask", mask, "bool", "return body();");
    }
    lines.push(`};`, `}  // namespace fi_variant`, `FI_VARIANT_CUDA_ENTRY(fi_variant::Variant, fi_variant::DecodeVariant)`);
  } else {
    lines.push(
      `// The hooks not given here are the built-in ones (ALiBi and soft cap; no extra mask). R: the`,
      `// engine's run parameters (see native/src/attention/variant_cpu.h).`,
      `struct Variant : fi::BuiltinVariant {`,
      `  using Params = VariantParams;`,
      `  static constexpr bool kUseSoftmax = ${useSoftmax};`,
      ...transformFlags,
      `  static constexpr bool kOutputTransform = ${outputTransform !== undefined};`,
    );
    const elementHook = (kind: string, value: string, names: Names, body: string) =>
      hook(`template <class R> static double ${kind}(const R&, const Params& params, double ${value}, const fi::VariantIndex& ix, int dim)`, [],
        declare(names), `${kind}Transform`, body, "double", "return body();");
    if (queryTransform !== undefined) elementHook("query", "q", queryNames(fromIndex("ix")), queryTransform);
    if (keyTransform !== undefined) elementHook("key", "k", keyNames(fromIndex("ix")), keyTransform);
    if (outputTransform !== undefined) elementHook("output", "o", queryNames(fromIndex("ix")), outputTransform);
    if (transform !== undefined)
      hook("template <class R> static double logits(const R&, const Params& params, double logits, const fi::VariantIndex& ix)", [], prefillIndices,
        "logitsTransform", transform, "double", "return body();");
    if (mask !== undefined)
      hook("template <class R> static bool mask(const R&, const Params& params, const fi::VariantIndex& ix)", [], prefillIndices, "logitsMask", mask, "bool",
        "return body();");
    lines.push(
      `};`,
      `void run(const fi::PrefillParams* p, const void* params) {`,
      `  fi::prefill_run_cpu_variant<Variant>(*p, *static_cast<const VariantParams*>(params));`,
      `}`,
      `}  // namespace fi_variant`,
      `extern "C" __attribute__((visibility("default"))) void* fi_variant_entry(void) { return reinterpret_cast<void*>(&fi_variant::run); }`,
    );
  }
  lines.push(
    `#define FI_VARIANT_API extern "C" __attribute__((visibility("default")))`,
    `FI_VARIANT_API int64_t fi_variant_params_size(void) { return int64_t(sizeof(fi_variant::VariantParams)); }`,
    `FI_VARIANT_API int64_t fi_variant_params_offset(int32_t i) {`,
    `  switch (i) {`,
    ...params.map(([n], i) => `    case ${i}: return int64_t(offsetof(fi_variant::VariantParams, ${n}));`),
    `    default: return -1;`,
    `  }`,
    `}`,
    ``,
  );
  return lines.join("\n");
}

// ---------------------------------------------------------------- compile and cache

const nativeDir = join(packageRoot, "native");
// What a generated source may include: a change to any of these files makes new cache keys.
const INCLUDED_DIRS = ["include", "src/common", "src/attention"];

/** The cache folder: $FLASHINFER_CACHE_DIR, else ~/.cache/flashinfer-bun. */
export function cacheDir(): string {
  return process.env.FLASHINFER_CACHE_DIR || join(homedir(), ".cache", "flashinfer-bun");
}

interface Toolchain {
  compiler: string;
  /** The compiler's version line: part of the cache key. */
  id: string;
  flags: string[];
  ext: "cpp" | "cu";
}

let headersHash: string | undefined;
const toolchains = new Map<string, Toolchain>();

function includedHeaders(): string {
  if (headersHash) return headersHash;
  // The built-in variant's generated header: written by the build, here too when missing or stale
  // (a package unpacked without it), since the generated sources include it through the backends.
  try {
    writeBuiltinVariantHeader(nativeDir);
  } catch (e) {
    throw new FlashInferError("internal", `jit: cannot write ${BUILTIN_HEADER} under ${nativeDir}: ${(e as Error).message}`);
  }
  const h = createHash("sha256");
  for (const dir of INCLUDED_DIRS)
    for (const f of readdirSync(join(nativeDir, dir)).sort()) h.update(f).update(readFileSync(join(nativeDir, dir, f)));
  headersHash = h.digest("hex");
  return headersHash;
}

function versionLine(compiler: string): string {
  const lines = run([compiler, "--version"]).stdout.trim().split("\n");
  return (compiler.endsWith("nvcc") ? lines.at(-1) : lines[0]) ?? compiler;
}

function cpuToolchain(): Toolchain {
  const known = toolchains.get("cpu");
  if (known) return known;
  const candidates = [process.env.CXX, "c++", "g++", "clang++"].filter((c): c is string => !!c);
  const compiler = candidates.map((c) => which(c)).find((p): p is string => !!p);
  if (!compiler) {
    throw new FlashInferError("unsupported", `the kernel generator needs a C++17 compiler for the CPU backend and found none of ${candidates.join(", ")} (install g++ or clang++, or set CXX)`);
  }
  const t: Toolchain = { compiler, id: versionLine(compiler), flags: ["-std=gnu++17", "-O3", "-DNDEBUG", "-fPIC", "-shared", "-fopenmp", "-fvisibility=hidden"], ext: "cpp" };
  toolchains.set("cpu", t);
  return t;
}

function cudaToolchain(arch: string): Toolchain {
  const known = toolchains.get(arch);
  if (known) return known;
  const home = process.env.CUDA_HOME || process.env.CUDA_PATH;
  const candidates = [process.env.NVCC, which("nvcc"), home && join(home, "bin", "nvcc"), "/usr/local/cuda/bin/nvcc"];
  const compiler = candidates.find((c): c is string => !!c && existsSync(c));
  if (!compiler) {
    throw new FlashInferError("unsupported", "the kernel generator needs nvcc (the CUDA toolkit) to build a variant for a GPU and found none on PATH, in $NVCC, $CUDA_HOME/bin or /usr/local/cuda/bin; the CPU backend needs only a C++ compiler");
  }
  // As the library's own CUDA build (native/CMakeLists.txt), for one architecture; the library
  // links nothing of libflashinfer (--no-undefined checks that) and carries its own static cudart.
  const flags = ["-std=c++17", "-O3", "-DNDEBUG", "-DFI_WITH_CUDA=1", "--expt-relaxed-constexpr", "-shared", "-Xcompiler=-fPIC,-fvisibility=hidden",
    "-Xlinker=--no-undefined", `--generate-code=arch=compute_${arch},code=sm_${arch}`];
  const t: Toolchain = { compiler, id: versionLine(compiler), flags, ext: "cu" };
  toolchains.set(arch, t);
  return t;
}

function cacheKey(source: string, t: Toolchain): string {
  return createHash("sha256").update(source).update(t.id).update(t.flags.join(" ")).update(includedHeaders()).update(process.arch).digest("hex").slice(0, 24);
}

function compile(variant: AttentionVariant, source: string, t: Toolchain, path: string): void {
  mkdirSync(cacheDir(), { recursive: true });
  const unique = `${process.pid}-${Math.random().toString(36).slice(2)}`;
  const src = `${path}.${unique}.${t.ext}`, tmp = `${path}.${unique}.tmp`;
  writeFileSync(src, source);
  try {
    const args = [t.compiler, ...t.flags, "-I", join(nativeDir, "include"), "-I", join(nativeDir, "src"), "-o", tmp, src];
    const r = run(args);
    if (r.exitCode === null) {
      throw new FlashInferError("compile_error", `variant "${variant.name}": ${t.ext === "cu" ? "nvcc" : "the C++ compiler"} was stopped (${r.signal ?? "no exit code"}) before it finished`);
    }
    if (r.exitCode !== 0) {
      const log = r.stderr + r.stdout;
      const errors = log.split("\n").filter((l) => /error|note: |^\s+\d+ \|/.test(l)).slice(0, 30).join("\n");
      const what = t.ext === "cu" ? "nvcc" : "the C++ compiler";
      throw new FlashInferError("compile_error", `variant "${variant.name}": ${what} rejected it:\n${errors || log.slice(0, 4000)}`);
    }
    renameSync(tmp, path); // atomic: a concurrent reader sees the old file or the whole new one
    writeFileSync(`${path}.${t.ext}`, source); // kept beside the library for reading
  } finally {
    rmSync(src, { force: true });
    rmSync(tmp, { force: true });
  }
}

/** Where a variant is to run: the CPU backend (default), or a GPU for one configuration. */
export interface VariantTarget {
  /** "cpu" (default) or a CUDA device; a CUDA build is for that device's architecture. */
  device?: Device | string;
  /** Head dims and dtypes of the plans it serves (CUDA only; default headDimVo = headDimQk, q float16, kv = q). */
  headDimQk?: number;
  headDimVo?: number;
  qDataType?: DType;
  kvDataType?: DType;
  /** Build for this architecture (nvcc's sm_<arch>, e.g. "90a") instead of the device's: compiles without a GPU. */
  arch?: string;
}

/** The CUDA configuration a target names (arch from the device unless given). */
export function cudaConfig(target: VariantTarget): CudaConfig {
  const headDimQk = target.headDimQk, headDimVo = target.headDimVo ?? headDimQk;
  argCheck(Number.isInteger(headDimQk) && Number.isInteger(headDimVo), "headDimQk: a CUDA build of a variant needs the head dims");
  const dims = `${headDimQk},${headDimVo}`;
  if (!CUDA_HEAD_DIMS.has(dims))
    throw new FlashInferError("unsupported", `headDimQk, headDimVo: the CUDA kernels serve (64, 64), (128, 128), (192, 128) and (256, 256), not (${headDimQk}, ${headDimVo})`);
  const qDataType = checkDType(target.qDataType ?? "float16", "qDataType");
  const kvDataType = checkDType(target.kvDataType ?? qDataType, "kvDataType");
  if (qDataType !== "float16" && qDataType !== "bfloat16") throw new FlashInferError("unsupported", `qDataType: the CUDA kernels take float16 or bfloat16, not ${qDataType}`);
  const fp8 = kvDataType === "float8_e4m3fn" || kvDataType === "float8_e5m2";
  if (!fp8 && kvDataType !== qDataType) throw new FlashInferError("unsupported", `kvDataType: expected ${qDataType} (q's) or a float8 type, got ${kvDataType}`);
  let arch = target.arch;
  if (arch === undefined) {
    const [major, minor] = deviceProperties(target.device ?? "cuda:0").computeCapability;
    arch = `${major}${minor}${major === 9 && minor === 0 ? "a" : ""}`;
  }
  argCheck(/^[0-9]{2,3}[a-z]?$/.test(arch), () => `arch: expected an nvcc architecture such as "90a" or "80", got ${String(arch)}`);
  return { headDimQk: headDimQk!, headDimVo: headDimVo!, qDataType, kvKind: fp8 ? "fp8" : "16bit", arch };
}

/**
 * Compiles the variant for a target (default: the CPU backend) unless the cache holds it, and
 * loads it. A cached file that does not load (truncated, corrupted) is rebuilt once.
 */
export function precompile(variant: AttentionVariant, target: VariantTarget = {}): VariantLibrary {
  argCheck(variant instanceof AttentionVariant, "variant: expected an AttentionVariant from fi.jit.attentionVariant");
  argCheck(typeof target === "object" && target !== null, "target: expected an options object");
  // An arch without a device builds for a GPU this machine may not have.
  const device = target.device !== undefined ? parseDevice(target.device) : target.arch !== undefined ? undefined : "cpu";
  let source: string, t: Toolchain, stem: string;
  if (device === "cpu") {
    [source, t, stem] = [variant.source, cpuToolchain(), "prefill_cpu"];
  } else {
    const config = cudaConfig({ ...target, device });
    [source, t] = [variant.cudaSource(config), cudaToolchain(config.arch)];
    stem = `prefill_sm${config.arch}_d${config.headDimQk}_${config.headDimVo}_${config.qDataType}_${config.kvKind}`;
  }
  const kind = device === "cpu" ? "cpu" : "cuda";
  const path = join(cacheDir(), `${stem}_${variant.name}_${cacheKey(source, t)}.so`);
  if (!existsSync(path)) compile(variant, source, t, path);
  try {
    return loadVariantLibrary(path, variant.params.length, kind);
  } catch {
    rmSync(path, { force: true });
    compile(variant, source, t, path);
    return loadVariantLibrary(path, variant.params.length, kind);
  }
}

/**
 * The variant's parameter struct in host memory (a cpu uint8 tensor, whose address does not move),
 * filled from `values`; with aliases of the tensors it points at, which keep their memory alive
 * until the caller disposes them (with the buffer).
 */
export interface PackedVariantParams {
  /** The parameter struct (a cpu uint8 tensor). */
  buffer: Tensor;
  /** Aliases of the tensors the struct points at. */
  aliases: Tensor[];
}

export function packVariantParams(variant: AttentionVariant, lib: VariantLibrary, values: Record<string, unknown> | undefined,
  device: Device): PackedVariantParams {
  const given = values ?? {};
  argCheck(typeof given === "object" && given !== null, "variantParams: expected an object of the variant's parameters");
  for (const k of Object.keys(given))
    argCheck(variant.params.some(([n]) => n === k), () => `variantParams.${k}: the variant "${variant.name}" has no such parameter`);
  const buffer = empty([Math.max(lib.paramsSize, 8)], { dtype: "uint8", device: "cpu" });
  const view = new DataView(buffer.hostView().buffer);
  const aliases: Tensor[] = [];
  variant.params.forEach(([name, type], i) => {
    const v = given[name], at = lib.paramOffsets[i]!;
    argCheck(v !== undefined, () => `variantParams.${name}: missing (${type})`);
    if (type === "float") {
      argCheck(typeof v === "number" && Number.isFinite(v), () => `variantParams.${name}: expected a finite number, got ${String(v)}`);
      view.setFloat32(at, v, true);
    } else if (type === "int") {
      argCheck(Number.isInteger(v) && Math.abs(v as number) < 2 ** 31, () => `variantParams.${name}: expected an int32, got ${String(v)}`);
      view.setInt32(at, v as number, true);
    } else {
      const dtype = type === "float*" ? "float32" : "int32";
      argCheck(v instanceof Tensor && !v.disposed, () => `variantParams.${name}: expected a live ${dtype} Tensor`);
      argCheck(v.dtype === dtype && v.device === device && v.isContiguous(),
        () => `variantParams.${name}: expected a contiguous ${dtype} tensor on ${device} (the wrapper's device), got ${v.dtype} on ${v.device}`);
      view.setBigUint64(at, BigInt(v.dataPtr), true);
      aliases.push(v.view([...v.shape])); // the memory stays while the plan points at it
    }
  });
  return { buffer, aliases };
}

/**
 * A wrapper's variant for one plan: compiles (or finds in the cache) the variant for the plan's
 * device and configuration (a CUDA build is per head dims and dtypes) and packs its parameters. A
 * variant with its own logitsTransform refuses the built-in soft cap and ALiBi it replaces.
 */
export function planVariant(variant: AttentionVariant, device: Device, config: Omit<VariantTarget, "device" | "arch">,
  builtin: { logitsSoftCap: number; alibi: boolean }, values: Record<string, unknown> | undefined): PlannedVariant {
  if (variant.hasLogitsTransform) {
    argCheck(builtin.logitsSoftCap === 0 && !builtin.alibi,
      () => `logitsSoftCap, posEncodingMode: the variant "${variant.name}" has its own logitsTransform, which replaces the soft cap and ALiBi`);
  }
  const lib = precompile(variant, { ...config, device });
  return { ...packVariantParams(variant, lib, values, device), lib };
}

/** A plan's variant: its library and packed parameters (planVariant). */
export type PlannedVariant = PackedVariantParams & { lib: VariantLibrary };

/** Marks a packed parameter struct and its aliases as the wrapper's (kept past the caller's scope). */
export function keepVariantParams(v: PackedVariantParams | null): void {
  if (v) [v.buffer, ...v.aliases].forEach((t) => keep(t));
}

/** Frees a packed parameter struct and its aliases (null: nothing). */
export function disposeVariantParams(v: PackedVariantParams | null): void {
  v?.buffer.dispose();
  v?.aliases.forEach((t) => t.dispose());
}

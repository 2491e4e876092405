// The kernel generator: attention variants described in TypeScript (FlashInfer's "attention
// variant" hooks: a logits transform, a logits mask, extra parameters, softmax on or off), turned
// into C++, compiled into a small shared library per variant and cached on disk, then run by the
// prefill wrappers through fi_prefill_run_variant with the same plans and scheduler.
//
// This version generates the CPU backend (native/src/attention/prefill_cpu.h instantiated with
// the variant); a wrapper with a variant on a CUDA workspace throws "unsupported".
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
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { FlashInferError, argCheck } from "./errors.ts";
import { type VariantLibrary, loadVariantLibrary } from "./ffi/variant.ts";
import { Tensor, empty } from "./tensor.ts";

/** A parameter of a variant: a scalar, or a contiguous cpu tensor (float32 / int32) seen as a pointer. */
export type VariantParamType = "float" | "int" | "float*" | "int*";

export interface AttentionVariantSpec {
  /** A C identifier; names the variant in caches and messages. */
  name: string;
  /** Extra per-plan parameters, by name (C identifiers), in the order given. */
  params?: Record<string, VariantParamType>;
  /**
   * Body of a C++ function returning the new logit (double). It sees `params` (the values given to
   * plan as variantParams), `logits` (q.k * smScale * kScale), and the indices `batchIdx` (request),
   * `qoIdx` (query row in the request), `kvIdx` (key in the request), `qoHeadIdx`, `kvHeadIdx`,
   * `qoLen`, `kvLen` and `qoRow` (the global query row). Without it, the built-in transform
   * (ALiBi, logitsSoftCap) applies.
   */
  logitsTransform?: string;
  /** Body of a C++ function returning bool (key visible), with the same names but `logits`; applied after the plan's causal / custom / window mask. */
  logitsMask?: string;
  /** Default true. false: out = sum over visible keys of (transformed logit) * v, no normalization and no lse. */
  useSoftmax?: boolean;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RESERVED = new Set(["params", "logits", "batchIdx", "qoIdx", "kvIdx", "qoHeadIdx", "kvHeadIdx", "qoLen", "kvLen", "qoRow", "p", "ix"]);
const C_TYPES: Record<VariantParamType, string> = { float: "float", int: "int32_t", "float*": "const float*", "int*": "const int32_t*" };

/** A described, generated (not yet compiled) attention variant; make it with attentionVariant(). */
export class AttentionVariant {
  readonly name: string;
  readonly params: readonly (readonly [string, VariantParamType])[];
  readonly useSoftmax: boolean;
  readonly hasLogitsTransform: boolean;
  /** The generated C++ source of the CPU backend. */
  readonly source: string;

  /** @internal use attentionVariant() */
  constructor(spec: AttentionVariantSpec) {
    argCheck(typeof spec === "object" && spec !== null, "attentionVariant: expected a description object");
    argCheck(typeof spec.name === "string" && IDENTIFIER.test(spec.name), () => `name: expected a C identifier, got ${String(spec.name)}`);
    const params = Object.entries(spec.params ?? {});
    for (const [name, type] of params) {
      argCheck(IDENTIFIER.test(name) && !RESERVED.has(name), () => `params.${name}: expected a C identifier other than ${[...RESERVED].join(", ")}`);
      argCheck(type in C_TYPES, () => `params.${name}: expected "float", "int", "float*" or "int*", got ${String(type)}`);
    }
    for (const key of ["logitsTransform", "logitsMask"] as const)
      argCheck(spec[key] === undefined || typeof spec[key] === "string", () => `${key}: expected C++ source text`);
    argCheck(spec.useSoftmax === undefined || typeof spec.useSoftmax === "boolean", "useSoftmax: expected a boolean");
    argCheck(spec.useSoftmax !== false || spec.logitsTransform !== undefined, "useSoftmax: false needs a logitsTransform (the weight of each key)");
    this.name = spec.name;
    this.params = params;
    this.useSoftmax = spec.useSoftmax ?? true;
    this.hasLogitsTransform = spec.logitsTransform !== undefined;
    this.source = generateCpuSource(this.name, params, spec.logitsTransform, spec.logitsMask, this.useSoftmax);
  }
}

/** Describes an attention variant (FlashInfer's AttentionVariant / JIT spec) for the prefill wrappers' `variant` option. */
export function attentionVariant(spec: AttentionVariantSpec): AttentionVariant {
  return new AttentionVariant(spec);
}

// ---------------------------------------------------------------- code generation

function generateCpuSource(name: string, params: (readonly [string, VariantParamType])[], transform: string | undefined,
  mask: string | undefined, useSoftmax: boolean): string {
  const lines: string[] = [];
  const file = `${name}.generated.cpp`;
  // A snippet keeps its own line numbers in compiler messages (#line), so an error names the
  // snippet and its line; the generated lines after it get theirs back.
  const snippet = (label: string, body: string) => {
    lines.push(`#line 1 "${label}"`, ...body.split("\n"));
    lines.push(`#line ${lines.length + 2} "${file}"`);
  };
  const indices = [
    "    const int batchIdx = ix.batch_idx, qoIdx = ix.qo_idx, kvIdx = ix.kv_idx, qoHeadIdx = ix.qo_head_idx, kvHeadIdx = ix.kv_head_idx;",
    "    const int qoLen = ix.qo_len, kvLen = ix.kv_len;",
    "    const int64_t qoRow = ix.qo_row;",
    "    (void)batchIdx, (void)qoIdx, (void)kvIdx, (void)qoHeadIdx, (void)kvHeadIdx, (void)qoLen, (void)kvLen, (void)qoRow, (void)params;",
  ];
  lines.push(
    `// Generated by flashinfer-bun's kernel generator (lib/jit.ts) for the attention variant "${name}". Do not edit.`,
    `#include <cmath>`,
    `#include <cstdint>`,
    `#include <cstddef>`,
    `#include "attention/prefill_cpu.h"`,
    `using namespace std;`,
    `// A named namespace, not an anonymous one: with internal linkage GCC folds the whole template into`,
    `// run() and the key loop measured 20% slower than the library's own instantiation.`,
    `namespace fi_variant {`,
    `struct VariantParams {`,
    ...(params.length ? params.map(([n, t]) => `  ${C_TYPES[t]} ${n};`) : ["  char unused;"]),
    `};`,
    `// The hooks not given here are the built-in ones (ALiBi and soft cap; no extra mask).`,
    `struct Variant : fi::BuiltinVariant {`,
    `  using Params = VariantParams;`,
    `  static constexpr bool kUseSoftmax = ${useSoftmax};`,
  );
  if (transform !== undefined) {
    lines.push(`  static double logits(const fi::PrefillParams& p, const Params& params, double logits, const fi::VariantIndex& ix) {`,
      ...indices, `    (void)p;`, `    auto body = [&]() -> double {`);
    snippet("logitsTransform", transform);
    lines.push(`    };`, `    return body();`, `  }`);
  }
  if (mask !== undefined) {
    lines.push(`  static bool mask(const fi::PrefillParams& p, const Params& params, const fi::VariantIndex& ix) {`,
      ...indices, `    (void)p;`, `    auto body = [&]() -> bool {`);
    snippet("logitsMask", mask);
    lines.push(`    };`, `    return body();`, `  }`);
  }
  lines.push(
    `};`,
    `void run(const fi::PrefillParams* p, const void* params) {`,
    `  fi::prefill_run_cpu_variant<Variant>(*p, *static_cast<const VariantParams*>(params));`,
    `}`,
    `}  // namespace fi_variant`,
    `#define FI_VARIANT_API extern "C" __attribute__((visibility("default")))`,
    `FI_VARIANT_API void* fi_variant_entry(void) { return reinterpret_cast<void*>(&fi_variant::run); }`,
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

const nativeDir = resolve(join(import.meta.dir, "..", "native"));
// What the generated source includes: a change to any of them makes new cache keys.
const INCLUDED = ["include/flashinfer.h", "src/attention/prefill_cpu.h", "src/attention/prefill.h", "src/attention/decode.h", "src/common/dtype.h"];

/** The cache folder: $FLASHINFER_CACHE_DIR, else ~/.cache/flashinfer-bun. */
export function cacheDir(): string {
  return process.env.FLASHINFER_CACHE_DIR || join(homedir(), ".cache", "flashinfer-bun");
}

let toolchain: { cxx: string; id: string; flags: string[]; headers: string } | undefined;

function findToolchain(): NonNullable<typeof toolchain> {
  if (toolchain) return toolchain;
  const candidates = [process.env.CXX, "c++", "g++", "clang++"].filter((c): c is string => !!c);
  const cxx = candidates.map((c) => Bun.which(c)).find((p): p is string => !!p);
  if (!cxx) {
    throw new FlashInferError("unsupported", `the kernel generator needs a C++17 compiler for the CPU backend and found none of ${candidates.join(", ")} (install g++ or clang++, or set CXX)`);
  }
  const version = Bun.spawnSync([cxx, "--version"], { stdout: "pipe", stderr: "pipe" });
  const id = new TextDecoder().decode(version.stdout).split("\n")[0] ?? cxx;
  const headers = createHash("sha256");
  for (const f of INCLUDED) headers.update(readFileSync(join(nativeDir, f)));
  toolchain = { cxx, id, flags: ["-std=gnu++17", "-O3", "-DNDEBUG", "-fPIC", "-shared", "-fopenmp", "-fvisibility=hidden"], headers: headers.digest("hex") };
  return toolchain;
}

function cacheKey(variant: AttentionVariant): string {
  const t = findToolchain();
  return createHash("sha256").update(variant.source).update(t.id).update(t.flags.join(" ")).update(t.headers).update(process.arch).digest("hex").slice(0, 24);
}

function compile(variant: AttentionVariant, path: string): void {
  const t = findToolchain();
  mkdirSync(cacheDir(), { recursive: true });
  const unique = `${process.pid}-${Math.random().toString(36).slice(2)}`;
  const src = `${path}.${unique}.cpp`, tmp = `${path}.${unique}.tmp`;
  writeFileSync(src, variant.source);
  try {
    const args = [t.cxx, ...t.flags, "-I", join(nativeDir, "include"), "-I", join(nativeDir, "src"), "-o", tmp, src];
    const r = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
    if (r.exitCode !== 0) {
      const log = new TextDecoder().decode(r.stderr);
      const errors = log.split("\n").filter((l) => /error|note: |^\s+\d+ \|/.test(l)).slice(0, 30).join("\n");
      throw new FlashInferError("compile_error", `variant "${variant.name}": the C++ compiler rejected it:\n${errors || log.slice(0, 4000)}`);
    }
    renameSync(tmp, path); // atomic: a concurrent reader sees the old file or the whole new one
    writeFileSync(`${path}.cpp`, variant.source); // kept beside the library for reading
  } finally {
    rmSync(src, { force: true });
    rmSync(tmp, { force: true });
  }
}

/**
 * Compiles the variant for the CPU backend unless the cache holds it, and loads it. A cached file
 * that does not load (truncated, corrupted) is rebuilt once.
 */
export function precompile(variant: AttentionVariant): VariantLibrary {
  argCheck(variant instanceof AttentionVariant, "variant: expected an AttentionVariant from fi.jit.attentionVariant");
  const path = join(cacheDir(), `prefill_cpu_${variant.name}_${cacheKey(variant)}.so`);
  if (!existsSync(path)) compile(variant, path);
  try {
    return loadVariantLibrary(path, variant.params.length);
  } catch {
    rmSync(path, { force: true });
    compile(variant, path);
    return loadVariantLibrary(path, variant.params.length);
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

export function packVariantParams(variant: AttentionVariant, lib: VariantLibrary, values: Record<string, unknown> | undefined): PackedVariantParams {
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
      argCheck(v.dtype === dtype && v.device === "cpu" && v.isContiguous(),
        () => `variantParams.${name}: expected a contiguous ${dtype} tensor on cpu (the variant runs on the CPU backend), got ${v.dtype} on ${v.device}`);
      view.setBigUint64(at, BigInt(v.dataPtr), true);
      aliases.push(v.view([...v.shape])); // the memory stays while the plan points at it
    }
  });
  return { buffer, aliases };
}

/** Frees a packed parameter struct and its aliases (null: nothing). */
export function disposeVariantParams(v: PackedVariantParams | null): void {
  v?.buffer.dispose();
  v?.aliases.forEach((t) => t.dispose());
}

// Loads the shared libraries the kernel generator builds (lib/jit.ts): one per attention variant
// and configuration (CPU, or CUDA for one set of head dims, dtypes and architecture). Each
// exports fi_variant_entry (the run function fi_prefill_run_variant calls), fi_variant_params_size
// and fi_variant_params_offset (the layout of its parameter struct, from offsetof, so the
// TypeScript side types no offsets). One run function serves every plan of its backend, decode
// plans included: a CUDA build runs the plan's kernel (decode, mma.sync or Hopper).
// Libraries stay loaded (never closed: a closed library's symbols crash when called).
import { type Pointer, ffi } from "./backend.ts";
import { FlashInferError } from "../errors.ts";
import { lib } from "./library.ts";


const variantSymbols = {
  fi_variant_entry: { args: [], returns: "ptr" },
  fi_variant_params_size: { args: [], returns: "i64" },
  fi_variant_params_offset: { args: ["i32"], returns: "i64" },
} as const;

export interface VariantLibrary {
  /** Which backend its run function serves: CPU plans or CUDA plans (of one configuration). */
  kind: "cpu" | "cuda";
  /** Address of the run function (passed to fi_prefill_run_variant). */
  entry: Pointer;
  /** Byte size of the parameter struct and the offset of each parameter, in declaration order. */
  paramsSize: number;
  paramOffsets: number[];
}

const loaded = new Map<string, VariantLibrary>();

/** Loads (once per path) a generated variant library; a file that is not one throws. */
export function loadVariantLibrary(path: string, paramCount: number, kind: "cpu" | "cuda"): VariantLibrary {
  const known = loaded.get(path);
  if (known) return known;
  let symbols;
  try {
    symbols = ffi.open(path, variantSymbols);
  } catch (e) {
    throw new FlashInferError("internal", `cannot load the generated variant library ${path}: ${(e as Error).message}`);
  }
  const entry = symbols.fi_variant_entry();
  if (entry === null || typeof entry === "bigint") throw new FlashInferError("internal", `${path}: fi_variant_entry returned ${String(entry)}`);
  const paramOffsets = Array.from({ length: paramCount }, (_, i) => Number(symbols.fi_variant_params_offset(i)));
  if (paramOffsets.some((o) => o < 0)) throw new FlashInferError("internal", `${path}: its parameters differ from the variant's description`);
  const lib = { kind, entry, paramsSize: Number(symbols.fi_variant_params_size()), paramOffsets };
  loaded.set(path, lib);
  return lib;
}

/** fi_prefill_run_variant with a loaded variant library; returns the native status. */
export function runPrefillVariant(runArgs: Uint8Array, variant: VariantLibrary, paramsAddress: number, useSoftmax: boolean,
  stream: Pointer | null): number {
  return lib().fi_prefill_run_variant(runArgs, variant.entry, paramsAddress as Pointer, useSoftmax ? 1 : 0, stream);
}


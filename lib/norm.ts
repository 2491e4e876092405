// Normalization layers (FlashInfer's flashinfer.norm): RMSNorm, fused residual add + RMSNorm,
// their Gemma variants (scale by 1 + weight) and LayerNorm, over the last dimension of
// input [..., hidden]. Computed in float32 (float64 on cpu), results rounded to input's dtype
// (nearest even). Rows may be strided (the last dimension contiguous, the leading dimensions
// collapsible into one row stride). Bad input throws a FlashInferError naming the argument and
// writes nothing. Shapes, dtypes and devices are checked by the native entry (norm.cpp).
import { argCheck } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty } from "./tensor.ts";

export interface RMSNormOptions {
  /** Added to the mean square before the square root (default 1e-6); finite and > 0. */
  eps?: number;
  /** Written instead of a new tensor: input's shape, dtype and device; may be input itself (in place), else must not overlap it. */
  out?: Tensor;
}

export interface FusedAddRMSNormOptions {
  /** default 1e-6; finite and > 0. */
  eps?: number;
}

export interface LayerNormOptions {
  /** Added to the variance (default 1e-5); finite and > 0. */
  eps?: number;
}

function live(t: unknown, name: string): Tensor {
  argCheck(t instanceof Tensor, () => `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  argCheck(!t.disposed, () => `${name}: tensor was disposed`);
  return t;
}

function epsOf(options: { eps?: number } | undefined, fallback: number): number {
  const eps = options?.eps ?? fallback;
  argCheck(typeof eps === "number" && Number.isFinite(eps) && eps > 0, () => `eps: must be a finite number > 0, got ${String(eps)}`);
  return eps;
}

const descs = Array.from({ length: 4 }, () => new TensorDescBuffer());
const [dA, dB, dC, dD] = descs as [TensorDescBuffer, TensorDescBuffer, TensorDescBuffer, TensorDescBuffer];

/** Runs `fill` into `out` if given, else into a new tensor like input (freed if `fill` throws). */
function withOut(input: Tensor, out: Tensor | undefined, fill: (o: Tensor) => void): Tensor {
  if (out !== undefined && out !== null) {
    fill(live(out, "out"));
    return out;
  }
  const o = empty(input.shape, { dtype: input.dtype, device: input.device });
  try {
    fill(o);
  } catch (e) {
    o.dispose();
    throw e;
  }
  return o;
}

function rms(name: string, gemma: number, input: Tensor, weight: Tensor, options?: RMSNormOptions): Tensor {
  const x = live(input, "input");
  const w = live(weight, "weight");
  const eps = epsOf(options, 1e-6);
  return withOut(x, options?.out, (o) => {
    check(lib().fi_norm_rmsnorm(dA.write(x.descFields()), dB.write(w.descFields()), dC.write(o.descFields()), eps, gemma,
      currentStreamPointer(x.device)), name);
  });
}

function fusedAdd(name: string, gemma: number, input: Tensor, residual: Tensor, weight: Tensor, options?: FusedAddRMSNormOptions): void {
  const x = live(input, "input");
  const r = live(residual, "residual");
  const w = live(weight, "weight");
  const eps = epsOf(options, 1e-6);
  check(lib().fi_norm_fused_add_rmsnorm(dA.write(x.descFields()), dB.write(r.descFields()), dC.write(w.descFields()), eps, gemma,
    currentStreamPointer(x.device)), name);
}

/** RMSNorm: out = input / sqrt(mean(input^2) + eps) * weight. input [..., hidden] float16/bfloat16/float32, weight [hidden] in input's dtype. */
export function rmsnorm(input: Tensor, weight: Tensor, options?: RMSNormOptions): Tensor {
  return rms("rmsnorm", 0, input, weight, options);
}

/** Gemma's RMSNorm: out = input / sqrt(mean(input^2) + eps) * (1 + weight). */
export function gemmaRmsnorm(input: Tensor, weight: Tensor, options?: RMSNormOptions): Tensor {
  return rms("gemmaRmsnorm", 1, input, weight, options);
}

/**
 * In place: residual += input (rounded to the dtype), then input = rmsnorm(residual, weight),
 * computed from the rounded sum as FlashInfer does. input and residual: same shape and dtype,
 * distinct memory.
 */
export function fusedAddRmsnorm(input: Tensor, residual: Tensor, weight: Tensor, options?: FusedAddRMSNormOptions): void {
  fusedAdd("fusedAddRmsnorm", 0, input, residual, weight, options);
}

/** In place like fusedAddRmsnorm, scaling by (1 + weight). */
export function gemmaFusedAddRmsnorm(input: Tensor, residual: Tensor, weight: Tensor, options?: FusedAddRMSNormOptions): void {
  fusedAdd("gemmaFusedAddRmsnorm", 1, input, residual, weight, options);
}

/**
 * LayerNorm: out = (input - mean) / sqrt(var + eps) * gamma + beta, var the biased variance.
 * gamma and beta [hidden], float32 or input's dtype (both the same).
 */
export function layernorm(input: Tensor, gamma: Tensor, beta: Tensor, options?: LayerNormOptions & { out?: Tensor }): Tensor {
  const x = live(input, "input");
  const g = live(gamma, "gamma");
  const b = live(beta, "beta");
  const eps = epsOf(options, 1e-5);
  return withOut(x, options?.out, (o) => {
    check(lib().fi_norm_layernorm(dA.write(x.descFields()), dB.write(g.descFields()), dC.write(b.descFields()), dD.write(o.descFields()), eps,
      currentStreamPointer(x.device)), "layernorm");
  });
}


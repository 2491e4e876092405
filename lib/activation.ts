// Fused gated activations (FlashInfer's flashinfer.activation): for input [..., 2 * d],
//   out[..., j] = act(input[..., j]) * input[..., d + j]
// with act one of silu(x) = x / (1 + exp(-x)), gelu(x) = 0.5 x (1 + erf(x / sqrt 2)) (exact),
// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). float16, bfloat16 or
// float32; computed in float32 (float64 on cpu), out in input's dtype (nearest even).
import { type DType, isFloating } from "./dtype.ts";
import { FlashInferError, argCheck } from "./errors.ts";
import { check, lib } from "./ffi/library.ts";
import { TensorDescBuffer } from "./ffi/structs.ts";
import { currentStreamPointer } from "./stream.ts";
import { Tensor, empty } from "./tensor.ts";

/** Options of the fused activations. */
export interface ActivationOptions {
  /** Output [..., d] in input's dtype on input's device (last dimension contiguous, must not overlap input). Default: a new contiguous tensor. */
  out?: Tensor;
}

const DTYPES: readonly DType[] = ["float16", "bfloat16", "float32"];
type Symbol = "fi_activation_silu_and_mul" | "fi_activation_gelu_and_mul" | "fi_activation_gelu_tanh_and_mul";
const descIn = new TensorDescBuffer();
const descOut = new TensorDescBuffer();

function actAndMul(symbol: Symbol, context: string, input: unknown, opts: ActivationOptions | undefined): Tensor {
  argCheck(input instanceof Tensor, () => `input: expected a Tensor, got ${input === null ? "null" : typeof input}`);
  argCheck(!input.disposed, "input: tensor was disposed");
  argCheck(opts === undefined || (typeof opts === "object" && opts !== null), "options: expected an object { out? }");
  if (!DTYPES.includes(input.dtype)) {
    throw new FlashInferError(isFloating(input.dtype) ? "unsupported" : "invalid_argument",
      `input: dtype must be float16, bfloat16 or float32, got ${input.dtype}`);
  }
  argCheck(input.ndim >= 1, "input: expected at least 1 dimension [..., 2 * d], got a scalar");
  const last = input.shape[input.ndim - 1]!;
  argCheck(last % 2 === 0, () => `input: last dimension must be even (2 * d), got ${last}`);
  const d = last / 2;
  const shape = [...input.shape.slice(0, -1), d];
  const outGiven = opts?.out;
  if (outGiven !== undefined) {
    argCheck(outGiven instanceof Tensor, "out: expected a Tensor");
    argCheck(!outGiven.disposed, "out: tensor was disposed");
    argCheck(outGiven.ndim === shape.length && shape.every((n, k) => outGiven.shape[k] === n),
      () => `out: shape must be [${shape.join(", ")}] (input's with the last dimension halved), got [${outGiven.shape.join(", ")}]`);
    argCheck(outGiven.dtype === input.dtype, () => `out: dtype must be ${input.dtype} (the dtype of input), got ${outGiven.dtype}`);
    argCheck(outGiven.device === input.device, () => `out: on ${outGiven.device} but input is on ${input.device}; all tensors must be on one device`);
  }
  const nonEmpty = shape.every((n) => n > 0);
  if (nonEmpty) {
    argCheck(input.strides[input.ndim - 1] === 1, () => `input: last dimension must be contiguous (stride 1), got stride ${input.strides[input.ndim - 1]}`);
    if (outGiven) {
      argCheck(d === 1 || outGiven.strides[outGiven.ndim - 1] === 1, () => `out: last dimension must be contiguous (stride 1), got stride ${outGiven.strides[outGiven.ndim - 1]}`);
      outGiven.shape.forEach((n, k) => argCheck(n <= 1 || outGiven.strides[k] !== 0,
        () => `out: is written, so it must not be a broadcast view (stride 0 in dimension ${k})`));
    }
  }
  const out = outGiven ?? empty(shape, { dtype: input.dtype, device: input.device });
  try {
    check(lib()[symbol](descIn.write(input.descFields()), descOut.write(out.descFields()), currentStreamPointer(input.device)), context);
  } catch (e) {
    if (!outGiven) out.dispose();
    throw e;
  }
  return out;
}

/** silu(input[..., :d]) * input[..., d:] for input [..., 2 * d]; returns out [..., d] (the given `out`, if any). */
export function siluAndMul(input: Tensor, opts?: ActivationOptions): Tensor {
  return actAndMul("fi_activation_silu_and_mul", "siluAndMul", input, opts);
}

/** gelu(input[..., :d]) * input[..., d:] (exact erf gelu) for input [..., 2 * d]; returns out [..., d]. */
export function geluAndMul(input: Tensor, opts?: ActivationOptions): Tensor {
  return actAndMul("fi_activation_gelu_and_mul", "geluAndMul", input, opts);
}

/** gelu_tanh(input[..., :d]) * input[..., d:] (tanh-approximated gelu) for input [..., 2 * d]; returns out [..., d]. */
export function geluTanhAndMul(input: Tensor, opts?: ActivationOptions): Tensor {
  return actAndMul("fi_activation_gelu_tanh_and_mul", "geluTanhAndMul", input, opts);
}

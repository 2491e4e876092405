// Gated activations at an LLM MLP size: input [8192, 2 * 14336] bf16 -> out [8192, 14336].
// bytes = input read once + output written once.
import * as fi from "../../lib/index.ts";
import type { CaseFactory, ElementwiseCase } from "./case.ts";

const ROWS = 8192, D = 14336;

export const cases: CaseFactory = (device) => {
  const ops = [
    ["siluAndMul", fi.siluAndMul],
    ["geluAndMul", fi.geluAndMul],
    ["geluTanhAndMul", fi.geluTanhAndMul],
  ] as const;
  return ops.map(([name, fn]): ElementwiseCase => {
    const input = fi.randn([ROWS, 2 * D], { dtype: "bfloat16", device, seed: 7 });
    const out = fi.empty([ROWS, D], { dtype: "bfloat16", device });
    return {
      name: `${name} [${ROWS}, 2*${D}] bf16`,
      bytes: input.nbytes + out.nbytes,
      run: () => void fn(input, { out }),
      dispose: () => {
        input.dispose();
        out.dispose();
      },
    };
  });
};

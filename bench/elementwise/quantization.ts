// Bit packing at LLM sizes: a custom mask of 64M bools (e.g. 8 requests of 2048 x 4096) packed
// little-endian (FlashInfer's custom-mask order). bytes = x read once + y written once. run()
// goes through the internal *Into variants, so nothing is allocated in the timed loop.
import * as fi from "../../lib/index.ts";
import { packbitsInto, segmentPackbitsInto } from "../../lib/quantization.ts";
import type { CaseFactory, ElementwiseCase } from "./case.ts";

const N = 64 << 20;
const SEGMENTS = 8;

export const cases: CaseFactory = (device) => {
  const u = fi.rand([N], { device, seed: 3 });
  const bits = u.to({ dtype: "bool" });
  u.dispose();
  const y = fi.empty([N / 8], { dtype: "uint8", device });
  const indptrHost = Int32Array.from({ length: SEGMENTS + 1 }, (_, i) => (i * N) / SEGMENTS);
  const indptr = fi.tensor(indptrHost, [SEGMENTS + 1], { device });
  const indptrNew = fi.empty([SEGMENTS + 1], { dtype: "int32", device });
  const plain: ElementwiseCase = {
    name: `packbits [${N}] bool little`,
    bytes: N + N / 8,
    run: () => packbitsInto(bits, y, "little"),
    dispose: () => {},
  };
  const segmented: ElementwiseCase = {
    name: `segmentPackbits [${N}] bool, ${SEGMENTS} segments, little`,
    bytes: N + N / 8,
    run: () => segmentPackbitsInto(bits, indptrHost, indptr, indptrNew, y, "little"),
    dispose: () => {
      for (const t of [bits, y, indptr, indptrNew]) t.dispose();
    },
  };
  return [plain, segmented];
};

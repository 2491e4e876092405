// One memory-bound op timed by bench/elementwise.bench.ts: `bytes` is what the op must move at
// the least (each input read once, each output written once).
import type * as fi from "../../lib/index.ts";

export interface ElementwiseCase {
  name: string;
  bytes: number;
  /** Launches the op once on the device's current stream. */
  run: () => void;
  /** Releases what the case allocated. */
  dispose: () => void;
  /** Issue target in TB/s, if any. */
  target?: number;
}

/** A family's cases for a device (each family of issue 6 adds a module in this folder). */
export type CaseFactory = (device: fi.Device) => ElementwiseCase[];

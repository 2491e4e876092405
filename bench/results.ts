// Appends benchmark figures to bench/results/<family>.jsonl, each with device, GPU name and date.
import { appendFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import * as fi from "../lib/index.ts";

export interface Figure {
  name: string;
  value: number;
  unit: string;
  /** Anything else that identifies the measurement (shape, dtype, peak, fraction of peak). */
  [extra: string]: unknown;
}

export function recordFigures(family: string, device: fi.Device, figures: Figure[]): void {
  const dir = join(import.meta.dir, "results");
  mkdirSync(dir, { recursive: true });
  const props = fi.deviceProperties(device);
  const date = new Date().toISOString();
  const lines = figures.map((f) => JSON.stringify({ date, device, deviceName: props.name, ...f }));
  appendFileSync(join(dir, `${family}.jsonl`), lines.join("\n") + "\n");
}

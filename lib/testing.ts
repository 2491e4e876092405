// Timing helpers for benchmarks: device time with events, median of many runs, L2 flushed.
import { type Device, defaultDevice, deviceProperties, parseDevice, synchronize } from "./device.ts";
import { argCheck, checkOptions } from "./errors.ts";
import { Event, currentStream } from "./stream.ts";
import { type Tensor, empty } from "./tensor.ts";

export interface BenchOptions {
  device?: Device | string;
  /** Untimed runs first (default 5). */
  warmup?: number;
  /** Timed runs (default 50). */
  iterations?: number;
  /** Overwrite a buffer twice the L2 size before each timed run so inputs come from DRAM (default true). */
  flushL2?: boolean;
}

export interface BenchResult {
  /** Median milliseconds of one run. */
  medianMs: number;
  minMs: number;
  maxMs: number;
  /** Every timed run, milliseconds, in order. */
  samplesMs: number[];
  device: Device;
}

function summarize(samplesMs: number[], device: Device): BenchResult {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const medianMs = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { medianMs, minMs: sorted[0]!, maxMs: sorted[sorted.length - 1]!, samplesMs, device };
}

/**
 * Times `fn` (which launches work on the device's current stream). On CUDA each run is bracketed
 * by events, so only device time counts; on cpu the host clock is used.
 */
export function benchDeviceTime(fn: () => void, opts: BenchOptions = {}): BenchResult {
  argCheck(typeof fn === "function", "fn: expected a function");
  checkOptions(opts);
  const device = parseDevice(opts.device ?? defaultDevice());
  const warmup = opts.warmup ?? 5;
  const iterations = opts.iterations ?? 50;
  argCheck(Number.isInteger(iterations) && iterations > 0, "iterations: expected a positive integer");
  const flush = opts.flushL2 ?? true;
  for (let i = 0; i < warmup; ++i) fn();
  if (device === "cpu") {
    const samples: number[] = [];
    for (let i = 0; i < iterations; ++i) {
      const t0 = performance.now();
      fn();
      samples.push(performance.now() - t0);
    }
    return summarize(samples, device);
  }
  let scratch: Tensor | undefined;
  if (flush) scratch = empty([2 * Math.max(deviceProperties(device).l2CacheSize, 1 << 20)], { dtype: "uint8", device });
  const stream = currentStream(device);
  const starts = Array.from({ length: iterations }, () => new Event({ device }));
  const ends = Array.from({ length: iterations }, () => new Event({ device }));
  try {
    for (let i = 0; i < iterations; ++i) {
      scratch?.fill_(i & 1);
      starts[i]!.record(stream);
      fn();
      ends[i]!.record(stream);
    }
    synchronize(device);
    return summarize(starts.map((s, i) => s.elapsedMs(ends[i]!)), device);
  } finally {
    for (const e of [...starts, ...ends]) e.dispose();
    scratch?.dispose();
  }
}

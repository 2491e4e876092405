// Streams, events and CUDA graphs, and the current stream that ops launch on.
import type { Pointer } from "./ffi/backend.ts";
import { type Device, defaultDevice, deviceIndex, parseDevice } from "./device.ts";
import { FlashInferError, argCheck, checkOptions } from "./errors.ts";
import { asPointer, check, lib, outFloat, outInt, outPointer } from "./ffi/library.ts";

const ADOPT = Symbol("adopt");

/**
 * A CUDA stream. `Stream.default(device)` is the legacy default stream (handle 0).
 * Streams order against the default stream, on which tensors are allocated and freed, unless
 * created with `nonBlocking: true`; then keep tensors alive until the stream's work is done.
 */
export class Stream {
  readonly device: Device;
  #handle: number;
  readonly #owned: boolean;

  constructor(opts: { device?: Device | string; nonBlocking?: boolean; [ADOPT]?: number } = {}) {
    checkOptions(opts);
    this.device = parseDevice(opts.device ?? defaultDevice());
    argCheck(this.device !== "cpu", "Stream: device must be a CUDA device, got cpu");
    const adopted = opts[ADOPT];
    this.#owned = adopted === undefined;
    this.#handle = adopted ?? outPointer((slot) => lib().fi_stream_create(deviceIndex(this.device), opts.nonBlocking ? 1 : 0, slot), "Stream");
    if (this.#owned) streamRegistry.register(this, this.#handle, this);
  }

  static #defaults = new Map<Device, Stream>();
  /** The device's legacy default stream, on which tensors are allocated and freed. */
  static default(device?: Device | string): Stream {
    const d = parseDevice(device ?? defaultDevice());
    let s = Stream.#defaults.get(d);
    if (!s) Stream.#defaults.set(d, (s = new Stream({ device: d, [ADOPT]: 0 })));
    return s;
  }

  /** Native handle (0 for the default stream). */
  get handle(): number {
    if (this.#handle === -1) throw new FlashInferError("invalid_argument", "stream: used after dispose()");
    return this.#handle;
  }
  get pointer(): Pointer | null {
    return asPointer(this.handle);
  }

  synchronize(): void {
    check(lib().fi_stream_synchronize(this.pointer), "Stream.synchronize");
  }

  /** True when all work queued on the stream has finished. */
  query(): boolean {
    return outInt((slot) => lib().fi_stream_query(this.pointer, slot), "Stream.query") === 1;
  }

  /** Resolves once the stream's work so far is done, without blocking the event loop. */
  synchronizeAsync(pollMs = 0.2): Promise<void> {
    const event = new Event({ device: this.device, enableTiming: false });
    event.record(this);
    return event.wait(pollMs).finally(() => event.dispose());
  }

  /** Makes this stream wait for `event` without blocking the host. */
  waitEvent(event: Event): void {
    check(lib().fi_stream_wait_event(this.pointer, event.pointer), "Stream.waitEvent");
  }

  dispose(): void {
    if (!this.#owned || this.#handle === -1) return;
    streamRegistry.unregister(this);
    check(lib().fi_stream_destroy(asPointer(this.#handle)), "Stream.dispose");
    this.#handle = -1;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

const streamRegistry = new FinalizationRegistry<number>((h) => lib().fi_stream_destroy(asPointer(h)));
const eventRegistry = new FinalizationRegistry<number>((h) => lib().fi_event_destroy(asPointer(h)));
const graphRegistry = new FinalizationRegistry<number>((h) => lib().fi_graph_destroy(asPointer(h)));

const current = new Map<Device, Stream>();

/** The stream that ops on `device` launch on (the default stream unless inside withStream). */
export function currentStream(device?: Device | string): Stream {
  const d = parseDevice(device ?? defaultDevice());
  return current.get(d) ?? Stream.default(d);
}

/** Native handle of the current stream for a device (0 on cpu). */
export function currentStreamPointer(device: Device): Pointer | null {
  if (device === "cpu") return null;
  return current.get(device)?.pointer ?? null;
}

/** Runs `fn` with `stream` as its device's current stream; restores the previous one after. */
export function withStream<T>(stream: Stream, fn: () => T): T {
  const previous = current.get(stream.device);
  current.set(stream.device, stream);
  try {
    const result = fn();
    argCheck(!(result instanceof Promise), "withStream: fn must be synchronous (the stream is restored when it returns)");
    return result;
  } finally {
    if (previous) current.set(stream.device, previous);
    else current.delete(stream.device);
  }
}

/** A CUDA event: record it on a stream, then query, wait on or time against it. */
export class Event {
  readonly device: Device;
  #handle: number;

  constructor(opts: { device?: Device | string; enableTiming?: boolean } = {}) {
    checkOptions(opts);
    this.device = parseDevice(opts.device ?? defaultDevice());
    argCheck(this.device !== "cpu", "Event: device must be a CUDA device, got cpu");
    this.#handle = outPointer(
      (slot) => lib().fi_event_create(deviceIndex(this.device), opts.enableTiming === false ? 0 : 1, slot),
      "Event",
    );
    eventRegistry.register(this, this.#handle, this);
  }

  get pointer(): Pointer {
    if (this.#handle === -1) throw new FlashInferError("invalid_argument", "event: used after dispose()");
    return this.#handle as Pointer;
  }

  /** Records the event on `stream` (default: the device's current stream). */
  record(stream?: Stream): this {
    const s = stream ?? currentStream(this.device);
    argCheck(s.device === this.device, `Event.record: stream is on ${s.device}, the event on ${this.device}`);
    check(lib().fi_event_record(this.pointer, s.pointer), "Event.record");
    return this;
  }

  query(): boolean {
    return outInt((slot) => lib().fi_event_query(this.pointer, slot), "Event.query") === 1;
  }

  synchronize(): void {
    check(lib().fi_event_synchronize(this.pointer), "Event.synchronize");
  }

  /** Resolves when the event has completed, polling from a timer (the event loop stays free). */
  wait(pollMs = 0.2): Promise<void> {
    return new Promise((resolve, reject) => {
      const poll = () => {
        try {
          if (this.query()) resolve();
          else setTimeout(poll, pollMs);
        } catch (e) {
          reject(e);
        }
      };
      poll();
    });
  }

  /** Milliseconds from this event to `end` (both recorded and completed). */
  elapsedMs(end: Event): number {
    return outFloat((slot) => lib().fi_event_elapsed_ms(this.pointer, end.pointer, slot), "Event.elapsedMs");
  }

  dispose(): void {
    if (this.#handle === -1) return;
    eventRegistry.unregister(this);
    check(lib().fi_event_destroy(this.#handle as Pointer), "Event.dispose");
    this.#handle = -1;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

let captureDepth = 0;

/** @internal Whether a CudaGraph capture is running (code that would allocate refuses instead). */
export function capturingGraph(): boolean {
  return captureDepth > 0;
}

/**
 * A CUDA graph: `capture(fn)` records the launches `fn` makes (on a private capture stream that
 * is current while fn runs), `replay()` relaunches them. Allocate and free tensors outside the
 * capture: the memory a graph reads and writes must stay alive, at the same addresses, while it
 * replays.
 */
export class CudaGraph {
  readonly device: Device;
  readonly stream: Stream;
  #exec = 0;

  constructor(opts: { device?: Device | string } = {}) {
    checkOptions(opts);
    this.device = parseDevice(opts.device ?? defaultDevice());
    argCheck(this.device !== "cpu", "CudaGraph: device must be a CUDA device, got cpu");
    // Capture on a non-blocking stream: a blocking one would depend on the legacy stream,
    // which capture forbids. Nothing runs on it outside capture.
    this.stream = new Stream({ device: this.device, nonBlocking: true });
  }

  get captured(): boolean {
    return this.#exec !== 0;
  }

  capture(fn: () => void): this {
    argCheck(this.#exec === 0, "CudaGraph.capture: this graph already holds a capture; make a new CudaGraph");
    // Work queued before the capture must not be reordered into it.
    const before = new Event({ device: this.device, enableTiming: false });
    before.record(currentStream(this.device));
    this.stream.waitEvent(before);
    before.dispose();
    check(lib().fi_graph_begin_capture(this.stream.pointer), "CudaGraph.capture");
    let failure: unknown;
    ++captureDepth;
    try {
      withStream(this.stream, fn);
    } catch (e) {
      failure = e;
    } finally {
      --captureDepth;
    }
    if (failure) {
      // Leave capture mode whatever state the capture is in, then report fn's own error.
      const slot = new BigUint64Array(1);
      if (lib().fi_graph_end_capture(this.stream.pointer, slot) === 0 && slot[0]) lib().fi_graph_destroy(Number(slot[0]) as Pointer);
      throw failure;
    }
    const exec = outPointer((slot) => lib().fi_graph_end_capture(this.stream.pointer, slot), "CudaGraph.capture");
    this.#exec = exec;
    graphRegistry.register(this, exec, this);
    return this;
  }

  /** Launches the captured work on `stream` (default: the device's current stream). */
  replay(stream?: Stream): void {
    argCheck(this.#exec !== 0, "CudaGraph.replay: nothing captured (call capture first, or the graph was disposed)");
    const s = stream ?? currentStream(this.device);
    check(lib().fi_graph_launch(this.#exec as Pointer, s.pointer), "CudaGraph.replay");
  }

  dispose(): void {
    if (this.#exec !== 0) {
      graphRegistry.unregister(this);
      check(lib().fi_graph_destroy(this.#exec as Pointer), "CudaGraph.dispose");
      this.#exec = 0;
    }
    this.stream.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}


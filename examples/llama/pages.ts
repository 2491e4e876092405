// The paged KV cache's page allocator: a free list with reference counts, so pages can be shared
// (a prompt's pages by its parallel samples, later requests with the same prefix) and return to
// the free list when the last holder releases them.
import * as fi from "../../lib/index.ts";

export class PageAllocator {
  readonly numPages: number;
  readonly #refs: Int32Array;
  readonly #free: number[];

  constructor(numPages: number) {
    if (!Number.isInteger(numPages) || numPages < 1) throw new fi.FlashInferError("invalid_argument", `numPages: expected a positive integer, got ${numPages}`);
    this.numPages = numPages;
    this.#refs = new Int32Array(numPages);
    this.#free = Array.from({ length: numPages }, (_, i) => numPages - 1 - i); // pop() hands out 0, 1, 2, ...
  }

  get freePages(): number {
    return this.#free.length;
  }

  /** n fresh pages (reference count 1), or null when fewer are free (nothing taken). */
  allocate(n: number): number[] | null {
    if (n > this.#free.length) return null;
    const pages = Array.from({ length: n }, () => this.#free.pop()!);
    for (const p of pages) this.#refs[p] = 1;
    return pages;
  }

  /** One more holder of each page (sharing). */
  retain(pages: readonly number[]): void {
    for (const p of pages) {
      if (!(this.#refs[p]! > 0)) throw new fi.FlashInferError("invalid_argument", `retain: page ${p} is not allocated`);
      this.#refs[p]! += 1;
    }
  }

  /** One holder fewer; pages nobody holds return to the free list. */
  release(pages: readonly number[]): void {
    for (const p of pages) {
      if (!(this.#refs[p]! > 0)) throw new fi.FlashInferError("invalid_argument", `release: page ${p} is not allocated`);
      if (--this.#refs[p]! === 0) this.#free.push(p);
    }
  }

  references(page: number): number {
    return this.#refs[page]!;
  }
}

// The paged KV cache's page allocator: a free list with reference counts, so pages can be shared
// (a prompt's pages by its parallel samples, later requests with the same prefix) and return to
// the free list when the last holder releases them.
import * as fi from "../../lib/index.ts";

export class PageAllocator {
  readonly numPages: number;
  readonly #refs: Int32Array;
  // The free pages as a stack (4 bytes a page: a cache of millions of pages stays small here),
  // #free[0 .. #top) free, the top handed out first.
  readonly #free: Int32Array;
  #top: number;

  constructor(numPages: number) {
    // Page indices are int32 in the page tables.
    if (!Number.isInteger(numPages) || numPages < 1 || numPages > 0x7fffffff)
      throw new fi.FlashInferError("invalid_argument", `numPages: expected an integer in 1..2^31 - 1, got ${String(numPages)}`);
    this.numPages = numPages;
    try {
      this.#refs = new Int32Array(numPages);
      this.#free = Int32Array.from({ length: numPages }, (_, i) => numPages - 1 - i); // handed out 0, 1, 2, ...
    } catch (e) {
      throw new fi.FlashInferError("out_of_memory", `numPages: the allocator's lists for ${numPages} pages do not fit in memory (${(e as Error).message})`);
    }
    this.#top = numPages;
  }

  get freePages(): number {
    return this.#top;
  }

  /** n fresh pages (reference count 1), or null when fewer are free (nothing taken). */
  allocate(n: number): number[] | null {
    if (n > this.#top) return null;
    const pages = Array.from({ length: n }, () => this.#free[--this.#top]!);
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
      if (--this.#refs[p]! === 0) this.#free[this.#top++] = p;
    }
  }

  references(page: number): number {
    return this.#refs[page]!;
  }
}

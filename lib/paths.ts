// Where the package's files are: the folder holding its package.json, found by walking up from
// this module, so that the same code works from lib/ (a checkout, or Bun importing the package's
// TypeScript) and from dist/ (the bundle that Deno imports from node_modules: scripts/pack.ts).
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

function findPackageRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, "utf8")) as { name?: string }).name === "flashinfer-bun") return dir;
      } catch {
        // not ours (or unreadable): keep walking up
      }
    }
    if (dirname(dir) === dir) return join(start, ".."); // not found: assume lib/ under the root
  }
}

export const packageRoot = findPackageRoot(import.meta.dirname);

// The programs in examples/ run as a user would run them (bun examples/<name>.ts, default device)
// and print what they promise.
import { expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

function runExample(name: string): string {
  const env = { ...process.env, FLASHINFER_CACHE_DIR: mkdtempSync(join(tmpdir(), "fi-example-")) };
  const r = Bun.spawnSync([process.execPath, join(import.meta.dir, "..", "examples", name)], { env, stdout: "pipe", stderr: "pipe" });
  const out = new TextDecoder().decode(r.stdout), err = new TextDecoder().decode(r.stderr);
  expect({ name, exitCode: r.exitCode, err }).toEqual({ name, exitCode: 0, err: "" });
  return out;
}

test("examples/custom_variant.ts compiles its variant and prints finite outputs", () => {
  expect(runExample("custom_variant.ts")).toContain("finite: true");
}, 300_000);

test("examples/block_sparse.ts: an empty block row has lse -Infinity", () => {
  expect(runExample("block_sparse.ts")).toMatch(/row 50 \(an empty block row\): -Infinity/);
});

test("examples/shared_prefix.ts: the cascade and the flat decode agree", () => {
  const m = runExample("shared_prefix.ts").match(/max \|difference\| ([0-9.e+-]+)/);
  expect(m).not.toBeNull();
  expect(Number(m![1])).toBeLessThan(2e-3);
});

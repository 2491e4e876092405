// The npm package (scripts/pack.ts): the tarball installs into a fresh project with npm and runs a
// kernel from its prebuilt library, with no CMake or compiler on PATH, under Bun and (through the
// package's "deno" export, the bundled dist/) under Deno; and the loader's order
// (FLASHINFER_LIBRARY, local build, prebuilt, build from source) picks the prebuilt one there.
import { expect, test } from "bun:test";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import * as fi from "../lib/index.ts";

const npm = Bun.which("npm");
const root = join(import.meta.dir, "..");

/** Packs (scripts/pack.ts with `packArgs`) and installs the tarball into a fresh project; returns the project. */
function installPacked(packArgs: string[]): string {
  const out = mkdtempSync(join(tmpdir(), "fi-pack-"));
  const pack = Bun.spawnSync([process.execPath, join(root, "scripts", "pack.ts"), "--out", out, ...packArgs], { stdout: "pipe", stderr: "pipe" });
  expect(new TextDecoder().decode(pack.stderr)).toBe("");
  expect(pack.exitCode).toBe(0);
  const tarball = new TextDecoder().decode(pack.stdout).trim();
  expect(tarball.endsWith(".tgz")).toBe(true);
  const project = mkdtempSync(join(tmpdir(), "fi-project-"));
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "probe", private: true, type: "module" }));
  const install = Bun.spawnSync([npm!, "install", "--offline", "--no-audit", "--no-fund", tarball], { cwd: project, stdout: "pipe", stderr: "pipe" });
  expect(install.exitCode).toBe(0);
  writeFileSync(join(project, "probe.ts"), `
    import * as fi from "flashinfer-bun";
    const x = fi.tensor([1, 2, 3, 4, -1, 0.5, 2, 8], [2, 4], { device: "cpu" });
    const w = fi.tensor([1, 0.5, 2, -1], [4], { device: "cpu" });
    console.log(JSON.stringify({ path: fi.libraryPath(), y: Array.from(fi.rmsnorm(x, w, { eps: 1e-6 }).toFloat32Array()) }));`);
  return project;
}

/** Runs the probe in `project` (under Bun, or the given runtime command); checks rmsnorm's values and returns the library path it loaded. */
function runProbe(project: string, env: Record<string, string>, runtime: string[] = [process.execPath]): string {
  const run = Bun.spawnSync([...runtime, "probe.ts"], { cwd: project, env, stdout: "pipe", stderr: "pipe" });
  expect(run.exitCode).toBe(0);
  const result = JSON.parse(new TextDecoder().decode(run.stdout).trim().split("\n").at(-1)!) as { path: string; y: number[] };
  const x = [[1, 2, 3, 4], [-1, 0.5, 2, 8]], w = [1, 0.5, 2, -1];
  const expected = x.flatMap((row) => {
    const rms = Math.sqrt(row.reduce((a, v) => a + v * v, 0) / row.length + 1e-6);
    return row.map((v, i) => (v / rms) * w[i]!);
  });
  expect(result.y.length).toBe(8);
  result.y.forEach((v, i) => expect(Math.abs(v - expected[i]!)).toBeLessThan(1e-5));
  return result.path;
}

test.skipIf(!npm)("npm pack: the tarball installs into a fresh project and runs rmsnorm from its prebuilt library, without cmake", () => {
  const project = installPacked(["--library", fi.libraryPath()]);
  // PATH holds bun only: no cmake, no compiler; and no FLASHINFER_LIBRARY.
  const env = { HOME: process.env.HOME ?? project, PATH: dirname(process.execPath) };
  const prebuilt = join(project, "node_modules", "flashinfer-bun", "prebuilt", `${process.platform}-${process.arch}`, "libflashinfer.so");
  expect(runProbe(project, env)).toBe(prebuilt);
  // Deno imports the same package from node_modules through its "deno" export (dist/, JavaScript).
  const deno = join(root, "node_modules", ".bin", "deno");
  if (existsSync(deno)) expect(runProbe(project, env, [deno, "run", "--allow-ffi", "--allow-read", "--allow-env"])).toBe(prebuilt);
}, 300_000);

test.skipIf(!npm || !Bun.which("cmake"))("npm pack without a prebuilt library: the installed package builds one from its sources on first use", () => {
  const project = installPacked(["--no-prebuilt"]);
  // The CPU backend only (what a machine without a GPU builds; CI's FLASHINFER_CUDA=1 is dropped).
  const path = runProbe(project, { HOME: process.env.HOME ?? project, PATH: process.env.PATH ?? "", FLASHINFER_CUDA: "0" });
  expect(path).toBe(join(project, "node_modules", "flashinfer-bun", "build", "libflashinfer.so"));
}, 600_000);

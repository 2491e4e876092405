// Makes the npm package: the files package.json lists (TypeScript library, native sources, the
// build script), dist/ (the library bundled to JavaScript: Deno will not strip TypeScript types
// under node_modules, so package.json's "deno" export points there; Bun imports lib/ directly)
// and a prebuilt library for this platform under prebuilt/<platform>-<arch>/, so that the
// package installs and runs without CMake or a compiler. Where no prebuilt library matches, the
// installed package builds one from its sources on first use (lib/ffi/library.ts).
//   bun scripts/pack.ts [--out DIR] [--library PATH | --no-prebuilt]    prints the tarball's path
// --library: the library to ship (default: the one this checkout loads: $FLASHINFER_LIBRARY or
// build/libflashinfer.so); the package is staged in a temporary folder, the checkout is untouched.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dir, "..");
const arg = (name: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const out = resolve(arg("--out") ?? root);
const withPrebuilt = !process.argv.includes("--no-prebuilt");
const library = resolve(arg("--library") ?? (process.env.FLASHINFER_LIBRARY || join(root, "build", "libflashinfer.so")));
if (withPrebuilt && !existsSync(library)) {
  console.error(`pack: no library at ${library}; run \`npm run build\` first (or pass --library)`);
  process.exit(1);
}

const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { files: string[] };
const stage = mkdtempSync(join(tmpdir(), "flashinfer-pack-"));
try {
  for (const f of ["package.json", ...pkg.files.filter((f) => f !== "prebuilt" && f !== "dist")]) cpSync(join(root, f), join(stage, f), { recursive: true });
  const bundle = await Bun.build({ entrypoints: [join(root, "lib", "index.ts")], outdir: join(stage, "dist"), target: "node", format: "esm",
    external: ["bun:ffi"], splitting: true });
  if (!bundle.success) {
    console.error(`pack: bundling lib/ for dist/ failed:\n${bundle.logs.map(String).join("\n")}`);
    process.exit(1);
  }
  if (withPrebuilt) {
    const dest = join(stage, "prebuilt", `${process.platform}-${process.arch}`);
    mkdirSync(dest, { recursive: true });
    cpSync(library, join(dest, "libflashinfer.so"));
  }
  mkdirSync(out, { recursive: true });
  const r = Bun.spawnSync(["npm", "pack", "--silent", "--pack-destination", out], { cwd: stage, stdout: "pipe", stderr: "inherit" });
  const name = new TextDecoder().decode(r.stdout).trim().split("\n").at(-1);
  if (r.exitCode !== 0 || !name) {
    console.error(`pack: npm pack failed (exit ${r.exitCode})`);
    process.exit(1);
  }
  console.log(join(out, name));
} finally {
  rmSync(stage, { recursive: true, force: true });
}

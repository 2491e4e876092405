// Configures and builds native/ with CMake into build/libflashinfer.so.
//   bun scripts/build.ts              configure (when needed) and build
//   bun scripts/build.ts --if-needed  same, but does nothing when FLASHINFER_LIBRARY points elsewhere
// Environment: FLASHINFER_CUDA=0 skips the CUDA backend; FLASHINFER_CUDA_ARCHS="80;90a" picks targets;
// FLASHINFER_BUILD_TYPE (default Release).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dir, "..");
const buildDir = join(root, "build");
const ifNeeded = process.argv.includes("--if-needed");

if (ifNeeded && process.env.FLASHINFER_LIBRARY) {
  console.log(`build: using FLASHINFER_LIBRARY=${process.env.FLASHINFER_LIBRARY}`);
  process.exit(0);
}

function run(cmd: string[]): void {
  const r = Bun.spawnSync(cmd, { cwd: root, stdout: "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) {
    console.error(`build: \`${cmd.join(" ")}\` failed (exit ${r.exitCode})`);
    process.exit(r.exitCode ?? 1);
  }
}

if (!Bun.which("cmake")) {
  console.error("build: cmake not found; install CMake 3.24+ and a C++17 compiler (and nvcc for the CUDA backend)");
  process.exit(1);
}

const config = {
  cuda: process.env.FLASHINFER_CUDA !== "0",
  archs: process.env.FLASHINFER_CUDA_ARCHS || "80;90a",
  buildType: process.env.FLASHINFER_BUILD_TYPE || "Release",
};
const stampPath = join(buildDir, "flashinfer-config.json");
const stamp = JSON.stringify(config);
const configured = existsSync(join(buildDir, "CMakeCache.txt")) && existsSync(stampPath) && readFileSync(stampPath, "utf8") === stamp;

if (!configured) {
  const generator = Bun.which("ninja") ? ["-G", "Ninja"] : [];
  run([
    "cmake", "-S", "native", "-B", "build", ...generator,
    `-DFLASHINFER_CUDA=${config.cuda ? "ON" : "OFF"}`,
    `-DFLASHINFER_CUDA_ARCHS=${config.archs}`,
    `-DCMAKE_BUILD_TYPE=${config.buildType}`,
  ]);
  writeFileSync(stampPath, stamp);
}
run(["cmake", "--build", "build", "--parallel", String(availableParallelism())]);

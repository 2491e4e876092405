// Configures and builds native/ with CMake into build/libflashinfer.so.
//   bun scripts/build.ts              configure (when needed) and build
//   bun scripts/build.ts --if-needed  same, but does nothing when FLASHINFER_LIBRARY points elsewhere
// Environment: FLASHINFER_CUDA=0 skips the CUDA backend, =1 builds it without a GPU;
// FLASHINFER_CUDA_ARCHS="80;90a" picks targets (default: the GPUs present); FLASHINFER_BUILD_TYPE
// (default Release). ccache is used when found.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";
import { BUILTIN_HEADER, writeBuiltinVariantHeader } from "../lib/jit_builtin.ts";

const root = resolve(import.meta.dir, "..");
const buildDir = join(root, "build");
const ifNeeded = process.argv.includes("--if-needed");

if (ifNeeded && process.env.FLASHINFER_LIBRARY) {
  console.log(`build: using FLASHINFER_LIBRARY=${process.env.FLASHINFER_LIBRARY}`);
  process.exit(0);
}

// The built-in attention variant's header, generated from its description (lib/jit_builtin.ts)
// ahead of time: the kernels include it. Rewritten only when it changes.
if (writeBuiltinVariantHeader(join(root, "native"))) console.log(`build: generated native/src/attention/${BUILTIN_HEADER} (lib/jit_builtin.ts)`);

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

// The CUDA targets: FLASHINFER_CUDA=0 builds none; FLASHINFER_CUDA_ARCHS picks them; else the
// GPUs present (nvidia-smi's compute capabilities; 9.0 builds sm_90a, which the Hopper kernels
// need). With no GPU, none unless FLASHINFER_CUDA=1 (CI sets it so that the CUDA code keeps
// compiling there): compiling kernels for a machine that cannot run them is most of a CPU-only
// setup's time.
function cudaTargets(): { cuda: boolean; archs: string; why: string } {
  if (process.env.FLASHINFER_CUDA === "0") return { cuda: false, archs: "", why: "FLASHINFER_CUDA=0" };
  if (process.env.FLASHINFER_CUDA_ARCHS) return { cuda: true, archs: process.env.FLASHINFER_CUDA_ARCHS, why: "FLASHINFER_CUDA_ARCHS" };
  const smi = Bun.which("nvidia-smi") ? Bun.spawnSync(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], { stdout: "pipe", stderr: "pipe" }) : null;
  const caps = smi?.exitCode === 0 ? new TextDecoder().decode(smi.stdout).split("\n").map((l) => l.trim()).filter((l) => /^\d+\.\d+$/.test(l)) : [];
  if (caps.length > 0) {
    const archs = [...new Set(caps.map((c) => (c === "9.0" ? "90a" : c.replace(".", ""))))].join(";");
    return { cuda: true, archs, why: `the GPUs present (compute capability ${[...new Set(caps)].join(", ")})` };
  }
  if (process.env.FLASHINFER_CUDA === "1") return { cuda: true, archs: "80;90a", why: "FLASHINFER_CUDA=1 without a GPU" };
  return { cuda: false, archs: "", why: "no GPU found (FLASHINFER_CUDA=1 builds the CUDA backend anyway)" };
}

const targets = cudaTargets();
const ccache = Bun.which("ccache");
const config = {
  cuda: targets.cuda,
  archs: targets.archs,
  buildType: process.env.FLASHINFER_BUILD_TYPE || "Release",
  ccache: !!ccache,
};
console.log(`build: CUDA backend ${config.cuda ? `for ${config.archs}` : "off"} (${targets.why})${ccache ? ", ccache" : ""}`);
const stampPath = join(buildDir, "flashinfer-config.json");
const stamp = JSON.stringify(config);
const configured = existsSync(join(buildDir, "CMakeCache.txt")) && existsSync(stampPath) && readFileSync(stampPath, "utf8") === stamp;

if (!configured) {
  const generator = Bun.which("ninja") ? ["-G", "Ninja"] : [];
  run([
    "cmake", "-S", "native", "-B", "build", ...generator,
    `-DFLASHINFER_CUDA=${config.cuda ? "ON" : "OFF"}`,
    ...(config.cuda ? [`-DFLASHINFER_CUDA_ARCHS=${config.archs}`] : []),
    `-DCMAKE_BUILD_TYPE=${config.buildType}`,
    ...(ccache ? [`-DCMAKE_CXX_COMPILER_LAUNCHER=${ccache}`, `-DCMAKE_CUDA_COMPILER_LAUNCHER=${ccache}`] : []),
  ]);
  writeFileSync(stampPath, stamp);
}
run(["cmake", "--build", "build", "--parallel", String(availableParallelism())]);

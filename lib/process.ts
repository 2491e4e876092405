// Running programs, portably (Bun and Deno both provide node:child_process): the kernel
// generator's compilers and the build-on-first-use of lib/ffi/library.ts.
import { spawnSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** The path of an executable on PATH (or the path itself if it has a slash and is executable), else null. */
export function which(command: string): string | null {
  const executable = (p: string) => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (command.includes("/")) return executable(command) ? command : null;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const p = join(dir || ".", command);
    if (executable(p)) return p;
  }
  return null;
}

export interface RunResult {
  /** null when a signal stopped it (signal then says which). */
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs argv to completion; output is captured, or shown (inherit) and returned empty. */
export function run(argv: string[], opts: { cwd?: string; inherit?: boolean } = {}): RunResult {
  const r = spawnSync(argv[0]!, argv.slice(1), { cwd: opts.cwd, stdio: opts.inherit ? "inherit" : "pipe", encoding: "utf8", maxBuffer: 64 << 20 });
  return { exitCode: r.status, signal: r.signal ?? (r.error ? String(r.error.message) : null), stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

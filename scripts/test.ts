// `npm test`: builds the library if needed, runs `bun test` (extra arguments are passed on), then
// the Deno part (test/deno/, `npm run test:deno`) when no arguments narrow the run and Deno is
// installed (a devDependency), and closes with the plain line "N passed, N failed, N skipped"
// counted from both JUnit reports.
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dir, "..");
const report = join(root, "build", "test-report.xml");
const bun = process.execPath;

const build = Bun.spawnSync([bun, join(root, "scripts", "build.ts"), "--if-needed"], { cwd: root, stdout: "inherit", stderr: "inherit" });
if (build.exitCode !== 0) {
  console.log("0 passed, 1 failed");
  process.exit(build.exitCode ?? 1);
}

mkdirSync(join(root, "build"), { recursive: true });
rmSync(report, { force: true });
const args = [bun, "test", "--timeout", "300000", "--reporter=junit", `--reporter-outfile=${report}`, ...process.argv.slice(2)];
const run = Bun.spawnSync(args, { cwd: root, stdout: "inherit", stderr: "inherit" });

let passed = 0, failed = 0, skipped = 0;
/** Adds a JUnit report's test cases to the counts; false when there is no report. */
function count(path: string): boolean {
  if (!existsSync(path)) return false;
  const xml = readFileSync(path, "utf8");
  for (const m of xml.matchAll(/<testcase\b[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const body = m[2] ?? "";
    if (/<(failure|error)\b/.test(body)) failed++;
    else if (/<skipped\b/.test(body)) skipped++;
    else passed++;
  }
  return true;
}
count(report);
// A run that died before writing its report, or that failed outside any test, still fails.
if (run.exitCode !== 0 && failed === 0) failed = 1;
let exitCode = run.exitCode ?? 1;

const deno = join(root, "node_modules", ".bin", "deno");
if (process.argv.length <= 2 && existsSync(deno)) {
  const denoReport = join(root, "build", "deno-report.xml");
  rmSync(denoReport, { force: true });
  const d = Bun.spawnSync([deno, "test", "--allow-all", "--no-check", `--junit-path=${denoReport}`, "test/deno/families.ts"], { cwd: root, stdout: "inherit", stderr: "inherit" });
  const before = failed;
  if (!count(denoReport) || (d.exitCode !== 0 && failed === before)) failed++;
  if (d.exitCode !== 0) exitCode = d.exitCode ?? 1;
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(exitCode);

// `npm test`: builds the library if needed, runs `bun test` (extra arguments are passed on),
// and closes with the plain line "N passed, N failed, N skipped" counted from the JUnit report.
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
if (existsSync(report)) {
  const xml = readFileSync(report, "utf8");
  for (const m of xml.matchAll(/<testcase\b[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const body = m[2] ?? "";
    if (/<(failure|error)\b/.test(body)) failed++;
    else if (/<skipped\b/.test(body)) skipped++;
    else passed++;
  }
}
// A run that died before writing its report, or that failed outside any test, still fails.
if (run.exitCode !== 0 && failed === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(run.exitCode ?? 1);

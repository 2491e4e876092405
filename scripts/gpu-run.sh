#!/usr/bin/env bash
# One full pass on the GPU machine (see ../shared/device/README.md): build, the whole test
# suite, the demo, the benchmarks and the compute-sanitizer pass; logs and figures go to $OUT.
#   ../shared/device/stage   (here, once)   then run with .device (and node_modules/tinybench) carried:
#   source .device/env.sh && bash scripts/gpu-run.sh
# or, with a library built here for sm_90a and carried (no build on the device):
#   source .device/env.sh && FLASHINFER_LIBRARY=$PWD/.carry/libflashinfer.so bash scripts/gpu-run.sh
# Switches (environment):
#   TESTS=0       skip the plain suite;  BENCHES="bench/x.bench.ts ..." (default all; "" for none)
#   SANITIZE=all  run memcheck, racecheck, synccheck and initcheck over every test file (or
#                 SANITIZE="test/a.test.ts ..." for some), in parallel; one summary line per tool.
#                 Every kernel change runs this before it is called done.
#   SANITIZE_JOBS parallel sanitizer processes (default 8); SANITIZE_TIMEOUT seconds each (540;
#                 a process stopped by it reports exit 124 and counts as not clean);
#                 SANITIZE_FILTER the test names run (default: the GPU cases, "cuda|CUDA|Cuda");
#                 FLASHINFER_SANITIZER=1 makes the statistical tests draw a tenth (test/helpers.ts)
set -uo pipefail
OUT=${OUT:-/tmp/flashinfer-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
# A library built elsewhere and carried (FLASHINFER_LIBRARY) is used as it is: building here costs
# device time.
if [ -z "${FLASHINFER_LIBRARY:-}" ]; then
  bun scripts/build.ts > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
test_line="(not run)"
if [ "${TESTS:-1}" != 0 ]; then
  bun scripts/test.ts > "$OUT/test.log" 2>&1
  test_rc=$?
  grep -E "^\(fail\)|error:" "$OUT/test.log" | head -40
  test_line="$(tail -1 "$OUT/test.log") (exit $test_rc)"
  bun scripts/demo.ts > "$OUT/demo.log" 2>&1 || tail -5 "$OUT/demo.log"
fi
# Each bench's figures (bench/results/<stem>.jsonl) come back beside its log; at most 8 files
# return from the device machine, so name a few benches at a time.
for b in ${BENCHES-bench/*.bench.ts}; do
  bun "$b" 2>&1 | tee -a "$OUT/bench.log"
  cp "bench/results/$(basename "$b" .bench.ts).jsonl" "$OUT/" 2>/dev/null
done

san_lines=()
if [ -n "${SANITIZE:-}" ]; then
  files=${SANITIZE/#all/$(ls test/*.test.ts)}
  san_dir=$(mktemp -d)
  export san_dir
  # One process per (tool, file); the bun test exit code is kept beside the sanitizer's count.
  sanitize_one() {
    local tool=$1 file=$2 log="$san_dir/$1.$(basename "$2").log"
    local extra=""
    [ "$tool" = memcheck ] && extra="--leak-check no --report-api-errors no"
    FLASHINFER_SANITIZER=1 timeout "${SANITIZE_TIMEOUT:-540}" compute-sanitizer --tool "$tool" $extra --error-exitcode 9 \
      bun test --timeout 900000 -t "${SANITIZE_FILTER:-cuda|CUDA|Cuda}" "$file" > "$log" 2>&1
    echo "exit $?" >> "$log"
  }
  export -f sanitize_one
  for tool in memcheck racecheck synccheck initcheck; do for f in $files; do echo "$tool $f"; done; done |
    xargs -P "${SANITIZE_JOBS:-8}" -L 1 bash -c 'sanitize_one "$0" "$1"'
  for tool in memcheck racecheck synccheck initcheck; do
    cat "$san_dir/$tool".*.log > "$OUT/sanitize-$tool.log" 2>/dev/null
    n=0 clean=0 errors=0 dirty="" none=""
    for log in "$san_dir/$tool".*.log; do
      n=$((n + 1))
      e=$(grep -oE "ERROR SUMMARY: [0-9]+" "$log" | awk '{s += $3} END {print s + 0}')
      rc=$(tail -1 "$log" | awk '{print $2}')
      errors=$((errors + e))
      # A file with no GPU case under the filter: bun exits non-zero, nothing ran under the tool.
      if grep -q "matched 0 tests" "$log"; then none="$none $(basename "$log" .log | cut -d. -f2-)"; n=$((n - 1)); continue; fi
      if [ "$e" = 0 ] && [ "$rc" = 0 ]; then clean=$((clean + 1)); else dirty="$dirty $(basename "$log" .log | cut -d. -f2-) ($e errors, exit $rc)"; fi
    done
    san_lines+=("$tool: $clean of $n test files clean, $errors errors${dirty:+; not clean:$dirty}${none:+; no GPU cases:$none}")
  done
  rm -rf "$san_dir"
fi
echo "tests: $test_line"
for l in "${san_lines[@]}"; do echo "$l"; done

#!/usr/bin/env bash
# One full pass on the GPU machine (see ../shared/device/README.md): build, the whole test
# suite, the demo, the benchmarks and a compute-sanitizer pass; logs and figures go to $OUT.
#   ../shared/device/stage   (here, once)   then run with .device (and node_modules/tinybench) carried:
#   source .device/env.sh && bash scripts/gpu-run.sh
# or, with a library built here for sm_90a and carried in .carry/ (no build on the device):
#   source .device/env.sh && FLASHINFER_LIBRARY=$PWD/.carry/libflashinfer.so bash scripts/gpu-run.sh
set -uo pipefail
OUT=${OUT:-/tmp/flashinfer-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
# A library built elsewhere and carried (FLASHINFER_LIBRARY) is used as it is: building here costs
# device time.
if [ -z "${FLASHINFER_LIBRARY:-}" ]; then
  bun scripts/build.ts > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
bun scripts/test.ts > "$OUT/test.log" 2>&1
test_rc=$?
grep -E "^\(fail\)|error:" "$OUT/test.log" | head -40
bun scripts/demo.ts 2>&1 | tee "$OUT/demo.log"
for b in ${BENCHES:-bench/*.bench.ts}; do bun "$b" 2>&1 | tee -a "$OUT/bench.log"; done
cp bench/results/*.jsonl "$OUT/" 2>/dev/null
if [ -n "${SANITIZE:-}" ]; then
  compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 bun test --timeout 600000 $SANITIZE > "$OUT/sanitizer.log" 2>&1
  echo "compute-sanitizer memcheck exit $? ($SANITIZE): $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer.log") clean summaries"
  grep -E "ERROR SUMMARY|Invalid" "$OUT/sanitizer.log" | sort | uniq -c | head
fi
echo "tests: $(tail -1 "$OUT/test.log") (exit $test_rc)"

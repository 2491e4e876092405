#!/usr/bin/env bash
# Before/after figures from one run on one GPU (../shared/device/README.md): builds a baseline
# tree and this tree for the GPU present, in parallel, then runs each bench with the baseline and
# with this tree, one after the other, so both sets of figures come from the same card and run.
#   git archive <commit> | xz > .device/base.tar.xz      (here)
#   source .device/env.sh && BASE=.device/base.tar.xz BENCHES="bench/decode.bench.ts" bash scripts/gpu-compare.sh
# FLASHINFER_LIBRARY: use this library for this tree instead of building it. Each bench's
# figures come back as $OUT/<stem>.before.jsonl and $OUT/<stem>.after.jsonl; logs beside them.
set -uo pipefail
OUT=${OUT:-/tmp/flashinfer-out}
BASE_DIR=${BASE_DIR:-/tmp/flashinfer-base}
mkdir -p "$OUT" "$BASE_DIR"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
tar -xJf "$BASE" -C "$BASE_DIR"
[ -d node_modules ] && ln -sfn "$PWD/node_modules" "$BASE_DIR/node_modules"
(cd "$BASE_DIR" && env -u FLASHINFER_LIBRARY bun scripts/build.ts > "$OUT/build-before.log" 2>&1) &
if [ -z "${FLASHINFER_LIBRARY:-}" ]; then bun scripts/build.ts > "$OUT/build-after.log" 2>&1; fi
wait
for b in ${BENCHES}; do
  stem=$(basename "$b" .bench.ts)
  rm -f "$BASE_DIR/bench/results/$stem.jsonl.new"
  for side in before after; do
    dir=$PWD
    [ "$side" = before ] && dir=$BASE_DIR
    results="$dir/bench/results/$stem.jsonl"
    lines=$(wc -l < "$results" 2>/dev/null || echo 0)
    (cd "$dir" && if [ "$side" = before ]; then env -u FLASHINFER_LIBRARY bun "$b"; else bun "$b"; fi) > "$OUT/$stem.$side.log" 2>&1 ||
      tail -5 "$OUT/$stem.$side.log"
    tail -n +"$((lines + 1))" "$results" > "$OUT/$stem.$side.jsonl"
  done
done
# The table last: each figure before and after.
python3 - "$OUT" $BENCHES <<'PY'
import json, os, sys
out = sys.argv[1]
for b in sys.argv[2:]:
    stem = os.path.basename(b).removesuffix(".bench.ts")
    side = {s: {json.loads(l)["name"]: json.loads(l) for l in open(f"{out}/{stem}.{s}.jsonl") if l.strip()} for s in ("before", "after")}
    for name, a in side["after"].items():
        b_ = side["before"].get(name)
        ratio = f"{a['value'] / b_['value']:.3f}" if b_ and b_["value"] else "-"
        before = f"{b_['value']:.4g}" if b_ else "-"
        print(f"{stem:8} {name[:70]:70} before {before:>10} after {a['value']:>10.4g} {a['unit'][:12]:12} after/before {ratio}")
PY

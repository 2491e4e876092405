#!/usr/bin/env bash
# fi.gemm against torch.matmul on the same GPU in one run (issue 13: >= 95% of torch's throughput
# on bf16 8192^3 and the Llama-3.1-8B projections at 1..256 tokens). Runs bench/gemm.bench.ts
# (figures also appended to bench/results/gemm.jsonl unless --no-record is passed through) and
# bench/compare/gemm_torch.py, then prints the joined table. Needs bun and python3 with torch;
# FLASHINFER_LIBRARY, if set, picks the library (else build/, built if needed). Outputs (logs,
# both sides' JSON lines, the table, gemm.jsonl) go to $OUT (default /tmp/flashinfer-out).
#   bash bench/compare/gemm.sh [--no-record]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/flashinfer-out}
mkdir -p "$OUT"
rm -f "$OUT/gemm.ours.jsonl" "$OUT/gemm.torch.jsonl"
# No FLASHINFER_LIBRARY: build/libflashinfer.so, built here if missing or stale (costs device time).
if [ -z "${FLASHINFER_LIBRARY:-}" ]; then
  bun scripts/build.ts --if-needed > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
bun bench/gemm.bench.ts --json "$OUT/gemm.ours.jsonl" "$@" 2>&1 | tee "$OUT/gemm.ours.log" || echo "gemm.bench.ts failed (exit ${PIPESTATUS[0]})"
python3 bench/compare/gemm_torch.py > "$OUT/gemm.torch.jsonl" 2> "$OUT/gemm.torch.log" || { echo "gemm_torch.py failed:"; tail -5 "$OUT/gemm.torch.log"; }
head -1 "$OUT/gemm.torch.log"
cp bench/results/gemm.jsonl "$OUT/" 2>/dev/null
python3 - "$OUT/gemm.ours.jsonl" "$OUT/gemm.torch.jsonl" <<'PY' | tee "$OUT/gemm.compare.txt"
import json, sys
def load(path):
    try:
        return {r["name"]: r for r in (json.loads(l) for l in open(path) if l.startswith("{"))}
    except OSError:
        return {}
ours, torch = load(sys.argv[1]), load(sys.argv[2])
print(f"{'shape':<40} {'ours ms':>10} {'torch ms':>10} {'ours TF/s':>10} {'torch TF/s':>10} {'ratio':>7}  >= 0.95")
met = total = 0
for name in list(ours) + [n for n in torch if n not in ours]:
    o, t = ours.get(name), torch.get(name)
    fmt = lambda r, k: f"{r[k]:>10.4f}" if k == "ms" else f"{r[k]:>10.1f}"
    cell = lambda r, k: fmt(r, k) if r else f"{'-':>10}"
    if o and t:
        ratio = t["ms"] / o["ms"]  # ours/torch throughput (same FLOPs)
        total += 1
        met += ratio >= 0.95
        verdict = f"{ratio:>7.3f}  {'yes' if ratio >= 0.95 else 'NO'}"
    else:
        verdict = f"{'-':>7}  missing on {'our' if not o else 'torch'} side"
    print(f"{name:<40} {cell(o, 'ms')} {cell(t, 'ms')} {cell(o, 'tflops')} {cell(t, 'tflops')} {verdict}")
print(f"{met} of {total} shapes at >= 95% of torch's throughput")
PY

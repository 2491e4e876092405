#!/usr/bin/env bash
# Our attention and sampling figures beside PyTorch's in one run on the GPU machine (the
# performance issue): bench/decode.bench.ts, bench/prefill.bench.ts and bench/sampling.bench.ts
# (recorded in bench/results/ unless --no-record is passed through), then
# bench/compare/attention_torch.py on the same shapes (SDPA with its FlashAttention-2 and cuDNN
# backends; torch's sampling); prints each of our figures with the best of torch's and the ratio
# (> 1: ours faster). Needs bun and python3 with torch. Logs and the table go to $OUT.
#   bash bench/compare/attention.sh [--no-record]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/flashinfer-out}
mkdir -p "$OUT"
START=$(date -u +%Y-%m-%dT%H:%M:%S)
for b in decode prefill sampling; do
  bun bench/$b.bench.ts "$@" > "$OUT/$b.ours.log" 2>&1 || echo "$b.bench.ts failed (exit $?)"
done
python3 bench/compare/attention_torch.py > "$OUT/attention.torch.jsonl" 2> "$OUT/attention.torch.log" || { echo "attention_torch.py failed:"; tail -5 "$OUT/attention.torch.log"; }
python3 - "$START" "$OUT/attention.torch.jsonl" "$OUT" <<'PY' | tee "$OUT/attention.compare.txt"
import json, os, sys
start, torch_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
ours = {}
for fam in ("decode", "prefill", "sampling"):
    path = f"bench/results/{fam}.jsonl"
    if os.path.exists(path):
        for l in open(path):
            r = json.loads(l)
            if r.get("date", "") >= start:
                ours[r["name"]] = r
best = {}
for l in open(torch_path):
    if not l.startswith("{"):
        continue
    t = json.loads(l)
    higher = not t["unit"].startswith("ms")
    cur = best.get(t["name"])
    if cur is None or (t["value"] > cur["value"] if higher else t["value"] < cur["value"]):
        best[t["name"]] = t
print(f"{'figure':<96} {'ours':>9} {'torch best':>11} {'backend':>8} {'ratio':>6}  unit")
rows = []
for name, t in best.items():
    o = ours.get(name)
    if o is None:
        continue
    higher = not t["unit"].startswith("ms")
    ratio = o["value"] / t["value"] if higher else t["value"] / o["value"]
    rows.append({"name": name, "ours": o["value"], "torch": t["value"], "torchBackend": t["backend"], "ratio": ratio, "unit": t["unit"]})
    print(f"{name:<96} {o['value']:>9.3f} {t['value']:>11.3f} {t['backend']:>8} {ratio:>6.2f}  {t['unit']}")
with open(f"{out}/attention.compare.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
PY

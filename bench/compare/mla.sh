#!/usr/bin/env bash
# The MLA decode shapes on the GPU machine in one run: bench/mla.bench.ts (ours, recorded in
# bench/results/mla.jsonl unless --no-record) and bench/compare/mla_torch.py (PyTorch SDPA on the
# absorbed-weight form), then each of our figures against torch's. Outputs go to $OUT.
#   bash bench/compare/mla.sh [--no-record]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/flashinfer-out}
mkdir -p "$OUT"
rm -f "$OUT/mla.ours.jsonl" "$OUT/mla.torch.jsonl"
bun bench/mla.bench.ts --json "$OUT/mla.ours.jsonl" "$@" 2>&1 | tee "$OUT/mla.ours.log"
python3 bench/compare/mla_torch.py > "$OUT/mla.torch.jsonl" 2> "$OUT/mla.torch.log" || { echo "mla_torch.py failed:"; tail -5 "$OUT/mla.torch.log"; }
python3 - "$OUT/mla.ours.jsonl" "$OUT/mla.torch.jsonl" <<'PY'
import json, sys
load = lambda p: {r["name"]: r for r in (json.loads(l) for l in open(p) if l.startswith("{")) if "ms" in r}
ours, torch = load(sys.argv[1]), load(sys.argv[2])
for name, o in ours.items():
    t = torch.get(name)
    print(f"{name:<40} ours {o['ms'] * 1e3:9.1f} us {o['tbps']:5.2f} TB/s   torch " + (f"{t['ms'] * 1e3:9.1f} us   ours {t['ms'] / o['ms']:.2f}x faster" if t else "-"))
PY

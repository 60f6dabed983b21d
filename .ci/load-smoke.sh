#!/usr/bin/env bash
# A seconds-long run of the load tool (sekimori-load) so it cannot rot: both targets
# (sekimori serve --dev with its durable log, and the empty tonic handler) must answer
# every call, and the summary must carry the ratio. Once unpinned, once pinned to cores.
# Debug build: the figures are not benchmarks (BENCHMARKS.md has those, in release).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pin in "" "--pin"; do
  target/debug/sekimori-load --duration 2s --warmup 500ms --concurrency 8 --connections 2 $pin \
    --json "$work/load.json" > /dev/null
  python3 - "$work/load.json" "$pin" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for t in ("empty", "sekimori"):
    r = s[t]
    assert r["ok"] > 0 and not r["errors"], f"{t}: {r}"
assert s["ratio_sekimori_to_empty"] > 0
print(f"load smoke {sys.argv[2] or 'unpinned'}: empty {s['empty']['rps']:.0f}/s, sekimori {s['sekimori']['rps']:.0f}/s "
      f"(p99 {s['sekimori']['p99_ms']:.1f} ms), ratio {s['ratio_sekimori_to_empty']:.2f}, no errors")
PY
done

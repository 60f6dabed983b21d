#!/usr/bin/env bash
# A seconds-long run of the load tool (sekimori-load) so it cannot rot: both targets
# (sekimori serve --dev with its durable log, and the empty tonic handler) must answer
# every call, and the summary must carry the ratio, the CPU per call and what sekimori's
# log did (commits, records per commit, commit time) and how long its handler took, both read
# from its metrics. Once unpinned
# with the durable empty handler as a third target (the fsync floor), once pinned to cores,
# once with the two targets in alternating slices, once on a fixed schedule at half the empty
# handler's rate (an open loop).
# Debug build: the figures are not benchmarks (BENCHMARKS.md has those, in release).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for mode in "--target all" "--pin" "--interleave 500ms" "--rate 50%"; do
  target/debug/sekimori-load --duration 2s --warmup 500ms --concurrency 8 --connections 2 $mode \
    --json "$work/load.json" > /dev/null
  python3 - "$work/load.json" "$mode" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for t in ("empty", "sekimori"):
    r = s[t]
    assert r["ok"] > 0 and not r["errors"], f"{t}: {r}"
    assert r["cpu_us_per_call"]["server"] > 0 and r["cpu_us_per_call"]["load_tool"] > 0, f"{t}: {r}"
assert "sekimori-log-wr" in s["sekimori"]["cpu_us_per_call"]["server_threads"], s["sekimori"]
assert s["ratio_sekimori_to_empty"] > 0 and s["server_cpu_ratio_empty_to_sekimori"] > 0
log = s["sekimori"]["log"]
assert log["commits_per_s"] > 0 and log["records_per_commit"] >= 1, log
assert log["commit_mean_ms"] > 0 and log["commit_p99_ms_at_most"] is not None, log
assert log["wait_mean_ms"] >= log["commit_mean_ms"] * 0.5 and log["wait_p50_ms_at_most"] is not None, log
assert "log" not in s["empty"], s["empty"]
# The server's own time for its calls: as many as the callers made, a p99 bound to set
# beside theirs.
handler = s["sekimori"]["handler"]
assert handler["calls"] >= s["sekimori"]["ok"] and handler["p99_ms_at_most"] is not None, handler
assert "handler" not in s["empty"], s["empty"]
if sys.argv[2].startswith("--interleave"):
    assert s["load"]["interleave_s"] == 0.5, s["load"]
    assert s["sekimori"]["server_cpu_ms_while_other_measured"] >= 0, s["sekimori"]
    assert 0 < s["ratio_charged_for_work_between_slices"] <= s["ratio_sekimori_to_empty"], s
else:
    assert "ratio_charged_for_work_between_slices" not in s, s
if sys.argv[2].startswith("--rate"):
    # sekimori offered half the rate the empty handler reached closed-loop, every call due
    # made and answered; latency from the due time, with how late the calls were sent.
    seki, empty = s["sekimori"], s["empty"]
    assert s["load"]["rate_share_of_empty"] == 0.5, s["load"]
    assert abs(seki["offered_rps"] - 0.5 * empty["rps"]) <= 1e-6 * empty["rps"], (seki, empty)
    assert seki["scheduled"] == seki["calls"] == seki["ok"] > 0, seki
    assert seki["sent_late_p99_ms"] >= seki["sent_late_p50_ms"] >= 0, seki
    assert "offered_rps" not in empty and "scheduled" not in empty, empty
else:
    assert "offered_rps" not in s["sekimori"], s["sekimori"]
if sys.argv[2] == "--target all":
    floor = s["durable_empty"]
    assert floor["ok"] > 0 and not floor["errors"], floor
    assert "durable-writer" in floor["cpu_us_per_call"]["server_threads"], floor
    assert s["ratio_durable_empty_to_empty"] > 0 and s["ratio_sekimori_to_durable_empty"] > 0, s
    print(f"load smoke: the durable empty handler {floor['rps']:.0f}/s, "
          f"{s['ratio_durable_empty_to_empty']:.2f} of the empty handler's rate")
else:
    assert "durable_empty" not in s and "ratio_durable_empty_to_empty" not in s, s
print(f"load smoke {sys.argv[2] or 'unpinned'}: empty {s['empty']['rps']:.0f}/s, sekimori {s['sekimori']['rps']:.0f}/s "
      f"(p99 {s['sekimori']['p99_ms']:.1f} ms), ratio {s['ratio_sekimori_to_empty']:.2f}, "
      f"server CPU per call {s['empty']['cpu_us_per_call']['server']:.0f} / {s['sekimori']['cpu_us_per_call']['server']:.0f} µs, "
      f"{log['commits_per_s']:.0f} commits/s of {log['records_per_commit']:.1f} records, {log['commit_mean_ms']:.2f} ms each, no errors")
PY
done

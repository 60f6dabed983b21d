#!/usr/bin/env bash
# Where a `Check` call's CPU goes: a flame graph of `sekimori serve --dev` under the load
# tool's default load (32 callers, 4 connections), or of the empty tonic handler with
# `--target empty`. Each tower of the graph starts at a thread's name: `tokio-rt-worker`
# (TLS, HTTP/2, the handler, the decision), `sekimori-log-wr` (the log's writer: SQLite
# and its fsync), `sekimori-log-in` (the auditors' indexer), `sekimori-log-ch` (the
# checkpointer).
#
# Needs Linux `perf` (allowed to profile this user's processes) and inferno
# (`cargo install inferno`). Usage:
#   scripts/profile_check.sh [--target sekimori|empty] [--seconds N] [--out FILE.svg]
# Default output: target/profile/check-<target>.svg (and the folded stacks beside it).
set -euo pipefail
cd "$(dirname "$0")/.."

target=sekimori
seconds=5
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$target" in sekimori|empty) ;; *) echo "--target is sekimori or empty" >&2; exit 2 ;; esac
for tool in perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" > /dev/null || { echo "$tool is not installed (see the top of $0)" >&2; exit 2; }
done
mkdir -p target/profile
out=${out:-target/profile/check-$target.svg}
data=target/profile/perf-$target.data

cargo build --quiet --release --bins
# The profile starts 3 s after the server (after its start-up and most of the load tool's
# 2 s warm-up, which sends the same load) and ends before the measured load does.
target/release/sekimori-load --target "$target" --duration "$((seconds + 3))s" > /dev/null 2>&1 &
load=$!
trap 'kill $load 2> /dev/null || true' EXIT
server=""
for _ in $(seq 1 300); do
  server=$(pgrep -P "$load" | head -n 1 || true)
  [ -n "$server" ] && break
  sleep 0.1
done
[ -n "$server" ] || { echo "the load tool started no server" >&2; exit 1; }
sleep 3
perf record --quiet -F 499 --call-graph dwarf,16384 -p "$server" -o "$data" -- sleep "$seconds"
wait "$load"
trap - EXIT
perf script -i "$data" 2> /dev/null | inferno-collapse-perf > "${out%.svg}.folded"
inferno-flamegraph --title "sekimori-load --target $target: server CPU by thread" \
  --minwidth 0.5 < "${out%.svg}.folded" > "$out"
echo "wrote $out ($(wc -l < "${out%.svg}.folded") distinct stacks; perf data in $data)"

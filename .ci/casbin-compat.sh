#!/usr/bin/env bash
# Exports the sample city's decision tests and checks them against pycasbin in a
# throwaway virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo run --quiet -- policy test policies --at 2026-06-01 --format plain --export-casbin "$work/export" >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check 'casbin>=1.36'
"$work/venv/bin/python" .ci/casbin_compat.py "$work/export"

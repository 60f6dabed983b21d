#!/usr/bin/env bash
# A bounded fuzz run (about a minute of fuzzing) so the targets cannot rot: each of the nine
# cargo-fuzz targets in fuzz/ runs 7 s from its committed corpus; any crash fails CI.
# The long runs (10+ minutes per target, with AddressSanitizer) are documented in
# docs/security.md; this smoke builds without a sanitizer to stay quick.
# SEKIMORI_FUZZ_STABLE=1 forces the stable-compiler path even where nightly is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-fuzz > /dev/null; then
  cargo install cargo-fuzz --locked --quiet
fi
# libFuzzer needs unstable compiler flags: a nightly toolchain when there is one, otherwise
# the stable compiler with its unstable features unlocked (RUSTC_BOOTSTRAP), which is
# enough for a build without a sanitizer.
if [ -z "${SEKIMORI_FUZZ_STABLE:-}" ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
cd fuzz
# A debug build: quicker to compile, and overflow checks on.
"${fuzz[@]}" build --dev -s none
targets=(policy_organization policy_systems policy_contracts policy_assets policy_grants policy_tests
  token check_request log_record)
for target in "${targets[@]}"; do
  # A scratch copy of the corpus: the smoke run must not grow the committed one.
  scratch=$(mktemp -d)
  cp -r "corpus/$target/." "$scratch/"
  log="$scratch.log"
  if ! "${fuzz[@]}" run --dev -s none "$target" "$scratch" -- -max_total_time=7 -rss_limit_mb=2048 > "$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target failed (crash input in fuzz/artifacts/$target)"
    exit 1
  fi
  echo "$target: $(grep -E '^Done' "$log")"
  rm -rf "$scratch" "$log"
done
echo "fuzz smoke: ${#targets[@]} targets, 7 s each, no crash"

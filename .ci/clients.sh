#!/usr/bin/env bash
# Starts `sekimori serve --dev` on a loopback port and makes the first check with the
# Rust and the Python (grpcio) clients of docs/integration.md. Stops the server itself.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=17443
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cargo build --quiet --bin sekimori --example check_client
bin=target/debug/sekimori
"$bin" serve --dev --data "$work/data" --listen "127.0.0.1:$port" --metrics "127.0.0.1:$((port + 1))" > "$work/serve.log" 2>&1 &
pid=$!
dev="$work/data/dev"
for _ in $(seq 1 60); do
  if "$bin" check --dev --data "$work/data" --addr "https://127.0.0.1:$port" --system juki --sub e1010 --section shimin \
       --amr pwd,fpt --asset juki-tokei --action read > /dev/null 2>&1; then break; fi
  sleep 0.5
done
cat "$work/serve.log"

echo "-- sekimori check (exit 5 on deny)"
set +e
"$bin" check --dev --data "$work/data" --addr "https://127.0.0.1:$port" --system juki --sub e1010 --section shimin \
  --amr pwd --asset juki-main --action read --device-issued --purpose jumin-kiroku
code=$?
set -e
[ "$code" = 5 ] || { echo "expected exit 5 for a deny, got $code"; exit 1; }

token=$("$bin" dev token --data "$work/data" --sub e1010 --section shimin --amr pwd,fpt)
echo "-- Rust client (examples/check_client.rs)"
target/debug/examples/check_client --addr "https://127.0.0.1:$port" --cacert "$dev/ca.pem" \
  --cert "$dev/clients/juki.pem" --key "$dev/clients/juki-key.pem" --token "$token" | tee "$work/rust.out"
grep -q '^ALLOW grant' "$work/rust.out"

echo "-- Python client (docs/examples/check_client.py, grpcio)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools
mkdir -p "$work/gen"
"$work/venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work/gen" --grpc_python_out="$work/gen" proto/sekimori/v1/access.proto
PYTHONPATH="$work/gen" "$work/venv/bin/python" docs/examples/check_client.py --addr "127.0.0.1:$port" --cacert "$dev/ca.pem" \
  --cert "$dev/clients/juki.pem" --key "$dev/clients/juki-key.pem" --token "$token" | tee "$work/python.out"
grep -q '^ALLOW grant' "$work/python.out"
echo "clients: Rust and Python both got the decision"

echo "-- the auditors' CLI against the service"
A=(--dev --data "$work/data" --addr "https://127.0.0.1:$port")
"$bin" audit query "${A[@]}" --sub e1010 | tee "$work/query.out"
grep -q '住民基本台帳データ(juki-main)' "$work/query.out"
"$bin" audit summary "${A[@]}" --by decision
"$bin" audit export "${A[@]}" --format csv --out "$work/export.csv"
head -c 3 "$work/export.csv" | od -An -tx1 | grep -q 'ef bb bf' || { echo "CSV export lacks the UTF-8 BOM"; exit 1; }
grep -q '"e1010"' "$work/export.csv"
"$bin" audit verify "${A[@]}"
echo "-- the admin CLI: a lockdown applies to the next check, then is lifted"
"$bin" admin lockdown declare "${A[@]}" --as security_admin --id ld-ci --systems juki --reason "CI drill"
set +e
"$bin" check --dev --data "$work/data" --addr "https://127.0.0.1:$port" --system juki --sub e1010 --section shimin \
  --amr pwd,fpt --asset juki-tokei --action read | tee "$work/locked.out"
code=$?
set -e
[ "$code" = 5 ] && grep -q lockdown "$work/locked.out" || { echo "the lockdown did not apply"; exit 1; }
"$bin" admin lockdown lift "${A[@]}" ld-ci
"$bin" admin status "${A[@]}" --as auditor
echo "-- metrics"
python3 -c "import urllib.request,sys; b=urllib.request.urlopen('http://127.0.0.1:$((port + 1))/metrics').read().decode(); [print(l) for l in b.splitlines() if l.startswith(('sekimori_decisions_total','sekimori_reloads_total','sekimori_policy_info'))]; sys.exit(0 if 'sekimori_decisions_total' in b else 1)"
kill -TERM "$pid"; wait "$pid" || true; pid=""
"$bin" audit verify --db "$work/data/decisions.db" --public-key "$dev/checkpoint-key.pub"
echo "auditors' CLI: query, summary, export (CSV with BOM) and verify (online and offline) work"

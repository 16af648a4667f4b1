#!/usr/bin/env bash
# CPU per call against Kamailio with the sync engine on, and without it (issue 6: with
# sync on, the ratio stays within 10% of the figure without).
#
# "Sync on": config/loopback.toml plus a [graph] section pointing at the Graph emulator
# (started here on 127.0.0.1:8400, admin consent granted, app-only token), PBX -> Teams
# switched on, and SIPp's calling user `sipp` in the directory as alice, so every call
# of the load is an external call of a synced extension: each call start and end goes
# through the observer's event channel to the sync engine, which writes Teams presence
# and polls it every 2 s. The proxy's CPU is that of its whole process (both threads).
#
# Usage: scripts/bench-sync-cpu.sh [ROUNDS]   (default 3; each round 20,000 calls at 1,000/s)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release -q
bin=$PWD/target/release/presence-proxy
work=$(mktemp -d)
emulator_pid=
cleanup() { [[ -n $emulator_pid ]] && kill "$emulator_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin" graph-emulator --listen 127.0.0.1:8400 >"$work/emulator.log" 2>&1 &
emulator_pid=$!
for _ in $(seq 50); do curl -fsS http://127.0.0.1:8400/_emulator/info >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS -X PUT -H 'content-type: application/json' -d '{"granted":true}' \
  http://127.0.0.1:8400/_emulator/admin-consent >/dev/null

cp config/loopback.toml "$work/sync.toml"
cat >>"$work/sync.toml" <<EOF

[graph]
tenant = "contoso.example"
client_id = "$(curl -fsS http://127.0.0.1:8400/_emulator/info | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')"
client_secret = "emulator-secret"
login_base = "http://127.0.0.1:8400"
graph_base = "http://127.0.0.1:8400/v1.0"
app_only = true

[store]
path = "$work/store.sqlite3"

[sync]
pbx_to_teams = true

[directory]
"sipp" = "alice@contoso.example"
EOF
"$bin" check-config "$work/sync.toml" >/dev/null

echo "== without sync (config/loopback.toml)"
../shared/bench/compare-with-kamailio.sh -k "$rounds" -- "$bin" run --config config/loopback.toml
# the first comparison's SIPp UAS must be gone before the second starts its own
for _ in $(seq 50); do pgrep -f "sipp -sn uas -i 127.0.0.1 -p 5070" >/dev/null || break; sleep 0.2; done
sleep 2
echo "== with sync ($work/sync.toml: emulator, app-only token, 'sipp' = alice)"
../shared/bench/compare-with-kamailio.sh -k "$rounds" -- "$bin" run --config "$work/sync.toml"
echo "== Graph requests the synced run made"
curl -fsS http://127.0.0.1:8400/_emulator/requests |
  grep -o '"path":"[^"]*"' | sed 's/"path":"//; s/"$//' | sed 's#/users/[^/]*/#/users/{id}/#' | sort | uniq -c

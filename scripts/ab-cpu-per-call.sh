#!/usr/bin/env bash
# A/B the proxy's CPU per call for two builds under the same SIPp load, alternating
# A B A B ... so that the machine's drift cancels out (it does, a lot, on a shared VM).
# Usage: scripts/ab-cpu-per-call.sh OLD_BINARY NEW_BINARY [ROUNDS]
#   e.g. git stash; cargo build --release; cp target/release/presence-proxy /tmp/pp-old
#        git stash pop; cargo build --release; scripts/ab-cpu-per-call.sh /tmp/pp-old target/release/presence-proxy
# Each run: 10,000 calls at 1,000 calls/s through config/loopback.toml (udp 127.0.0.1:5060,
# SIPp as the PBX on 127.0.0.1:5070). Prints CPU time (user+sys) per successful call.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: $0 OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-4}
command -v sipp >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester >/dev/null; }
hz=$(getconf CLK_TCK)
csv=$(mktemp)
cleanup() { pkill -f "sipp -sn uas -i 127.0.0.1 -p 5070" 2>/dev/null || true; rm -f "$csv"; }
trap cleanup EXIT
sipp -sn uas -i 127.0.0.1 -p 5070 -nostdin -bg >/dev/null 2>&1 || true
sleep 0.5
for ((round = 1; round <= rounds; round++)); do
  for bin in "$old" "$new"; do
    "$bin" run --config config/loopback.toml 2>/dev/null &
    pid=$!
    sleep 1
    a=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    timeout 60 sipp -sn uac 127.0.0.1:5060 -i 127.0.0.1 -p 5090 -r 1000 -m 10000 -nostdin \
      -trace_stat -stf "$csv" >/dev/null 2>&1 || true
    b=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    ok=$(tail -1 "$csv" | awk -F';' '{print $16 + 0}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    awk -v r="$round" -v n="$bin" -v t=$((b - a)) -v hz="$hz" -v ok="$ok" \
      'BEGIN { printf "round %d %s: %.1f us/call (%d calls ok)\n", r, n, (ok ? t / hz / ok * 1e6 : 0), ok }'
  done
done

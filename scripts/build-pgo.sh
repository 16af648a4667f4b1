#!/usr/bin/env bash
# Builds target/release/presence-proxy with profile-guided optimisation (PGO).
#
# 1. builds an instrumented proxy (rustc -Cprofile-generate) in target/pgo-generate;
# 2. runs it on loopback under a training load: SIPp calls (INVITE/100/180/200/ACK/BYE/
#    200, as the benchmark's) and registrations, through config/loopback.toml (phones
#    udp 127.0.0.1:5060, SIPp as the PBX on 127.0.0.1:5070);
# 3. merges the profile with the llvm-profdata of rustc's own LLVM version (Debian's
#    llvm-N package, installed when missing);
# 4. builds the release binary with -Cprofile-use, in target/release as usual.
#
# The profile lays out the code that runs for every message together and moves what
# does not run (error paths, other methods) out of its way, so a message touches fewer
# cache lines of code. Usage: scripts/build-pgo.sh [TRAINING_CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
root=$(pwd)
profiles=$root/target/pgo-profiles
merged=$root/target/pgo.profdata

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need sipp sip-tester

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=/usr/lib/llvm-$llvm_major/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$llvm_major" >/dev/null
fi
[[ -x $profdata ]] || { echo "no llvm-profdata for rustc's LLVM $llvm_major (package llvm-$llvm_major)" >&2; exit 1; }

echo "1/4 instrumented build" >&2
rm -rf "$profiles"
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release --bin presence-proxy \
  --target-dir target/pgo-generate -q

echo "2/4 training: $calls calls and 5,000 registrations on loopback" >&2
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "sipp.*-p 5070" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
target/pgo-generate/release/presence-proxy run --config config/loopback.toml 2>/dev/null &
proxy=$!
pids+=("$proxy")
sleep 1
kill -0 "$proxy" || { echo "the instrumented proxy did not start (ports 5060/5070 in use?)" >&2; exit 1; }
sipp -sn uas -i 127.0.0.1 -p 5070 -nostdin -bg >/dev/null 2>&1 || true
sleep 0.5
# a training run with failed calls still profiles the hot path, but one that did not run
# at all would leave a profile of start-up only: say so instead of building on it quietly
rc=0
timeout $((calls / 1000 + 60)) sipp -sn uac 127.0.0.1:5060 -i 127.0.0.1 -p 5090 -r 1000 \
  -m "$calls" -nostdin >/dev/null 2>&1 || rc=$?
[[ $rc -eq 0 ]] || echo "warning: the training calls ended with SIPp exit code $rc (1: some calls failed)" >&2
pkill -f "sipp -sn uas -i 127.0.0.1 -p 5070" 2>/dev/null || true
sleep 0.5
sipp -sf benches/sipp/registrar.xml -i 127.0.0.1 -p 5070 -nostdin -bg >/dev/null 2>&1 || true
sleep 0.5
rc=0
timeout 60 sipp -sf benches/sipp/register.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5091 -r 1000 \
  -m 5000 -nostdin >/dev/null 2>&1 || rc=$?
[[ $rc -eq 0 ]] || echo "warning: the training registrations ended with SIPp exit code $rc" >&2
# the profile is written when the proxy exits normally (SIGTERM: graceful shutdown)
kill -TERM "$proxy"
wait "$proxy" || true
pids=()
ls "$profiles"/*.profraw >/dev/null 2>&1 || { echo "the training run wrote no profile" >&2; exit 1; }

echo "3/4 merging the profile" >&2
"$profdata" merge -o "$merged" "$profiles"

echo "4/4 optimised build: target/release/presence-proxy" >&2
RUSTFLAGS="-Cprofile-use=$merged -Cllvm-args=-pgo-warn-missing-function=false" \
  cargo build --release --bin presence-proxy -q

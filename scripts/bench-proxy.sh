#!/usr/bin/env bash
# Proxy benchmarks beyond CPU per call (that one is ../shared/bench/compare-with-kamailio.sh):
#   1. the highest call rate SIPp drives with zero failed calls, back to back and
#      through the proxy (rates stepped up, each step a bounded number of calls);
#   2. SIPp's response time (INVITE -> 200) percentiles at 1000 calls/s, back to back
#      and through the proxy;
#   3. the proxy's RSS with 10,000 registered phones, then with 10,000 concurrent calls.
# Everything runs on loopback: proxy udp 127.0.0.1:5060 (config/loopback.toml), PBX (SIPp)
# 127.0.0.1:5070. Usage: scripts/bench-proxy.sh [rates|latency|memory|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
command -v sipp >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester >/dev/null; }
cargo build --release -q
proxy_bin=target/release/presence-proxy
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pkill -f "sipp.*-p 5070" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_uas() { sipp -sn uas -i 127.0.0.1 -p 5070 -nostdin -bg >/dev/null 2>&1 || true; sleep 0.5; }
stop_uas() { pkill -f "sipp -sn uas -i 127.0.0.1 -p 5070" 2>/dev/null || true; sleep 0.5; }
start_proxy() { "$proxy_bin" run --config config/loopback.toml 2>"$work/proxy.log" & proxy=$!; pids+=("$proxy"); sleep 1; }
stop_proxy() { kill "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true; }

# calls at a rate against a target port; prints "successful failed"
calls() {
  local port=$1 rate=$2 n=$3 csv=$work/stat.$RANDOM.csv
  timeout $((n / rate + 60)) sipp -sn uac "127.0.0.1:$port" -i 127.0.0.1 -p 5090 -r "$rate" -m "$n" \
    -nostdin -trace_stat -stf "$csv" >/dev/null 2>&1 || true
  tail -1 "$csv" | awk -F';' '{print $16+0, $18+0}'
}

max_rate() {
  local port=$1 best=0
  for rate in 1000 2000 3000 4000 5000 6000 8000; do
    read -r ok fail < <(calls "$port" "$rate" $((rate * 5)))
    if [[ $fail -eq 0 && $ok -eq $((rate * 5)) ]]; then best=$rate; else break; fi
  done
  echo "$best"
}

if [[ $what == rates || $what == all ]]; then
  start_uas
  b2b=$(max_rate 5070)
  start_proxy; via=$(max_rate 5060); stop_proxy
  stop_uas
  echo "max_rate_zero_failures back_to_back=${b2b}cps through_proxy=${via}cps (steps 1000..8000, 5 s each)"
fi

latency() {
  local port=$1
  local dir=$work/rtt.$port
  mkdir -p "$dir"
  (cd "$dir" && timeout 120 sipp -sn uac "127.0.0.1:$port" -i 127.0.0.1 -p 5090 -r 1000 -m 20000 \
    -nostdin -trace_rtt -rtt_freq 1 >/dev/null 2>&1 || true)
  # columns: Date_ms;response_time_ms;rtd_no; the uac scenario's rtd 1 is INVITE -> 200
  cat "$dir"/*_rtt.csv | awk -F';' 'NR > 1 && $2 ~ /^[0-9.]+$/ {print $2}' | sort -n | \
    awk '{a[NR]=$1; if ($1 >= 1) slow++} END { if (NR) printf "n=%d p50=%.3fms p99=%.3fms max=%.3fms at_or_above_1ms=%.2f%% (SIPp resolution: 1 ms)\n", NR, a[int(NR*0.5)], a[int(NR*0.99)], a[NR], 100*slow/NR }'
}

if [[ $what == latency || $what == all ]]; then
  start_uas
  echo "response_time back_to_back $(latency 5070)"
  start_proxy; echo "response_time through_proxy $(latency 5060)"; stop_proxy
  stop_uas
fi

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

if [[ $what == memory || $what == all ]]; then
  sipp -sf benches/sipp/registrar.xml -i 127.0.0.1 -p 5070 -nostdin -bg >/dev/null 2>&1 || true; sleep 0.5
  start_proxy
  echo "rss_idle_kib=$(rss_kib "$proxy")"
  timeout 120 sipp -sf benches/sipp/register.xml 127.0.0.1:5060 -i 127.0.0.1 -p 5091 -r 2000 -m 10000 \
    -nostdin -trace_stat -stf "$work/reg.csv" >/dev/null 2>&1 || true
  echo "registrations $(tail -1 "$work/reg.csv" | awk -F';' '{print "ok=" $16 " failed=" $18}')"
  sleep 1
  echo "rss_10000_registered_kib=$(rss_kib "$proxy")"
  pkill -f "sipp -sf benches/sipp/registrar.xml" 2>/dev/null || true; sleep 0.5
  start_uas
  # 10,000 calls held 30 s each, started at 1000/s: all up at once after 10 s
  timeout 120 sipp -sn uac 127.0.0.1:5060 -i 127.0.0.1 -p 5090 -r 1000 -m 10000 -l 10000 -d 30000 \
    -nostdin -trace_stat -stf "$work/calls.csv" -fd 1 >/dev/null 2>&1 &
  load=$!
  sleep 15
  echo "concurrent_calls_now=$(tail -1 "$work/calls.csv" | awk -F';' '{print $14}')"
  echo "rss_10000_registered_10000_calls_kib=$(rss_kib "$proxy")"
  wait "$load" || true
  echo "calls $(tail -1 "$work/calls.csv" | awk -F';' '{print "ok=" $16 " failed=" $18}')"
  stop_proxy; stop_uas
fi

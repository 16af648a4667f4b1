#!/usr/bin/env bash
# Runs every check and test of presence-proxy: formatting, clippy (warnings are
# errors), then the whole test suite (unit, RFC 4475 conformance, fixture round trips,
# framing, property tests and the fuzz corpus replay). Installs what the tests need
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_component() {
    # rustfmt and clippy ship with rustup's default profile; add them if a minimal
    # toolchain is installed
    if ! cargo "$1" --version >/dev/null 2>&1; then
        rustup component add "$2"
    fi
}
need_component fmt rustfmt
need_component clippy clippy

# Real SIP peers for the end-to-end tests: SIPp (Debian: sip-tester) as phones and
# PBX, Kamailio as a registrar/PBX and presence server behind the proxy, Chromium for
# the portal.
need_package() {
    # $1 = command (or absolute file) to look for, $2 = Debian package that provides it
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then
        if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
            echo "error: $1 is missing; install the Debian package $2" >&2
            exit 1
        fi
        local SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO=sudo
        if [ -z "${APT_UPDATED:-}" ]; then
            $SUDO apt-get update -qq
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
    fi
}
need_package sipp sip-tester
need_package kamailio kamailio
# Kamailio's presence server (presence, presence_dialoginfo) for the BLF interop test
need_package /usr/lib/x86_64-linux-gnu/kamailio/modules/presence_dialoginfo.so kamailio-presence-modules
# a real browser for the portal tests: headless Chromium driven over WebDriver
need_package chromium chromium
need_package chromedriver chromium-driver

# Incremental caches would add about 2 GB under target/ that a one-off run never reuses.
export CARGO_INCREMENTAL=0
# The build needs about 3 GB under target/ (clippy, tests, examples, benches); say so
# up front rather than fail halfway through with "No space left on device".
mkdir -p target
free_kb=$(df -Pk target | awk 'NR == 2 { print $4 }')
if [ "${free_kb:-0}" -lt 3500000 ]; then
    echo "warning: only $((free_kb / 1024)) MB free under target/; the build needs about 3 GB" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# doc tests are not part of --all-targets; run them first so the total comes last
status=0
cargo test --doc 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ]; then
    cargo test --all-targets --no-run 2>&1 | tee -a "$log" || status=$?
fi
if [ "$status" -eq 0 ]; then
    # the whole suite runs in a few minutes: a test still running after 30 is hung,
    # and its name is the last "test ... has been running" line above
    timeout --kill-after=10 30m cargo test --all-targets --no-fail-fast 2>&1 | tee -a "$log" || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "error: the tests did not finish within 30 minutes (a test is hung)" >&2
    fi
fi
# one closing line over every test binary
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

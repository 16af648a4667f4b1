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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --all-targets
# doc tests are not part of --all-targets
cargo test --doc

#!/usr/bin/env bash
# Runs every test of vswitch: unit tests and the integration tests, which
# build namespaces and send real traffic through the switch (root needed).
# Installs what it needs first; safe to run again.
#
#   scripts/test.sh            all tests, then a smoke run of the benchmark
#   scripts/test.sh ARGS       extra arguments for `cargo test` (e.g. -- --nocapture)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

need_root
install_deps
ensure_bpffs
build
cd "$REPO"
say "running tests (cargo test --release)"
# Style gates, with the components a minimal toolchain may lack.
if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked --quiet -- -D warnings
cargo test --release --workspace --locked "$@"
say "benchmark smoke run"
"$REPO/scripts/bench-iperf.sh" --smoke
"$REPO/scripts/bench-policy.sh" --smoke
"$REPO/scripts/bench-nat.sh" --smoke
"$REPO/scripts/bench.sh" --smoke

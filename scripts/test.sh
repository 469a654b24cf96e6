#!/usr/bin/env bash
# The project's single test command (README): installs missing tools, then runs the checks
# cheapest first (STYLE.md section 10). CARGO_TARGET_DIR is honoured when set; CI is passed
# through (it is inherited from the environment) to the tests, which then fail instead of
# skipping when a tool is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

# Keep buf's cache out of HOME and reusable across runs.
export BUF_CACHE_DIR="${BUF_CACHE_DIR:-${TMPDIR:-/tmp}/statiko-buf-cache}"

step() {
  local name="$1"
  shift
  echo
  echo "==> ${name}: $*"
  local start=$SECONDS
  "$@"
  echo "==> ${name}: ok in $((SECONDS - start))s"
}

total_start=$SECONDS
step install-deps bash scripts/install-deps.sh
step fmt cargo fmt --all --check
step buf-format buf format -d --exit-code
step buf-lint buf lint
# Licenses, crate sources and banned crates (deny.toml); advisories need a database from outside.
step deny cargo deny --locked check bans licenses sources
step clippy cargo clippy -j2 --workspace --all-targets --locked -- -D warnings
step build cargo build -j2 --workspace --bins --locked
step nextest cargo nextest run -j2 --workspace --locked --profile ci
# The docker-compose demo cluster, brought up for real from the binaries just built.
step compose bash deploy/test-compose.sh
step doctest cargo test -j2 --workspace --doc --locked
echo
echo "==> all checks passed in $((SECONDS - total_start))s"

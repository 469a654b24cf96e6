# Sourced by the bench scripts (bench/run.sh, bench/redirects-https.sh): the preamble they share.
# Moves to the repository root (ROOT), sets the run-length knobs every script takes from the
# environment (DURATION, REPS, WARMUP, THREADS, PROFILE) and HOST, and defines `log` and
# `build_binaries` (the control, edge and CLI binaries of $PROFILE, or none when BIN_DIR names
# prebuilt ones; sets BIN to their directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
REPS=${REPS:-3}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
PROFILE=${PROFILE:-release}
HOST=127.0.0.1

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build_binaries() {
  if [ -n "${BIN_DIR:-}" ]; then
    BIN=$BIN_DIR # binaries built beforehand (statiko-control, statiko-edge, stk): no build
    return
  fi
  log "building the $PROFILE binaries"
  cargo build -j2 --profile "$PROFILE" --locked -p statiko-control -p statiko-edge -p statiko-cli >&2
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  BIN=$TARGET_DIR/$PROFILE; [ "$PROFILE" = dev ] && BIN=$TARGET_DIR/debug
}

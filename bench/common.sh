# Sourced by the bench scripts (bench/run.sh, bench/redirects-https.sh): the preamble they share.
# Moves to the repository root (ROOT), sets the run-length knobs every script takes from the
# environment (DURATION, REPS, WARMUP, THREADS, PROFILE) and HOST, and defines `log`,
# `build_binaries` (the control, edge and CLI binaries of $PROFILE, or none when BIN_DIR names
# prebuilt ones; sets BIN to their directory and BUILD_LABEL to what the result lines call
# them), `write_node_config` and `use_node` (the single-node Statiko every bench runs, and stk's
# settings for it).
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
    BUILD_LABEL="binaries from $BIN_DIR"
    return
  fi
  BUILD_LABEL="profile $PROFILE"
  log "building the $PROFILE binaries"
  cargo build -j2 --profile "$PROFILE" --locked -p statiko-control -p statiko-edge -p statiko-cli >&2
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  BIN=$TARGET_DIR/$PROFILE; [ "$PROFILE" = dev ] && BIN=$TARGET_DIR/debug
}

# The single node the benches run: control and edge on one file store under $WORK/node, control
# in plaintext on $CONTROL, the edge on $EDGE_HTTP / $EDGE_HTTPS / $EDGE_ADMIN without a
# per-client connection cap (one load generator is one client). $1: more edge keys, as YAML flow
# entries ending in ", " (e.g. "redirectHttp: false, "). Writes $WORK/node/config.yaml.
BENCH_TOKEN=bench-admin-token-0123456789
write_node_config() {
  cat > "$WORK/node/config.yaml" <<EOF
nodeName: "bench"
secretsEncryptionKey: "$(head -c 32 /dev/urandom | base64)"
state: {store: "file", file: {path: "$WORK/node/state"}}
repo: {type: "local", local: {path: "$WORK/node/repo"}}
control: {listen: "$HOST:$CONTROL", tls: {enabled: false}, metrics: ""}
auth: {tokens: [{name: "bench", token: "$BENCH_TOKEN", role: "admin"}]}
edge: {dataDir: "$WORK/node/data", http: "$HOST:$EDGE_HTTP", https: "$HOST:$EDGE_HTTPS", admin: "$HOST:$EDGE_ADMIN", ${1:-}limits: {perClient: {maxConnections: 0}}}
log: {format: "text", level: "warn"}
EOF
}

# stk's settings for that node.
use_node() {
  export STATIKO_ENDPOINT=http://$HOST:$CONTROL STATIKO_TOKEN=$BENCH_TOKEN
}

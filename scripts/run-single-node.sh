#!/usr/bin/env bash
# Runs Statiko on this machine as a single node (no etcd): installs the build dependency
# (protoc), builds the binaries, then starts statiko-control and statiko-edge with
# deploy/config/single-node.yaml. Data lives under ./data. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
fi

PROFILE="${STATIKO_PROFILE:-release}"
cargo build -j2 --profile "$PROFILE" --locked -p statiko-control -p statiko-edge -p statiko-cli
dir="target/$PROFILE"
[ "$PROFILE" = dev ] && dir="target/debug"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  dir="$CARGO_TARGET_DIR/${dir#target/}"
fi
case "$dir" in /*) bin_path="$dir" ;; *) bin_path="\$PWD/$dir" ;; esac

CONFIG=deploy/config/single-node.yaml
mkdir -p data
"$dir/statiko-control" --config "$CONFIG" &
control=$!
"$dir/statiko-edge" --config "$CONFIG" &
edge=$!
trap 'kill -TERM "$control" "$edge" 2>/dev/null; wait "$control" "$edge" 2>/dev/null' INT TERM EXIT

cat <<EOM

Statiko is running (single node, state in ./data):
  control (gRPC)  https://127.0.0.1:2265   CA: ./data/control-tls/cert.pem
  edge            http://${STATIKO_EDGE_HTTP:-127.0.0.1:8080}  https://${STATIKO_EDGE_HTTPS:-127.0.0.1:8443}
  admin           http://127.0.0.1:2266/status

  export PATH="$bin_path:\$PATH"
  export STATIKO_TOKEN=statiko-dev-admin-token-change-me STATIKO_CA=./data/control-tls/cert.pem
  stk site list

Press Ctrl-C to stop.
EOM
wait -n "$control" "$edge"

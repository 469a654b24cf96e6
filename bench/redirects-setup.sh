# Shared by bench/redirects-https.sh and bench/redirects-callgrind.sh (sourced, not run): builds
# the binaries, writes the two bundles that differ only in their `_redirects` (10 vs 10,000
# rules) and a third with 10,000 rules and 1,000 `_headers` blocks, and a single-node config.
# Expects bench/common.sh sourced (ROOT, PROFILE, HOST, log, build_binaries), WORK and the
# EDGE_*/CONTROL ports to be set.
build_binaries

rm -rf "$WORK"; mkdir -p "$WORK"/{r10,r10k,big,logs,node}
# Two bundles that differ only in their `_redirects`: the same 2,000 static rules' worth of
# prefixes would never be reached by the paths measured, so both end with the same last rule.
for b in r10 r10k big; do
  head -c 1024 /dev/urandom | base64 > "$WORK/$b/file.txt"
  echo '<!doctype html><title>bench</title><p>redirects bench</p>' > "$WORK/$b/index.html"
  echo '<!doctype html><title>404</title>' > "$WORK/$b/404.html"
done
rules() { # $1 = number of rules; the last one is `/last/* /file.txt 200`
  local n=$1 statics=$(( $1 / 5 ))
  awk -v n="$n" -v s="$statics" 'BEGIN {
    for (i = 0; i < n - 1; i++) {
      if (i < s) printf "/static/page-%d /new/page-%d 301\n", i, i;
      else if (i % 2 == 0) printf "/p%d/:year/:slug /posts%d/:year/:slug 302\n", i, i;
      else printf "/s%d/* /splat%d/:splat 301\n", i, i;
    }
    print "/last/* /file.txt 200";
  }'
}
rules 10 > "$WORK/r10/_redirects"
rules 10000 > "$WORK/r10k/_redirects"
rules 10000 > "$WORK/big/_redirects"
awk 'BEGIN { for (i = 0; i < 1000; i++) printf "/section%d/*\n  X-Section: %d\n  Cache-Control: public, max-age=60\n", i, i }' \
  > "$WORK/big/_headers"

write_node_config

port_open() { ss -ltnH "( sport = :$1 )" 2>/dev/null | grep -q .; }
wait_port() { local i; for i in $(seq 1 200); do port_open "$1" && return 0; sleep 0.05; done; log "port $1 never opened"; return 1; }
PAGE_KIB=$(( $(getconf PAGESIZE) / 1024 ))
rss_kib() { local r; read -r _ r _ < "/proc/$1/statm"; echo $(( r * PAGE_KIB )); }
proc_jiffies() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
load() { cut -d' ' -f1 /proc/loadavg; }

STARTED=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

for p in $EDGE_HTTP $EDGE_HTTPS $EDGE_ADMIN $CONTROL; do
  port_open $p && { log "port $p is busy"; exit 1; }
done
# Starts control, and the edge behind "$@" (a wrapper such as valgrind, or nothing), then serves
# r10.localhost and r10k.localhost. Sets EDGE_PID.
start_node() {
  "$BIN/statiko-control" --config "$WORK/node/config.yaml" > "$WORK/logs/control.log" 2>&1 & STARTED+=($!)
  "$@" "$BIN/statiko-edge" --config "$WORK/node/config.yaml" > "$WORK/logs/edge.log" 2>&1 & STARTED+=($!)
  EDGE_PID=${STARTED[1]}
  wait_port $CONTROL; wait_port $EDGE_HTTPS
  local i
  for i in $(seq 1 600); do curl -sf "http://$HOST:$EDGE_ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  use_node
  # A slow edge (under valgrind) registers its node record a little after it is ready.
  for i in $(seq 1 100); do "$BIN/stk" cluster status 2>/dev/null | grep -q bench && break; sleep 0.2; done
  for b in r10 r10k; do
    "$BIN/stk" site create "$b.localhost" >/dev/null
    "$BIN/stk" app upload "$WORK/$b" --name "$b" --version 1 >/dev/null
    "$BIN/stk" deploy "$b.localhost" "$b@1" --wait >/dev/null
  done
}

#!/usr/bin/env bash
# `_redirects` at scale, end to end over HTTPS on one edge: request rate, latency and the edge's
# CPU per request with a `_redirects` of 10 rules vs 10,000 rules (2,000 static, the rest
# placeholders and splats) on a path that matches no rule, one that matches the last rule, and a
# plain file; then the staging time and the edge's RSS growth for a bundle with 10,000 redirect
# rules and 1,000 `_headers` blocks. See bench/README.md; results in bench/RESULTS.md.
#
#   bench/redirects-https.sh                          # release build, 3 x 10 s per case
#   PROFILE=dev REPS=1 DURATION=5 bench/redirects-https.sh
source "$(dirname "$0")/common.sh"

CONNS=${CONNS:-32}
WORK=${BENCH_DIR:-/tmp/statiko-bench-redirects}
EDGE_HTTP=8190; EDGE_HTTPS=8593; EDGE_ADMIN=8596; CONTROL=8597

command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -q wrk >/dev/null; }

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

cat > "$WORK/node/config.yaml" <<EOF
nodeName: "bench"
secretsEncryptionKey: "$(head -c 32 /dev/urandom | base64)"
state: {store: "file", file: {path: "$WORK/node/state"}}
repo: {type: "local", local: {path: "$WORK/node/repo"}}
control: {listen: "$HOST:$CONTROL", tls: {enabled: false}, metrics: ""}
auth: {tokens: [{name: "bench", token: "bench-admin-token-0123456789", role: "admin"}]}
edge: {dataDir: "$WORK/node/data", http: "$HOST:$EDGE_HTTP", https: "$HOST:$EDGE_HTTPS", admin: "$HOST:$EDGE_ADMIN", limits: {perClient: {maxConnections: 0}}}
log: {format: "text", level: "warn"}
EOF

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
"$BIN/statiko-control" --config "$WORK/node/config.yaml" > "$WORK/logs/control.log" 2>&1 & STARTED+=($!)
"$BIN/statiko-edge" --config "$WORK/node/config.yaml" > "$WORK/logs/edge.log" 2>&1 & STARTED+=($!)
EDGE_PID=${STARTED[1]}
wait_port $CONTROL; wait_port $EDGE_HTTPS
export STATIKO_ENDPOINT=http://$HOST:$CONTROL STATIKO_TOKEN=bench-admin-token-0123456789
for b in r10 r10k; do
  "$BIN/stk" site create "$b.localhost" >/dev/null
  "$BIN/stk" app upload "$WORK/$b" --name "$b" --version 1 >/dev/null
  "$BIN/stk" deploy "$b.localhost" "$b@1" --wait >/dev/null
done
log "serving r10.localhost and r10k.localhost on https://$HOST:$EDGE_HTTPS (load $(load))"

# One wrk run: prints "req/s p50_ms p99_ms cpu_us_per_req".
measure() { # $1 host, $2 path, $3 seconds
  local out j0 j1
  j0=$(proc_jiffies "$EDGE_PID")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${3}s" --latency -H "Host: $1" "https://$HOST:$EDGE_HTTPS$2")
  j1=$(proc_jiffies "$EDGE_PID")
  echo "$out" | awk -v j=$((j1 - j0)) -v hz="$HZ" '
    function ms(v) { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; return n }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec/ { rps = $2 } /requests in/ { reqs = $1 }
    END { printf "%.0f %.2f %.2f %.1f\n", rps, p50, p99, (reqs > 0 ? j / hz * 1e6 / reqs : 0) }'
}

CSV=$WORK/results.csv
echo "case,rules,rep,req_s,p50_ms,p99_ms,edge_cpu_us_per_req,load1" > "$CSV"
declare -A PATHS=([no-match]=/nothing/here [last-rule]=/last/a/b [plain-file]=/file.txt)
for case in no-match last-rule plain-file; do
  path=${PATHS[$case]}
  for b in r10 r10k; do
    status=$(curl -sk -o /dev/null -w '%{http_code}' -H "Host: $b.localhost" "https://$HOST:$EDGE_HTTPS$path")
    log "$case on $b ($path -> $status)"
    measure "$b.localhost" "$path" "$WARMUP" >/dev/null
    for rep in $(seq 1 "$REPS"); do
      read -r rps p50 p99 cpu < <(measure "$b.localhost" "$path" "$DURATION")
      echo "$case,${b#r},$rep,$rps,$p50,$p99,$cpu,$(load)" >> "$CSV"
    done
  done
done

# Staging: a fresh bundle with 10,000 rules and 1,000 header blocks, deploy to served.
"$BIN/stk" site create big.localhost >/dev/null
"$BIN/stk" app upload "$WORK/big" --name big --version 1 >/dev/null
before=$(rss_kib "$EDGE_PID")
started=$(date +%s%N)
"$BIN/stk" deploy big.localhost big@1 --immediate --wait >/dev/null
took_ms=$(( ($(date +%s%N) - started) / 1000000 ))
after=$(rss_kib "$EDGE_PID")
big_status=$(curl -sk -o /dev/null -w '%{http_code}' -H "Host: big.localhost" "https://$HOST:$EDGE_HTTPS/last/x")

echo
echo "machine: $(nproc) cores, load now $(load); profile $PROFILE; commit $(git rev-parse --short HEAD)"
echo "| case | rules | req/s | p50 / p99 ms | edge CPU/req µs | load1 |"
echo "|---|---:|---:|---:|---:|---:|"
python3 - "$CSV" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
seen = []
for r in rows:
    key = (r["case"], r["rules"])
    if key not in seen:
        seen.append(key)
for case, rules in seen:
    rs = [r for r in rows if (r["case"], r["rules"]) == (case, rules)]
    med = lambda f: statistics.median(float(r[f]) for r in rs)
    print(f"| {case} | {rules} | {med('req_s'):.0f} | {med('p50_ms'):.2f} / {med('p99_ms'):.2f} "
          f"| {med('edge_cpu_us_per_req'):.1f} | {rs[-1]['load1']} |")
PY
echo
echo "staging 10,000 redirect rules + 1,000 header blocks: deploy --immediate --wait ${took_ms} ms, edge RSS ${before} -> ${after} KiB (+$(( after - before )) KiB); /last/x -> $big_status"
echo "raw: $CSV"

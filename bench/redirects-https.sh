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

. bench/redirects-setup.sh
command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -q wrk >/dev/null; }

start_node
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
echo "machine: $(nproc) cores, load now $(load); $BUILD_LABEL; commit $(git rev-parse --short HEAD)"
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

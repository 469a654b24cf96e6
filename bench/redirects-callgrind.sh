#!/usr/bin/env bash
# `_redirects` at scale, deterministic: the instructions the edge executes per HTTPS request with
# a `_redirects` of 10 rules vs 10,000 (2,000 static, the rest placeholders and splats) on a path
# that matches no rule, one that matches the last rule, and a plain file. The edge runs under
# valgrind's callgrind (no hardware counters needed: `perf stat -e instructions` is not supported
# on this VM), so the count does not depend on the machine's load, unlike the wall-clock figures
# of bench/redirects-https.sh. Run by hand; results in bench/RESULTS.md.
#
# Per case, `curl` sends N1 and then N2 requests, each batch on one keep-alive connection (one
# TLS handshake); the instructions the edge executed over each batch are read from callgrind
# dumps (`callgrind_control -d`, which also zeroes the counters), the idle rate (instructions
# per second with no request, timers and the like) times the batch's duration is subtracted, and
#   per request = (batch N2 - batch N1) / (N2 - N1)
# so the handshake and every fixed cost cancel out.
#
#   bench/redirects-callgrind.sh                 # release build, N1=50 N2=550
#   PROFILE=dev N2=250 bench/redirects-callgrind.sh
source "$(dirname "$0")/common.sh"

N1=${N1:-50}
N2=${N2:-550}
WORK=${BENCH_DIR:-/tmp/statiko-bench-redirects-callgrind}
EDGE_HTTP=8191; EDGE_HTTPS=8594; EDGE_ADMIN=8598; CONTROL=8599

. bench/redirects-setup.sh
command -v valgrind >/dev/null || { log "installing valgrind"; apt-get install -y -q valgrind >/dev/null; }

mkdir -p "$WORK/cg"
start_node valgrind --tool=callgrind --callgrind-out-file="$WORK/cg/edge.out" --dump-instr=no
log "edge under callgrind (pid $EDGE_PID), serving r10.localhost and r10k.localhost"

# Dumps the counters (zeroing them) and prints the instructions since the previous dump. Dumps
# are numbered edge.out.1, .2, ... in order, so the next one is one more than those there.
dump() {
  local n file i
  n=$(find "$WORK/cg" -name 'edge.out.*' | wc -l)
  file=$WORK/cg/edge.out.$((n + 1))
  callgrind_control -d "$EDGE_PID" >/dev/null
  for i in $(seq 1 100); do [ -s "$file" ] && grep -q '^totals:' "$file" && break; sleep 0.1; done
  awk '/^totals:/ { print $2 }' "$file"
}
now_ms() { date +%s%3N; }

# One batch: $1 host, $2 path, $3 requests on one connection. Prints "instructions ms".
batch() {
  local host=$1 path=$2 n=$3 i conf=$WORK/curl.conf started
  : > "$conf"
  for i in $(seq 1 "$n"); do
    printf 'url = "https://%s:%s%s"\noutput = "/dev/null"\n' "$host" "$EDGE_HTTPS" "$path" >> "$conf"
  done
  dump >/dev/null
  started=$(now_ms)
  curl -sk --resolve "$host:$EDGE_HTTPS:$HOST" -K "$conf" -w '%{http_code}\n' > "$WORK/codes"
  echo "$(dump) $(( $(now_ms) - started ))"
}

# The idle rate, instructions per second, over 5 s with no request.
dump >/dev/null; started=$(now_ms); sleep 5
IDLE_IR=$(dump); IDLE_MS=$(( $(now_ms) - started ))
log "idle: $IDLE_IR instructions in $IDLE_MS ms"

CSV=$WORK/results.csv
echo "case,rules,status,n1_ir,n1_ms,n2_ir,n2_ms,ir_per_request" > "$CSV"
declare -A PATHS=([no-match]=/nothing/here [last-rule]=/last/a/b [plain-file]=/file.txt)
for case in no-match last-rule plain-file; do
  path=${PATHS[$case]}
  for b in r10 r10k; do
    batch "$b.localhost" "$path" 5 >/dev/null # warm-up: caches, lazily built state
    read -r ir1 ms1 < <(batch "$b.localhost" "$path" "$N1")
    read -r ir2 ms2 < <(batch "$b.localhost" "$path" "$N2")
    status=$(sort -u "$WORK/codes" | tr '\n' ' ')
    per=$(awk -v a="$ir1" -v am="$ms1" -v b="$ir2" -v bm="$ms2" -v i="$IDLE_IR" -v im="$IDLE_MS" \
      -v n1="$N1" -v n2="$N2" 'BEGIN { r = i / im; printf "%.0f", ((b - r * bm) - (a - r * am)) / (n2 - n1) }')
    log "$case on $b ($path -> $status): $per instructions per request"
    echo "$case,${b#r},${status% },$ir1,$ms1,$ir2,$ms2,$per" >> "$CSV"
  done
done

echo
echo "machine: $(nproc) cores, load now $(cut -d' ' -f1 /proc/loadavg); $BUILD_LABEL; commit $(git rev-parse --short HEAD); N1=$N1 N2=$N2"
echo "| case | status | 10 rules: instr/req | 10,000 rules: instr/req | 10,000 vs 10 |"
echo "|---|---|---:|---:|---:|"
python3 - "$CSV" <<'PY'
import csv, sys
rows = {(r["case"], r["rules"]): r for r in csv.DictReader(open(sys.argv[1]))}
for case in ["no-match", "last-rule", "plain-file"]:
    a, b = rows[(case, "10")], rows[(case, "10k")]
    x, y = float(a["ir_per_request"]), float(b["ir_per_request"])
    print(f"| {case} | {a['status']} | {x:,.0f} | {y:,.0f} | {100 * (y - x) / x:+.2f} % |")
PY
echo "raw: $CSV"

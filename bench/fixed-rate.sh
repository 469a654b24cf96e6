# Fixed-rate latency (MODE=fixed) and HTTP/3 rows (MODE=h3), sourced by bench/run.sh once the
# servers run; uses its helpers (ports, server_pids, wait_quiet, proc_jiffies, ...).
#
# oha holds a request rate (-q RATE, spread over CONNS connections) and, with
# --latency-correction, counts each request from the moment it was due rather than from when it
# was sent, so a stall is not hidden by the requests it delayed (coordinated omission; wrk at
# saturation measures something else: the queue it builds itself).
#
# For each case, every server is first driven at saturation for SAT_DURATION s (also the
# "saturation" row); the slowest server's rate sets the fixed rates (FIXED_PCTS % of it), and
# every server is measured at each of them for FIXED_DURATION s, one server at a time.


oha_url() { # server case
  local hp sp f
  read -r hp sp < <(ports "$1")
  case $2 in *-1k) f=1k.bin ;; *-100k) f=100k.bin ;; *) f=index.html ;; esac
  case $2 in plain-*) echo "http://localhost:$hp/$f" ;; *) echo "https://localhost:$sp/$f" ;; esac
}

# One oha run; prints "rps p50 p99 p999 errors srv_cores other_cores" (latencies in ms).
oha_run() { # server case duration [rate]
  local s=$1 c=$2 dur=$3 rate=${4:-} pids out flags=()
  pids=$(server_pids "$s" | tr '\n' ' ')
  out=$WORK/logs/oha.$s.$c.${rate:-sat}.json
  case $c in h2-*) flags=(--http2) ;; h3-*) flags=(--http-version 3) ;; esac
  [ -n "$rate" ] && flags+=(-q "$rate" --latency-correction)
  local b0 p0 t0 b1 p1 t1
  b0=$(busy_jiffies); p0=$(proc_jiffies $pids); t0=$(date +%s.%N)
  "$OHA_BIN" --no-tui --output-format json --insecure --ipv4 -c "$CONNS" -z "${dur}s" \
    "${flags[@]}" "$(oha_url "$s" "$c")" > "$out" 2> "$out.err" || true
  t1=$(date +%s.%N); b1=$(busy_jiffies); p1=$(proc_jiffies $pids)
  python3 - "$out" "$c" $((p1 - p0)) $((b1 - b0)) "$t0" "$t1" "$HZ" "$dur" <<'PY'
import json, sys
path, case, srv, busy, t0, t1, hz, dur = sys.argv[1:9]
wall = float(t1) - float(t0)
try:
    r = json.load(open(path))
except ValueError:
    print("- - - - - - -"); sys.exit()
# oha's HTTP/3 client can linger for tens of seconds after the deadline before it exits (seen
# with Caddy 2.6.2: a 1 s run took 30 s); its requestsPerSec then divides by the whole time.
# Count over the requested duration instead when the run overstayed it, and the server's CPU
# over the same window (it idles in the linger).
ran = r["summary"].get("total") or wall
window = ran if ran <= float(dur) * 1.2 else float(dur)
wall = min(wall, window) if ran > float(dur) * 1.2 else wall
p = r.get("latencyPercentilesSuccessful") or r["latencyPercentiles"]
ms = lambda k: "%.2f" % (p[k] * 1000) if p.get(k) is not None else "-"
codes = r.get("statusCodeDistribution", {})
bad = sum(n for code, n in codes.items() if not code.startswith("2"))
bad += sum(n for e, n in r.get("errorDistribution", {}).items() if "deadline" not in e)
ok = sum(n for code, n in codes.items() if code.startswith("2"))
want = {"1k": 1024, "100k": 102400}.get(case.rsplit("-", 1)[-1])
total = r["summary"].get("totalData") or 0
if want and ok and total < want * ok * 0.99:
    bad += ok  # bodies shorter than the file: every request counts as an error
srv_cores = int(srv) / int(hz) / wall
other = int(busy) / int(hz) / wall - srv_cores
rps = r["summary"]["requestsPerSec"] * ran / window
print("%.0f %s %s %s %d %.2f %.2f" % (rps, ms("p50"), ms("p99"),
                                      ms("p99.9"), bad, srv_cores, other))
PY
}

# The table for CASES x SERVERS: saturation, then each fixed rate. Appends to $1 (CSV).
fixed_table() { # csv "cases" "servers"
  local csv=$1 cases=$2 servers=$3 c s pct rate slowest line
  for c in $cases; do
    slowest=""
    for s in $servers; do
      wait_quiet
      oha_run "$s" "$c" "$WARMUP" > /dev/null
      line=$(oha_run "$s" "$c" "$SAT_DURATION")
      echo "$c,$s,sat,-,${line// /,}" >> "$csv"
      log "$s $c saturation: $line"
      read -r rate _ <<< "$line"
      [ "$rate" = - ] && continue
      if [ -z "$slowest" ] || [ "$rate" -lt "$slowest" ]; then slowest=$rate; fi
    done
    [ -n "$slowest" ] || continue
    for pct in $FIXED_PCTS; do
      rate=$((slowest * pct / 100))
      for s in $servers; do
        wait_quiet
        line=$(oha_run "$s" "$c" "$FIXED_DURATION" "$rate")
        echo "$c,$s,$pct,$rate,${line// /,}" >> "$csv"
        log "$s $c at $rate req/s ($pct %): $line"
      done
    done
  done
}

fixed_report() { # csv title
  python3 - "$1" "$2" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"### {sys.argv[2]}\n")
servers = list(dict.fromkeys(r["server"] for r in rows))
hdr = ["case", "load"] + [f"{s} p50 / p99 / p99.9 ms" for s in servers] + [f"{s} CPU/req µs" for s in servers]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for case in dict.fromkeys(r["case"] for r in rows):
    for load in dict.fromkeys(r["load"] for r in rows if r["case"] == case):
        cells = {r["server"]: r for r in rows if r["case"] == case and r["load"] == load}
        if load == "sat":
            label = "saturation: " + ", ".join(f"{s} {float(cells[s]['rps']):,.0f}" for s in servers if s in cells and cells[s]["rps"] != "-") + " req/s"
        else:
            label = f"{load} % = {int(next(iter(cells.values()))['rate']):,} req/s"
        lat, cpu = [], []
        for s in servers:
            r = cells.get(s)
            if not r or r["rps"] == "-":
                lat.append("-"); cpu.append("-"); continue
            err = f" ({r['errors']} errors)" if r["errors"] not in ("0", "-") else ""
            lat.append(f"{r['p50']} / {r['p99']} / {r['p999']}{err}")
            rps = float(r["rps"]) or 1
            cpu.append(f"{float(r['srv_cores']) / rps * 1e6:.1f}")
        print("| " + " | ".join([case, label] + lat + cpu) + " |")
print()
PY
}

FIXED_CSV=$WORK/fixed-$(date -u +%Y%m%d-%H%M%S).csv
echo "case,server,load,rate,rps,p50,p99,p999,errors,srv_cores,other_cores" > "$FIXED_CSV"
H3_CSV=${FIXED_CSV/fixed-/h3-}
cp "$FIXED_CSV" "$H3_CSV"
{
  echo "# bench/run.sh MODE=$MODE $DATE on $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
  echo "# statiko $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo +dirty) ($BUILD_LABEL); $("$OHA_BIN" --version); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# oha -c $CONNS; saturation ${SAT_DURATION}s, each fixed rate ${FIXED_DURATION}s with --latency-correction"
  echo
} > "$WORK/fixed-report.head"
if has_mode fixed; then
  fixed_table "$FIXED_CSV" "$FIXED_CASES" "$FIXED_SERVERS"
fi
if has_mode h3; then
  fixed_table "$H3_CSV" "$H3_CASES" "edge caddy"
fi
{
  cat "$WORK/fixed-report.head"
  has_mode fixed && fixed_report "$FIXED_CSV" "Fixed rate: edge, nginx, static-web-server"
  has_mode h3 && fixed_report "$H3_CSV" "HTTP/3: edge vs Caddy"
  echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); raw: $FIXED_CSV $H3_CSV"
} | tee "${FIXED_CSV%.csv}.md"
log "table: ${FIXED_CSV%.csv}.md"

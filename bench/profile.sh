# Where a small request's CPU goes (MODE=profile), sourced by bench/run.sh once the servers
# run; uses its helpers (log, wait_quiet, measure) and its wrk cases.
#
# For each of PROFILE_CASES (default: tls-1k plain-1k) the edge is driven by wrk as in the
# saturation matrix while `perf record -e cpu-clock` (software sampling: works in VMs without
# hardware counters) samples the edge process for the run; the samples are then split by the
# symbol they hit into kernel (syscalls, TCP, scheduler), TLS (rustls, aws-lc), HTTP (hyper,
# h2, http), our handler (statiko_*), metrics, allocation, copies, async runtime (tokio, mio)
# and the rest. Needs `perf` (apt-get install linux-perf) and root or
# kernel.perf_event_paranoid <= 1. Release binaries keep line tables and symbols
# (`debug = "line-tables-only"`), so `perf report -i FILE` shows the functions behind each row.

PROFILE_CASES=${PROFILE_CASES:-"tls-1k plain-1k"}
command -v perf >/dev/null || { log "perf not found (apt-get install linux-perf)"; exit 1; }

profile_split() { # perf.data case rps cores
  perf report -i "$1" --no-children --sort sym,dso --stdio --percent-limit 0 > "$1.txt" 2>/dev/null
  python3 - "$1.txt" "$2" "$3" "$4" <<'PY'
import re, sys
report, case = sys.argv[1], sys.argv[2]
rps, cores = float(sys.argv[3] or 0), float(sys.argv[4] or 0)
groups = [  # first match wins, in this order
    ("allocation", r"malloc|free|realloc|calloc|__rust_alloc|__rust_dealloc|__rdl_|_int_|tcache|sysmalloc|alloc::raw_vec"),
    ("copies", r"memcpy|memmove|memset|memcmp|__memcpy|__memmove"),
    ("metrics", r"metrics|prometheus|histogram|Histogram|counter|Counter"),
    ("TLS (rustls, aws-lc)", r"rustls|aws_lc|aes|gcm|GFp|sha|poly1305|chacha|ecp_nistz|bn_|CRYPTO|EVP_"),
    ("HTTP (hyper, h2, http)", r"hyper|\bh2::|http::|httparse|http_body|headers"),
    ("our handler (statiko)", r"statiko"),
    ("async runtime (tokio, mio)", r"tokio|mio::|futures|parking_lot|std::sync|tracing"),
]
totals, kernel, other, total = {g: 0.0 for g, _ in groups}, 0.0, 0.0, 0.0
top_other = []
for line in open(report):
    m = re.match(r"\s*([0-9.]+)%\s+\[(.)\]\s+(.*?)\s{2,}(\S+)\s*$", line)
    if not m:
        continue
    pct, kind, sym, dso = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    total += pct
    if kind == "k" or dso.startswith("[kernel"):
        kernel += pct
        continue
    for g, pat in groups:
        if re.search(pat, sym):
            totals[g] += pct
            break
    else:
        other += pct
        top_other.append((pct, sym[:70]))
rows = [("kernel (syscalls, TCP/IP, scheduling)", kernel)] + list(totals.items()) + [("other", other)]
per_req = lambda pct: f"{pct / 100 * 1e6 / rps * cores:.2f}" if rps else "-"
print(f"\n{case}: {rps:,.0f} req/s; share of the edge's samples and µs of edge CPU per request\n")
print("| part | share | µs/request |")
print("|---|---:|---:|")
for name, pct in rows:
    print(f"| {name} | {pct:.1f} % | {per_req(pct)} |")
top_other.sort(reverse=True)
print("\nlargest 'other' symbols: " + "; ".join(f"{s} {p:.1f} %" for p, s in top_other[:6]))
PY
}

PROFILE_OUT=$WORK/profile-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$PROFILE_OUT"
{
  echo "# bench/run.sh MODE=profile $DATE on $(nproc) cores, kernel $(uname -r); statiko $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) ($BUILD_LABEL)"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$THREADS -c$CONNS ${DURATION}s; perf record -e cpu-clock -F 2000 on the edge"
  for c in $PROFILE_CASES; do
    wait_quiet
    measure edge "$c" "$WARMUP" > /dev/null
    wait_quiet
    perf record -e cpu-clock -F 2000 -p "$EDGE_PID" -o "$PROFILE_OUT/$c.perf.data" -- sleep "$DURATION" \
      > /dev/null 2>&1 &
    perf_pid=$!
    read -r rps _ _ _ scpu _ _ < <(measure edge "$c" "$DURATION")
    wait "$perf_pid" || true
    log "edge $c: $rps req/s, $scpu cores; profile in $PROFILE_OUT/$c.perf.data"
    # µs of edge CPU per request = share x cores the edge used / req/s
    profile_split "$PROFILE_OUT/$c.perf.data" "$c" "$rps" "$scpu"
  done
} | tee "$PROFILE_OUT/split.md"
log "table: $PROFILE_OUT/split.md"

#!/usr/bin/env bash
# Statiko edge vs nginx on the same files, in the same run, on loopback; prints a table with
# req/s, p50/p99 latency, peak RSS and the edge/nginx ratio per case. See bench/README.md.
#
#   bench/run.sh                       # every case, 3 x 10 s each, shared layout
#   CASES="tls-1k h2-100k" REPS=1 DURATION=5 bench/run.sh
#   WITH_SWS=1 WITH_CADDY=1 bench/run.sh   # also re-measure static-web-server / Caddy
#   MODE=fixed bench/run.sh            # fixed-rate tail latency (oha -q, --latency-correction)
#   MODE=h3 bench/run.sh               # HTTP/3 rows, edge vs Caddy (oha --http-version 3)
#   MODE=profile bench/run.sh          # perf profile of the edge under tls-1k / plain-1k
#   EDGE_ENV=MALLOC_ARENA_MAX=2 bench/run.sh   # the edge as the systemd unit / image run it
#   BIN_DIR=target/release bench/run.sh  # use binaries built beforehand (no cargo build)
#   MODE=fixed SAT_DURATION=1 FIXED_DURATION=1 FIXED_PCTS=50 WARMUP=1 QUIET_WAIT=0 bench/run.sh
#                                      # dry run: every step once, seconds per run (no figures)
#
# The method is the anchor benchmarks' (shared/bench): wrk / h2load / openssl s_time with 64
# connections, a 2 s warm-up per case, the run waits for an idle machine and is redone when
# other processes used CPU during it; peak RSS sampled every 0.5 s from /proc.
source "$(dirname "$0")/common.sh"

CONNS=${CONNS:-64}
HS_PROCS=${HS_PROCS:-16}
QUIET_MAX=${QUIET_MAX:-0.15}     # cores busy before a run (else wait, at most QUIET_WAIT s)
QUIET_WAIT=${QUIET_WAIT:-600}
OTHER_MAX=${OTHER_MAX:-0.35}     # unexplained cores during a run (else redo, up to RETRIES times)
RETRIES=${RETRIES:-5}
ALL_CASES="tls-1k tls-100k h2-100k plain-1k plain-10m hs-full hs-resume"
CASES=${CASES:-$ALL_CASES}
# saturation: the wrk / h2load / s_time matrix above; fixed: the fixed-rate latency table (edge,
# nginx, sws); h3: HTTP/3 rows against Caddy; all: the three in turn; profile: where the
# edge's CPU per small request goes (bench/profile.sh; not part of all).
MODE=${MODE:-saturation}
FIXED_CASES=${FIXED_CASES:-"tls-1k plain-1k h2-1k tls-100k"}
H3_CASES=${H3_CASES:-"h3-1k h3-100k"}
FIXED_PCTS=${FIXED_PCTS:-"25 50 75"}   # % of the slowest server's saturation rate
SAT_DURATION=${SAT_DURATION:-5}        # oha saturation run per server (finds the rates)
FIXED_DURATION=${FIXED_DURATION:-10}   # each fixed-rate run
has_mode() { [ "$MODE" = all ] || [ "$MODE" = "$1" ]; }
WITH_SWS=${WITH_SWS:-0}
WITH_CADDY=${WITH_CADDY:-0}
FIXED_SERVERS=${FIXED_SERVERS:-"edge nginx sws"}
case " $FIXED_SERVERS " in *" sws "*) has_mode fixed && WITH_SWS=1 ;; esac
has_mode h3 && WITH_CADDY=1
EDGE_ENV=${EDGE_ENV:-}   # extra environment of the edge only, e.g. "MALLOC_ARENA_MAX=2"
WORK=${BENCH_DIR:-/tmp/statiko-bench}
# ports: edge, nginx, sws, caddy (plain / TLS); control and edge admin
EDGE_HTTP=8090; EDGE_HTTPS=8493; EDGE_ADMIN=8496; CONTROL=8497
NGINX_HTTP=8080; NGINX_HTTPS=8443
SWS_HTTP=8082; SWS_HTTPS=8445
CADDY_HTTP=8081; CADDY_HTTPS=8444


# --- tools ---------------------------------------------------------------------------------
need=()
for t in nginx:nginx wrk:wrk h2load:nghttp2-client hyperfine:hyperfine openssl:openssl; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[ "$WITH_CADDY" = 1 ] && ! command -v caddy >/dev/null && need+=(caddy)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
fi
OHA_BIN=$(command -v oha || echo "$HOME/.cargo/bin/oha")
if { has_mode fixed || has_mode h3; } && ! { [ -x "$OHA_BIN" ] &&
    ! "$OHA_BIN" -n 1 --no-tui --http-version 3 http://127.0.0.1:9/ 2>&1 | grep -q 'not been built with HTTP/3'; }; then
  log "cargo install oha --features http3 (several minutes)"
  cargo install oha --locked --features http3
  OHA_BIN=$HOME/.cargo/bin/oha
fi
SWS_BIN=$(command -v static-web-server || echo "$HOME/.cargo/bin/static-web-server")
if [ "$WITH_SWS" = 1 ] && [ ! -x "$SWS_BIN" ]; then
  log "cargo install static-web-server (about 3 min)"
  cargo install static-web-server --locked
fi

build_binaries

# --- files, certificate, configs -----------------------------------------------------------
mkdir -p "$WORK"/{site,tls,run,logs}
SITE=$WORK/site
if [ ! -s "$SITE/10m.bin" ]; then
  head -c 1024 /dev/urandom > "$SITE/1k.bin"
  head -c 102400 /dev/urandom > "$SITE/100k.bin"
  head -c 10485760 /dev/urandom > "$SITE/10m.bin"
  echo '<!doctype html><title>bench</title><p>statiko bench</p>' > "$SITE/index.html"
fi
CERT=$WORK/tls/cert.pem; KEY=$WORK/tls/key.pem
if [ ! -s "$CERT" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$KEY" -out "$CERT" 2>/dev/null
fi
RUN=$WORK/run
rm -rf "$WORK/node"; mkdir -p "$WORK/node"
write_node_config "redirectHttp: false, "
cat > "$RUN/nginx.conf" <<EOF
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
daemon on;
worker_processes auto;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    access_log off; server_tokens off;
    keepalive_timeout 65; keepalive_requests 100000;
    open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h;
    client_body_temp_path $RUN/nb; proxy_temp_path $RUN/np; fastcgi_temp_path $RUN/nf;
    uwsgi_temp_path $RUN/nu; scgi_temp_path $RUN/ns;
    server {
        listen $HOST:$NGINX_HTTP reuseport;
        listen $HOST:$NGINX_HTTPS ssl http2 reuseport;
        server_name localhost;
        ssl_certificate $CERT; ssl_certificate_key $KEY;
        root $SITE;
        location / { try_files \$uri \$uri/ =404; }
    }
}
EOF
cat > "$RUN/Caddyfile" <<EOF
{
	admin off
	auto_https off
	servers {
		protocols h1 h2$(has_mode h3 && echo " h3")
	}
}
http://$HOST:$CADDY_HTTP, http://localhost:$CADDY_HTTP {
	bind $HOST
	root * $SITE
	file_server
}
https://$HOST:$CADDY_HTTPS, https://localhost:$CADDY_HTTPS {
	bind $HOST
	tls $CERT $KEY
	root * $SITE
	file_server
}
EOF

# --- helpers ---------------------------------------------------------------------------------
port_pids() { ss -ltnpH "( sport = :$1 )" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u; }
wait_port() { local i; for i in $(seq 1 200); do [ -n "$(port_pids "$1")" ] && return 0; sleep 0.05; done; log "port $1 never opened"; return 1; }
PAGE_KIB=$(( $(getconf PAGESIZE) / 1024 ))
rss_kib() { local p s=0 r; for p in "$@"; do { read -r _ r _ < "/proc/$p/statm"; } 2>/dev/null || r=0; s=$(( s + r * PAGE_KIB )); done; echo "$s"; }
busy_jiffies() { awk '/^cpu / { print $2+$3+$4+$7+$8 }' /proc/stat; }
proc_jiffies() { local p s=0 v; for p in "$@"; do v=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null); s=$(( s + ${v:-0} )); done; echo "$s"; }
HZ=$(getconf CLK_TCK)
wait_quiet() {
  local t0=$SECONDS b0 b1 u
  while :; do
    b0=$(busy_jiffies); sleep 1; b1=$(busy_jiffies)
    u=$(awk -v d=$((b1-b0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz}')
    awk -v u="$u" -v m="$QUIET_MAX" 'BEGIN{exit !(u < m)}' && return 0
    [ $((SECONDS - t0)) -ge "$QUIET_WAIT" ] && { log "machine still busy ($u cores), measuring anyway"; return 0; }
    sleep 2
  done
}
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /m$/) n*=60000; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'; }
h2_pct() { awk -F'\t' '$2 >= 0 { print $3 }' "$1" | sort -n | awk '{ a[NR]=$1 } END { if (NR==0) { print "- -"; exit } i50=int(NR*0.50); if (i50<1) i50=1; i99=int(NR*0.99); if (i99<1) i99=1; printf "%.2f %.2f\n", a[i50]/1000, a[i99]/1000 }'; }

STARTED=()
cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  [ -s "$RUN/nginx.pid" ] && kill -QUIT "$(cat "$RUN/nginx.pid")" 2>/dev/null || true
  sleep 1
  for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# --- start everything --------------------------------------------------------------------------
for p in $EDGE_HTTP $EDGE_HTTPS $EDGE_ADMIN $CONTROL $NGINX_HTTP $NGINX_HTTPS; do
  [ -z "$(port_pids $p)" ] || { log "port $p is busy"; exit 1; }
done
log "starting statiko-control and statiko-edge (single node, file store in $WORK/node)"
"$BIN/statiko-control" --config "$WORK/node/config.yaml" > "$WORK/logs/control.log" 2>&1 & STARTED+=($!)
# shellcheck disable=SC2086 # EDGE_ENV is a list of NAME=VALUE words
env $EDGE_ENV "$BIN/statiko-edge" --config "$WORK/node/config.yaml" > "$WORK/logs/edge.log" 2>&1 & STARTED+=($!)
EDGE_PID=${STARTED[1]}
wait_port $CONTROL; wait_port $EDGE_HTTPS
use_node
"$BIN/stk" cert import bench --cert "$CERT" --key "$KEY" >/dev/null
"$BIN/stk" site create localhost --tls imported:bench >/dev/null
"$BIN/stk" app upload "$SITE" --name bench --version 1 >/dev/null
"$BIN/stk" deploy localhost bench@1 --wait >/dev/null
log "edge serves bench@1 on https://localhost:$EDGE_HTTPS"
nginx -c "$RUN/nginx.conf" -p "$RUN" 2>/dev/null; wait_port $NGINX_HTTPS
SERVERS="edge nginx"
if [ "$WITH_SWS" = 1 ]; then
  "$SWS_BIN" --host $HOST --port $SWS_HTTP --root "$SITE" --log-level error > "$WORK/logs/sws-http.log" 2>&1 & STARTED+=($!)
  "$SWS_BIN" --host $HOST --port $SWS_HTTPS --root "$SITE" --log-level error --http2 true \
    --http2-tls-cert "$CERT" --http2-tls-key "$KEY" > "$WORK/logs/sws-https.log" 2>&1 & STARTED+=($!)
  wait_port $SWS_HTTPS; SERVERS="$SERVERS sws"
fi
if [ "$WITH_CADDY" = 1 ]; then
  XDG_DATA_HOME=$RUN/caddy XDG_CONFIG_HOME=$RUN/caddy caddy run --config "$RUN/Caddyfile" --adapter caddyfile \
    > "$WORK/logs/caddy.log" 2>&1 & STARTED+=($!)
  wait_port $CADDY_HTTPS; SERVERS="$SERVERS caddy"
fi
ports() { case $1 in edge) echo "$EDGE_HTTP $EDGE_HTTPS";; nginx) echo "$NGINX_HTTP $NGINX_HTTPS";; sws) echo "$SWS_HTTP $SWS_HTTPS";; caddy) echo "$CADDY_HTTP $CADDY_HTTPS";; esac; }
# The processes of a server: the edge is one process (its HTTP and HTTPS listeners); nginx is
# master + workers; sws is two processes.
server_pids() {
  local hp sp m
  case $1 in
    edge) echo "$EDGE_PID";;
    nginx) m=$(cat "$RUN/nginx.pid"); echo "$m"; pgrep -P "$m";;
    *) read -r hp sp < <(ports "$1"); { port_pids "$hp"; port_pids "$sp"; } | sort -u;;
  esac
}

# --- one run -----------------------------------------------------------------------------------
# Prints "rps p50 p99 rss_kib srv_cores other_cores errors"
measure() {
  local s=$1 c=$2 dur=$3 hp sp out pids
  read -r hp sp < <(ports "$s")
  pids=$(server_pids "$s" | tr '\n' ' ')
  out=$WORK/logs/$s.$c.txt
  local rss=0 r; local rssf; rssf=$(mktemp)
  ( m=0; trap 'echo $m > "$rssf"; exit 0' TERM; while :; do r=$(rss_kib $pids); [ "$r" -gt "$m" ] && m=$r && echo $m > "$rssf"; sleep 0.5; done ) &
  local sampler=$!
  local b0 p0 t0 b1 p1 t1; b0=$(busy_jiffies); p0=$(proc_jiffies $pids); t0=$(date +%s.%N)
  local url=https://$HOST:$sp H=(-H 'Host: localhost')
  local TIMEFORMAT='%U %S'
  { time {
  case $c in
    tls-1k) wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${H[@]}" "$url/1k.bin" > "$out" 2>&1;;
    tls-100k) wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${H[@]}" "$url/100k.bin" > "$out" 2>&1;;
    plain-1k) wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${H[@]}" "http://$HOST:$hp/1k.bin" > "$out" 2>&1;;
    plain-10m) wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${H[@]}" "http://$HOST:$hp/10m.bin" > "$out" 2>&1;;
    hs-resume) wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${H[@]}" -H 'Connection: close' "$url/1k.bin" > "$out" 2>&1;;
    h2-100k) h2load -t"$THREADS" -c"$CONNS" -m1 -D "$dur" -H ':authority: localhost' --log-file="$out.lat" "$url/100k.bin" > "$out" 2>&1;;
    hs-full)
      local i hs=(); for i in $(seq 1 "$HS_PROCS"); do
        # No CA store: s_time does not verify, but would still search /etc/ssl/certs for the
        # issuer of every certificate it gets, a client cost that differs by certificate.
        openssl s_time -connect "$HOST:$sp" -new -time "$dur" -no-CApath -no-CAfile -no-CAstore \
          > "$out.$i" 2>&1 & hs+=($!)
      done; wait "${hs[@]}";;
  esac
  } ; } 2> "$out.cpu"
  t1=$(date +%s.%N); b1=$(busy_jiffies); p1=$(proc_jiffies $pids)
  kill -TERM $sampler 2>/dev/null; wait $sampler 2>/dev/null || true
  rss=$(cat "$rssf"); rm -f "$rssf"
  local wall scpu tcpu ccpu other
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
  scpu=$(awk -v d=$((p1-p0)) -v w="$wall" -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz/w}')
  tcpu=$(awk -v d=$((b1-b0)) -v w="$wall" -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz/w}')
  ccpu=$(awk -v w="$wall" 'NF>=2 { printf "%.2f", ($(NF-1)+$NF)/w }' "$out.cpu"); rm -f "$out.cpu"
  other=$(awk -v t="$tcpu" -v a="$scpu" -v b="${ccpu:-0}" 'BEGIN{printf "%.2f", t-a-b}')
  local rps=- p50=- p99=- err=0
  case $c in
    h2-*)
      rps=$(awk '/^finished in/ { gsub(",","",$4); print $4 }' "$out")
      err=$(awk '/^requests:/ { print $10+$12+$14 }' "$out")
      read -r p50 p99 < <(h2_pct "$out.lat"); rm -f "$out.lat";;
    hs-full)
      local n; n=$(cat "$out".* | awk '/connections in .* real seconds/ { s+=$1 } END { print s+0 }')
      cat "$out".* > "$out"; rm -f "$out".*
      rps=$(awk -v n="$n" -v w="$wall" 'BEGIN{printf "%.0f", n/w}');;
    *)
      rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
      p50=$(to_ms "$(awk '/^ +50%/ { print $2 }' "$out")"); p99=$(to_ms "$(awk '/^ +99%/ { print $2 }' "$out")")
      err=$(awk '/Non-2xx or 3xx/ { s+=$NF } /Socket errors:/ { gsub(",",""); s+=$4+$6+$8+$10 } END { print s+0 }' "$out")
      # A server answering without the file (a wrong virtual host, an empty 200) is not fast:
      # every request counts as an error when fewer bytes came back than the file holds.
      local want; case $c in *-10m) want=10485760;; *-100k) want=102400;; *) want=1024;; esac
      err=$(( err + $(awk -v want="$want" '/ requests in .* read$/ {
          n = $1; v = $5; u = v; gsub(/[0-9.]/, "", u); gsub(/[A-Za-z]/, "", v)
          m = 1; if (u == "KB") m = 1024; if (u == "MB") m = 1048576; if (u == "GB") m = 1073741824
          short = (n > 0 && v * m / n < want * 0.99) ? n : 0 } END { print short + 0 }' "$out") ));;
  esac
  echo "${rps:--} $p50 $p99 $rss $scpu $other ${err:-0}"
}

DATE=$(date -u +%Y-%m-%dT%H:%MZ)
[ "$MODE" = saturation ] || [ "$MODE" = all ] || CASES=""
if has_mode fixed || has_mode h3; then
  # shellcheck source=bench/fixed-rate.sh
  . "$ROOT/bench/fixed-rate.sh"
fi
if [ "$MODE" = profile ]; then
  # shellcheck source=bench/profile.sh
  . "$ROOT/bench/profile.sh"
  exit 0
fi
[ -n "$CASES" ] || exit 0

# --- the matrix --------------------------------------------------------------------------------
RAW=$WORK/results-$(date -u +%Y%m%d-%H%M%S).csv
echo "case,server,rep,rps,p50_ms,p99_ms,rss_kib,srv_cores,other_cores,errors" > "$RAW"
for c in $CASES; do
  for s in $SERVERS; do
    wait_quiet
    measure "$s" "$c" "$WARMUP" >/dev/null
    for rep in $(seq 1 "$REPS"); do
      for try in $(seq 1 "$RETRIES"); do
        wait_quiet
        read -r rps p50 p99 rss scpu other err < <(measure "$s" "$c" "$DURATION")
        awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN{exit !(o > m)}' || break
        [ "$try" -lt "$RETRIES" ] && log "$s $c #$rep: $other cores unexplained, redo"
      done
      echo "$c,$s,$rep,$rps,$p50,$p99,$rss,$scpu,$other,$err" >> "$RAW"
      log "$s $c #$rep: rps=$rps p50=${p50}ms p99=${p99}ms rss=${rss}KiB srv=${scpu} other=${other} errors=$err"
    done
  done
done

# --- report: medians per case and server, ratio edge / nginx -----------------------------------
{
  echo "# bench/run.sh $DATE on $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
  echo "# statiko $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo +dirty) ($BUILD_LABEL); $(nginx -v 2>&1 | sed 's/.*version: //'); wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null); $(h2load --version 2>&1 | head -1); $(openssl version)"
  echo "# ${REPS} x ${DURATION}s per case, ${CONNS} connections, medians; raw: $RAW"
  echo
  python3 - "$RAW" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def num(v):
    try: return float(v)
    except ValueError: return None
cases, servers, cell = [], [], {}
for r in rows:
    if r["case"] not in cases: cases.append(r["case"])
    if r["server"] not in servers: servers.append(r["server"])
    cell.setdefault((r["case"], r["server"]), []).append(r)
def med(rs, k):
    v = [num(r[k]) for r in rs if num(r[k]) is not None]
    return statistics.median(v) if v else None
hdr = ["case"] + [f"{s} req/s" for s in servers] + [f"{s} p50/p99 ms" for s in servers] + [f"{s} RSS MiB" for s in servers] + ["edge/nginx req/s", "edge/nginx p99"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for c in cases:
    out = [c]
    m = {s: {k: med(cell.get((c, s), []), k) for k in ("rps", "p50_ms", "p99_ms", "rss_kib")} for s in servers}
    out += [f"{m[s]['rps']:,.0f}" if m[s]["rps"] is not None else "-" for s in servers]
    out += [(f"{m[s]['p50_ms']:.2f} / {m[s]['p99_ms']:.2f}" if m[s]["p50_ms"] is not None else "-") for s in servers]
    out += [f"{m[s]['rss_kib']/1024:.1f}" if m[s]["rss_kib"] is not None else "-" for s in servers]
    e, n = m.get("edge", {}), m.get("nginx", {})
    out.append(f"{e['rps']/n['rps']:.2f}" if e.get("rps") and n.get("rps") else "-")
    out.append(f"{e['p99_ms']/n['p99_ms']:.2f}" if e.get("p99_ms") and n.get("p99_ms") else "-")
    print("| " + " | ".join(out) + " |")
PY
} | tee "${RAW%.csv}.md"
log "table: ${RAW%.csv}.md"

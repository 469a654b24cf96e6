#!/usr/bin/env bash
# Brings up deploy/docker-compose.yml for real on this machine's Docker engine and checks the
# cluster: a site deployed through control is served by every edge; stopping the leader edge
# makes another edge leader; with every etcd member stopped every edge keeps serving while
# control answers UNAVAILABLE, and once etcd is back a new deploy reaches every edge; the etcd
# member control and the edges are connected to is killed (writes go on through the other two)
# and restarted; two of the three members are stopped (no quorum: writes fail with UNAVAILABLE,
# then succeed again within seconds of the quorum returning), with every edge probed throughout
# the etcd faults; an edge disconnected from the network keeps serving its last state and catches
# up when reconnected; every edge ends at the same revision serving the deployed bytes.
# Everything is torn down at the end, pass or fail.
#
# There is no image registry here, so nothing can be pulled: the script makes local stand-ins.
#   statiko-base:bookworm   Debian bookworm rootfs (debootstrap minbase + ca-certificates, curl,
#                           from the Debian mirror this machine's apt uses), `docker import`ed;
#                           cached: made only when missing.
#   statiko-etcd:ci         the base plus the host's Debian etcd and etcdctl (deploy/compose/Dockerfile.etcd)
#   statiko:ci              the base plus the statiko binaries built on the host (deploy/Dockerfile.local)
# and runs the compose file with STATIKO_IMAGE / STATIKO_ETCD_IMAGE pointing at them.
#
# The binaries are the debug build that scripts/test.sh has already made (cargo build
# --workspace --bins): the checks are about behaviour, not speed, and a release build would cost
# CI several more minutes on two cores. STATIKO_COMPOSE_PROFILE=release uses target/release.
#
# Environment: CARGO_TARGET_DIR (default ./target), STATIKO_COMPOSE_PROFILE (debug),
# STATIKO_DEBIAN_MIRROR (default: the first Debian release source in /etc/apt/sources.list,
# /etc/apt/sources.list.d/*.list or *.sources), STATIKO_COMPOSE_KEEP=1 (no teardown, to debug by
# hand).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# debootstrap is in /usr/sbin.
export PATH="$PATH:/usr/sbin:/sbin"

PROJECT="statiko-ci-$$"
BASE_IMAGE="statiko-base:bookworm"
STATIKO_IMAGE="statiko:ci"
ETCD_IMAGE="statiko-etcd:ci"
PROFILE="${STATIKO_COMPOSE_PROFILE:-debug}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN_DIR="$TARGET_DIR/$PROFILE"
MIRROR="${STATIKO_DEBIAN_MIRROR:-}"
TOKEN="statiko-compose-admin-token-change-me" # deploy/compose/statiko.yaml
DOMAIN="demo.test"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/statiko-compose.XXXXXX")"
START=$SECONDS

log() { echo "[test-compose +$((SECONDS - START))s] $*"; }
fail() {
  echo "[test-compose +$((SECONDS - START))s] FAIL: $*" >&2
  exit 1
}

# --- tools -----------------------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  fail "neither 'docker compose' nor 'docker-compose' is installed (scripts/install-deps.sh installs docker-compose)"
fi
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer (docker info)"

compose() {
  STATIKO_IMAGE="$STATIKO_IMAGE" STATIKO_ETCD_IMAGE="$ETCD_IMAGE" \
    "${COMPOSE_CMD[@]}" --project-name "$PROJECT" --file "$ROOT/deploy/docker-compose.yml" "$@"
}

# Keep the original stdout and stderr: a signal can arrive while a helper runs with its output
# sent to /dev/null, and the trap would inherit that.
exec 3>&1 4>&2
cleanup() {
  local status=$?
  set +e
  exec 1>&3 2>&4
  [ -n "${PROBE_PID:-}" ] && kill "$PROBE_PID" 2>/dev/null
  if [ "$status" -ne 0 ]; then
    echo "---- container status ----" >&2
    compose ps >&2
    echo "---- last log lines ----" >&2
    compose logs --no-color --tail 40 >&2
  fi
  if [ "${STATIKO_COMPOSE_KEEP:-}" = 1 ]; then
    log "STATIKO_COMPOSE_KEEP=1: leaving project $PROJECT up (docker-compose -p $PROJECT down -v)"
  else
    compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    # The two small images are rebuilt every run (seconds); only the base image is cached.
    docker image rm -f "$STATIKO_IMAGE" "$ETCD_IMAGE" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  if [ "$status" -eq 0 ]; then
    log "passed in $((SECONDS - START))s"
  else
    echo "[test-compose] failed (exit $status) after $((SECONDS - START))s" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for binary in statiko-control statiko-edge stk; do
  if [ ! -x "$BIN_DIR/$binary" ]; then
    log "building the binaries ($PROFILE)"
    profile_flag=()
    [ "$PROFILE" = release ] && profile_flag=(--release)
    cargo build -j2 --locked "${profile_flag[@]}" -p statiko-control -p statiko-edge -p statiko-cli
    break
  fi
done
STK="$BIN_DIR/stk"

for port in 2265 9081 9082 9083 9441 9442 9443; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "127.0.0.1:$port is already in use; the compose file publishes it"
  fi
done

# --- images ----------------------------------------------------------------------------------
# The Debian mirror this machine's apt already uses (so the script works wherever apt does): the
# first URI of a `deb` source for a release suite (no -security/-updates) with the main
# component, from one-line sources.list files, then deb822 *.sources files.
apt_mirror() {
  python3 - /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources <<'PY'
import re, sys

def release(suites):
    return any(s and "-" not in s and "/" not in s for s in suites)

for path in sys.argv[1:]:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for block in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for line in block.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if ("deb" in fields.get("types", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and release(fields.get("suites", "").split())
                    and "main" in fields.get("components", "").split()
                    and fields.get("uris")):
                print(fields["uris"].split()[0].rstrip("/"))
                sys.exit(0)
    else:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb" and release([words[2]]) and "main" in words[3:]:
                print(words[1].rstrip("/"))
                sys.exit(0)
sys.exit(1)
PY
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE is cached"
else
  command -v debootstrap >/dev/null 2>&1 || fail "debootstrap is missing (scripts/install-deps.sh installs it)"
  if [ -z "$MIRROR" ]; then
    MIRROR="$(apt_mirror)" ||
      fail "no Debian mirror in this machine's apt sources; set STATIKO_DEBIAN_MIRROR"
  fi
  log "making $BASE_IMAGE with debootstrap from $MIRROR (about a minute)"
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$rootfs" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    fail "debootstrap failed"
  }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

log "building $STATIKO_IMAGE and $ETCD_IMAGE"
mkdir -p "$WORK/statiko-context" "$WORK/etcd-context"
for binary in statiko-control statiko-edge stk; do
  # Debug info is most of a debug binary's size; the image does not need it.
  objcopy --strip-debug "$BIN_DIR/$binary" "$WORK/statiko-context/$binary" 2>/dev/null ||
    cp "$BIN_DIR/$binary" "$WORK/statiko-context/$binary"
done
cp "$ROOT/deploy/Dockerfile.local" "$WORK/statiko-context/Dockerfile"
for tool in etcd etcdctl; do
  path="$(command -v "$tool")" || fail "$tool is missing (scripts/install-deps.sh installs etcd-server and etcd-client)"
  cp "$path" "$WORK/etcd-context/$tool"
done
cp "$ROOT/deploy/compose/Dockerfile.etcd" "$WORK/etcd-context/Dockerfile"
# DOCKER_BUILDKIT=0: the classic builder needs no buildx plugin and never contacts a registry
# for a FROM image that is present locally.
build_image() { # build_image TAG CONTEXT
  DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$1" "$2" >"$WORK/build.log" 2>&1 || {
    tail -n 30 "$WORK/build.log" >&2
    fail "docker build $1"
  }
}
build_image "$STATIKO_IMAGE" "$WORK/statiko-context"
build_image "$ETCD_IMAGE" "$WORK/etcd-context"

# --- helpers ---------------------------------------------------------------------------------
EDGES=(edge1 edge2 edge3)
declare -A HTTPS_PORT=([edge1]=9441 [edge2]=9442 [edge3]=9443)

# eventually SECONDS DESCRIPTION COMMAND...: polls COMMAND every half second until it succeeds.
eventually() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "last attempt of: $*" >&2
      "$@" >&2 || true
      fail "$what (not within ${limit}s)"
    fi
    sleep 0.5
  done
}

# stk as the README's walkthrough runs it: endpoint, token and CA from the environment.
export STATIKO_ENDPOINT=https://127.0.0.1:2265 STATIKO_TOKEN="$TOKEN" STATIKO_CA="$WORK/control-ca.pem"
stk() { "$STK" "$@"; }

container() { compose ps -q "$1"; }

healthy() {
  local id
  id="$(container "$1")"
  [ -n "$id" ] && [ "$(docker inspect --format '{{.State.Health.Status}}' "$id")" = healthy ]
}

all_healthy() {
  local service
  for service in "$@"; do healthy "$service" || return 1; done
}

# page VERSION: what the demo site serves at / for that version.
page() { printf '<h1>Hello from Statiko %s</h1>\n' "$1"; }

# Fetches https://demo.test/ from an edge through its published port on the host.
host_fetch() { curl -fsSk --max-time 5 --resolve "$DOMAIN:${HTTPS_PORT[$1]}:127.0.0.1" "https://$DOMAIN:${HTTPS_PORT[$1]}/"; }
# Fetches it inside the edge's container, over its loopback (works while it is disconnected).
inner_fetch() { compose exec -T "$1" curl -fsSk --max-time 5 --resolve "$DOMAIN:8443:127.0.0.1" "https://$DOMAIN:8443/"; }
inner_status() { compose exec -T "$1" curl -fsS --max-time 5 http://127.0.0.1:2266/status; }
applied_revision() { inner_status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["appliedRevision"])'; }

serves() { # serves EDGE VERSION [host|inner]
  local body
  if [ "${3:-host}" = inner ]; then body="$(inner_fetch "$1")"; else body="$(host_fetch "$1")"; fi
  [ "$body" = "$(page "$2")" ]
}

all_serve() { # all_serve VERSION EDGE...
  local version=$1 edge
  shift
  for edge in "$@"; do serves "$edge" "$version" || return 1; done
}

# The names of the nodes that `stk cluster status` reports as leader, one per line.
leaders() {
  stk --output json cluster status |
    python3 -c 'import json,sys; [print(n["name"]) for n in json.load(sys.stdin)["nodes"] if n.get("leader")]'
}

one_leader_among() { # one_leader_among EDGE...: exactly one leader, and it is one of these
  local found
  found="$(leaders)" || return 1
  [ "$(printf '%s' "$found" | grep -c .)" -eq 1 ] || return 1
  printf '%s\n' "$@" | grep -qx "$found"
}

node_count() {
  stk --output json cluster status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))'
}
has_nodes() { [ "$(node_count)" -eq "$1" ]; }

upload() { # upload VERSION
  mkdir -p "$WORK/site-$1"
  page "$1" >"$WORK/site-$1/index.html"
  stk app upload "$WORK/site-$1" --name hello --version "$1" >/dev/null
}

ETCD_MEMBERS=(etcd1 etcd2 etcd3)

# The etcd member that most of control's and the edges' connections to etcd go to: their
# established TCP connections to port 2379, read from /proc/net/tcp inside each container.
busiest_member() {
  local ip member service
  ip="$(
    for service in control "${EDGES[@]}"; do compose exec -T "$service" cat /proc/net/tcp; done |
      python3 -c '
import collections, socket, struct, sys
counts = collections.Counter()
for line in sys.stdin:
    fields = line.split()
    if len(fields) < 4 or ":" not in fields[2]:
        continue
    address, port = fields[2].split(":")
    if fields[3] == "01" and int(port, 16) == 2379:
        counts[socket.inet_ntoa(struct.pack("<I", int(address, 16)))] += 1
print(counts.most_common(1)[0][0] if counts else "")'
  )"
  [ -n "$ip" ] || return 1
  for member in "${ETCD_MEMBERS[@]}"; do
    if docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' \
      "$(container "$member")" | grep -qwF "$ip"; then
      echo "$member"
      return 0
    fi
  done
  return 1
}

# Fetches the site from every edge every half second until $WORK/probe.stop exists, recording
# each failure in $WORK/outages: edges must never stop serving while etcd is in trouble.
probe_edges() {
  local edge
  while [ ! -e "$WORK/probe.stop" ]; do
    for edge in "${EDGES[@]}"; do
      host_fetch "$edge" >/dev/null 2>&1 || echo "$(date +%T) $edge" >>"$WORK/outages"
    done
    sleep 0.5
  done
}
PROBE_PID=""
start_probe() {
  rm -f "$WORK/probe.stop" "$WORK/outages"
  probe_edges &
  PROBE_PID=$!
}
stop_probe() { # stop_probe WHAT
  touch "$WORK/probe.stop"
  wait "$PROBE_PID" || true
  PROBE_PID=""
  if [ -s "$WORK/outages" ]; then
    cat "$WORK/outages" >&2
    fail "an edge failed to answer during $1"
  fi
}

same_applied_revision() {
  local first="" edge revision
  for edge in "${EDGES[@]}"; do
    revision="$(applied_revision "$edge")" || return 1
    if [ -z "$first" ]; then first=$revision; elif [ "$revision" != "$first" ]; then return 1; fi
  done
}


# --- bring the cluster up ----------------------------------------------------------------------
log "starting the cluster (project $PROJECT, $("${COMPOSE_CMD[@]}" version --short 2>/dev/null || echo compose))"
compose up -d --no-build >"$WORK/up.log" 2>&1 || {
  cat "$WORK/up.log" >&2
  fail "compose up"
}
eventually 90 "every container is healthy" all_healthy "${ETCD_MEMBERS[@]}" control "${EDGES[@]}"
compose exec -T control cat /var/lib/statiko/control-tls/cert.pem >"$WORK/control-ca.pem"
eventually 30 "control answers" stk cluster status
eventually 30 "all three edges are registered" has_nodes 3
log "cluster is up"

# --- 1. a site deployed through control is served by all three edges -------------------------
stk site create "$DOMAIN" >/dev/null
upload 1.0.0
stk deploy "$DOMAIN" hello@1.0.0 --wait --wait-timeout 60s >/dev/null
for edge in "${EDGES[@]}"; do
  serves "$edge" 1.0.0 host || fail "$edge does not serve hello@1.0.0 on 127.0.0.1:${HTTPS_PORT[$edge]}"
done
log "ok: hello@1.0.0 is served by every edge"

# --- 2. stopping the leader edge makes another edge leader -------------------------------------
eventually 30 "exactly one edge is leader" one_leader_among "${EDGES[@]}"
old_leader="$(leaders)"
others=()
for edge in "${EDGES[@]}"; do [ "$edge" = "$old_leader" ] || others+=("$edge"); done
log "leader is $old_leader; stopping its container"
compose stop --timeout 10 "$old_leader" >/dev/null 2>&1
eventually 30 "another edge becomes leader after $old_leader stopped" one_leader_among "${others[@]}"
log "ok: $(leaders) took over"
compose start "$old_leader" >/dev/null 2>&1
eventually 60 "$old_leader is healthy again" healthy "$old_leader"
eventually 30 "all three edges are registered again" has_nodes 3
eventually 30 "exactly one edge is leader after $old_leader returned" one_leader_among "${EDGES[@]}"

# --- 3. every etcd member stopped: edges keep serving, control answers UNAVAILABLE ----------
# From here to the end of 6, every edge is probed twice a second and must always answer.
start_probe
upload 2.0.0
log "stopping every etcd member"
compose stop --timeout 10 "${ETCD_MEMBERS[@]}" >/dev/null 2>&1
for round in 1 2 3; do
  for edge in "${EDGES[@]}"; do
    serves "$edge" 1.0.0 host || fail "$edge stopped serving hello@1.0.0 without etcd (round $round)"
  done
  sleep 1
done
if stk deploy "$DOMAIN" hello@2.0.0 >"$WORK/refused.out" 2>&1; then
  fail "a deploy succeeded while etcd was stopped"
fi
grep -q UNAVAILABLE "$WORK/refused.out" || {
  cat "$WORK/refused.out" >&2
  fail "control did not answer UNAVAILABLE without etcd"
}
log "ok: edges serve without etcd; control answers UNAVAILABLE"

# --- 4. etcd back: a new deploy reaches every edge ---------------------------------------------
compose start "${ETCD_MEMBERS[@]}" >/dev/null 2>&1
eventually 60 "every etcd member is healthy again" all_healthy "${ETCD_MEMBERS[@]}"
eventually 60 "a deploy succeeds after etcd returned" \
  stk deploy "$DOMAIN" hello@2.0.0 --wait --wait-timeout 20s
for edge in "${EDGES[@]}"; do
  serves "$edge" 2.0.0 host || fail "$edge does not serve hello@2.0.0 after etcd returned"
done
log "ok: hello@2.0.0 reached every edge after etcd returned"

# --- 5. the member control and the edges talk to killed, then restarted -----------------------
upload 2.1.0
member="$(busiest_member)" || fail "no connection from control or an edge to an etcd member"
log "killing $member, the etcd member most of the connections go to"
compose kill "$member" >/dev/null 2>&1
eventually 30 "a deploy succeeds with $member dead" \
  stk deploy "$DOMAIN" hello@2.1.0 --wait --wait-timeout 20s
for edge in "${EDGES[@]}"; do
  serves "$edge" 2.1.0 host || fail "$edge does not serve hello@2.1.0 with $member dead"
done
compose start "$member" >/dev/null 2>&1
eventually 60 "$member is healthy again" healthy "$member"
log "ok: with $member killed, writes went on and hello@2.1.0 reached every edge; $member is back"

# --- 6. quorum lost (two of three members stopped), then regained ----------------------------
upload 2.2.0
log "stopping etcd2 and etcd3: no quorum"
compose stop --timeout 10 etcd2 etcd3 >/dev/null 2>&1
if stk deploy "$DOMAIN" hello@2.2.0 >"$WORK/no-quorum.out" 2>&1; then
  fail "a deploy succeeded without a quorum"
fi
grep -q UNAVAILABLE "$WORK/no-quorum.out" || {
  cat "$WORK/no-quorum.out" >&2
  fail "control did not answer UNAVAILABLE without a quorum"
}
for edge in "${EDGES[@]}"; do
  serves "$edge" 2.1.0 host || fail "$edge stopped serving hello@2.1.0 without a quorum"
done
compose start etcd2 etcd3 >/dev/null 2>&1
returned=$SECONDS
eventually 30 "a deploy succeeds once the quorum is back" stk deploy "$DOMAIN" hello@2.2.0
writable_after=$((SECONDS - returned))
[ "$writable_after" -le 15 ] || fail "writes came back ${writable_after}s after the quorum did"
eventually 30 "every edge serves hello@2.2.0" all_serve 2.2.0 "${EDGES[@]}"
eventually 60 "etcd2 and etcd3 are healthy again" all_healthy etcd2 etcd3
stop_probe "the etcd faults"
log "ok: UNAVAILABLE without a quorum; writes back ${writable_after}s after it returned; no edge missed an answer"

# --- 7. an edge disconnected from the network serves its last state, then catches up ----------
upload 3.0.0
network="$(docker inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$(container edge3)" | awk '{print $1}')"
[ -n "$network" ] || fail "edge3 is on no network"
revision_before="$(applied_revision edge3)"
log "disconnecting edge3 from $network"
docker network disconnect "$network" "$(container edge3)"
stk deploy "$DOMAIN" hello@3.0.0 >/dev/null
eventually 30 "edge1 and edge2 serve hello@3.0.0" all_serve 3.0.0 edge1 edge2
for round in 1 2 3; do
  serves edge3 2.2.0 inner || fail "disconnected edge3 stopped serving hello@2.2.0 (round $round)"
  sleep 1
done
[ "$(applied_revision edge3)" = "$revision_before" ] || fail "disconnected edge3 changed its applied revision"
log "ok: disconnected edge3 keeps serving hello@2.2.0"
docker network connect --alias edge3 "$network" "$(container edge3)"
log "reconnected edge3"
eventually 60 "edge3 serves hello@3.0.0 after reconnecting" serves edge3 3.0.0 inner
eventually 30 "all three edges are registered after reconnecting" has_nodes 3

# --- convergence -------------------------------------------------------------------------------
all_serve_inner() {
  local version=$1 edge
  shift
  for edge in "$@"; do serves "$edge" "$version" inner || return 1; done
}
eventually 60 "every edge reports the same applied revision" same_applied_revision
eventually 30 "every edge serves hello@3.0.0" all_serve_inner 3.0.0 "${EDGES[@]}"
log "ok: every edge is at applied revision $(applied_revision edge1) serving hello@3.0.0"

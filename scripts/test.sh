#!/usr/bin/env bash
# The test command (README, `.ci/run`): installs what the test suite needs on a
# Debian host, only what is missing, then runs the whole suite:
#
#   ./scripts/test.sh [nextest arguments]       as root, Docker engine up
#
# Installs: the Debian packages below (apt), cargo-nextest (cargo install), the
# Debian image the real-systemd tests boot (scripts/systemd-image.sh, built once per
# machine) and the cloud stand-in's Python venv (PyPI). Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "test.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "run as root: the tests create namespaces, links, containers and system users"; exit 1; }

# What each is for: ip (namespaces, veth), busybox (the runtime test image),
# dnsmasq (the DHCP server), socat/jq (probes), systemd (systemd-analyze, setpriv
# comes with util-linux), dpkg-dev (the .deb), docker-compose (the compose file's
# 1.29 check and schema), mmdebstrap (the real-systemd test image), python3-venv
# and openssl (the cloud stand-in's venv and its certificates).
packages=(iproute2 busybox-static dnsmasq-base socat jq systemd dpkg-dev docker-compose mmdebstrap python3-venv openssl)
need=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  say "packages present: ${packages[*]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  say "the Docker engine is not reachable (docker version failed): start it (systemctl start docker, or dockerd &)"
  exit 1
fi
scripts/systemd-image.sh >/dev/null

# The cloud stand-in: python-socketio + aiohttp from PyPI in a venv of the project's.
# The cloud tests find it at target/cloud-venv (or $EDGENET_CLOUD_PYTHON) and fail
# without it.
venv=target/cloud-venv
if ! "$venv/bin/python" -c 'import socketio, aiohttp' 2>/dev/null; then
  say "creating $venv (python-socketio, aiohttp)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'python-socketio>=5,<6' 'aiohttp>=3.9,<4'
fi

exec cargo nextest run --workspace --locked --no-fail-fast "$@"

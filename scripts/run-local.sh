#!/usr/bin/env bash
# Builds both binaries and runs netmon and the agent together on this host, with
# their sockets and state in a temporary directory (or $EDGENET_DIR). Ctrl-C stops
# both. Needs root for the agent (Docker socket, container network namespaces);
# netmon alone needs no privileges.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
dir=${EDGENET_DIR:-$(mktemp -d /tmp/edgenet.XXXXXX)}
mkdir -p "$dir/state"
bin=target/release
export NETMON_SOCKET="$dir/netmon.sock"
export AGENT_NETMON_SOCKET="$dir/netmon.sock"
export AGENT_STATE_DIR="$dir/state"
export AGENT_CONTROL_SOCKET="$dir/agent.sock"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/netmon" --socket-mode 0660 &
pids+=($!)
if [ "$(id -u)" = 0 ] && [ -S /var/run/docker.sock ]; then
  "$bin/agent" run &
  pids+=($!)
else
  echo "not root or no Docker engine: running netmon only" >&2
fi

cat <<MSG

Running with sockets and state in $dir. In another terminal:
  $bin/netmon watch --socket $dir/netmon.sock          # the event stream, readable
  $bin/netmon watch --socket $dir/netmon.sock --json   # the raw JSON lines
  $bin/agent status --control-socket $dir/agent.sock   # what the agent sees and did
  $bin/agent reconcile --control-socket $dir/agent.sock
Ctrl-C stops both.

MSG
wait -n "${pids[@]}"

#!/usr/bin/env bash
# Builds both binaries and runs netmon and the agent together on this host, with
# their sockets and state in a temporary directory, removed on exit (or in
# $EDGENET_DIR, which is kept). Ctrl-C stops both. Run as root for the agent
# (Docker socket, container network namespaces); netmon alone needs no privileges.
#
# The binaries are the static release build that packaging/build-images.sh makes
# (the one the package and images use): the first build takes a few minutes and
# shows cargo's progress; later runs reuse it while it is newer than the sources.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "run-local: building netmon and agent (cargo's progress below; reused when up to date)" >&2
bins=$(packaging/build-images.sh --binaries-only)
netmon_bin=$(awk '$1 == "binary" && $2 == "netmon" {print $3}' <<<"$bins")
agent_bin=$(awk '$1 == "binary" && $2 == "agent" {print $3}' <<<"$bins")

if [ -n "${EDGENET_DIR:-}" ]; then
  dir=$EDGENET_DIR
  keep=1
  mkdir -p "$dir"
else
  dir=$(mktemp -d /tmp/edgenet.XXXXXX)
  keep=0
fi
mkdir -p "$dir/state" "$dir/bin"
# The commands below, and the README's demo, use $dir/bin.
ln -sf "$netmon_bin" "$dir/bin/netmon"
ln -sf "$agent_bin" "$dir/bin/agent"
export NETMON_SOCKET="$dir/netmon.sock"
export AGENT_NETMON_SOCKET="$dir/netmon.sock"
export AGENT_STATE_DIR="$dir/state"
export AGENT_CONTROL_SOCKET="$dir/agent.sock"

pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [ "$keep" = 0 ]; then
    rm -rf "$dir"
    echo "run-local: stopped; removed $dir" >&2
  else
    echo "run-local: stopped; kept $dir (EDGENET_DIR)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$dir/bin/netmon" --socket-mode 0660 &
pids+=($!)
if [ "$(id -u)" = 0 ] && [ -S /var/run/docker.sock ]; then
  "$dir/bin/agent" run &
  pids+=($!)
else
  echo "run-local: not root or no Docker engine: running netmon only" >&2
fi

cat <<MSG

Running with sockets and state in $dir (removed on exit unless EDGENET_DIR is set).
In another terminal:
  $dir/bin/netmon watch --socket $dir/netmon.sock          # the event stream, readable
  $dir/bin/netmon watch --socket $dir/netmon.sock --json   # the raw JSON lines
  $dir/bin/agent status --control-socket $dir/agent.sock   # what the agent sees and did
  $dir/bin/agent reconcile --control-socket $dir/agent.sock
Ctrl-C stops both.

MSG
# Either daemon ending ends the run (and cleans up); wait -n returns on a signal too.
wait -n "${pids[@]}"

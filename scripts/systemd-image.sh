#!/usr/bin/env bash
# Builds the image the real-systemd tests boot: a Debian root file system made by
# mmdebstrap from Debian's packages, streamed into `docker import`. Built once per
# machine: the tag holds a hash of the suite and package list, so an image
# already there is reused and a changed list makes a new one. Prints the tag.
#
#   scripts/systemd-image.sh [--print-tag]     (as root; needs mmdebstrap)
#
# --print-tag prints the tag without building. No container registry is used.
set -euo pipefail

suite=bookworm
# systemd as PID 1 with what the .deb depends on (passwd, init-system-helpers);
# dbus for systemctl's usual path, procps for ps, iproute2 for links netmon reports.
packages=systemd,systemd-sysv,dbus,procps,passwd,init-system-helpers,iproute2
key=$(printf '%s %s %s' "$suite" "$packages" minbase | sha256sum | cut -c1-12)
tag="edgenet-test-systemd:$key"
if [ "${1:-}" = --print-tag ]; then echo "$tag"; exit 0; fi
say() { echo "systemd-image: $*" >&2; }

# Concurrent callers (tests, CI) wait for one build.
exec 9>"/tmp/edgenet-systemd-image.lock"
flock 9
if docker image inspect "$tag" >/dev/null 2>&1; then
  say "$tag present; not rebuilding"
  echo "$tag"
  exit 0
fi
command -v mmdebstrap >/dev/null || { say "mmdebstrap missing: apt-get install mmdebstrap"; exit 1; }
say "building $tag: Debian $suite ($packages) by mmdebstrap, into docker import"
started=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" - 2>"$log" \
    | docker import -c 'CMD ["/sbin/init"]' -c 'LABEL org.edgenet.test=systemd' - "$tag" >/dev/null; then
  say "build failed: $(tail -n 20 "$log")"
  docker rmi "$tag" >/dev/null 2>&1 || true
  exit 1
fi
say "built $tag in $(( $(date +%s) - started ))s"
# Images of older package lists are this script's too, and no longer used.
for old in $(docker images edgenet-test-systemd --format '{{.Repository}}:{{.Tag}}'); do
  if [ "$old" != "$tag" ] && docker rmi "$old" >/dev/null 2>&1; then say "removed $old"; fi
done
echo "$tag"

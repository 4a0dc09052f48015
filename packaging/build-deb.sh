#!/usr/bin/env bash
# Builds the edgenet .deb: both static binaries, both systemd units, the sysusers
# snippet and the maintainer scripts. Prints the path of the package.
#
#   packaging/build-deb.sh [--out DIR]        (default DIR: packaging/out)
#
# The binaries come from build-images.sh --binaries-only (one shared build).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here="$root/packaging"
out="$here/out"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

bins=$("$here/build-images.sh" --binaries-only)
netmon_bin=$(awk '$1 == "binary" && $2 == "netmon" {print $3}' <<<"$bins")
agent_bin=$(awk '$1 == "binary" && $2 == "agent" {print $3}' <<<"$bins")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)

mkdir -p "$out"
stage=$(mktemp -d "$out/deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg="$stage/edgenet"

install -D -m 0755 "$netmon_bin" "$pkg/usr/bin/netmon"
install -D -m 0755 "$agent_bin" "$pkg/usr/bin/agent"
install -D -m 0644 "$root/systemd/netmon.service" "$pkg/usr/lib/systemd/system/netmon.service"
install -D -m 0644 "$root/systemd/agent.service" "$pkg/usr/lib/systemd/system/agent.service"
install -D -m 0644 "$root/systemd/netmon.sysusers" "$pkg/usr/lib/sysusers.d/netmon.conf"
install -D -m 0644 "$root/README.md" "$pkg/usr/share/doc/edgenet/README.md"
install -D -m 0644 "$here/debian/copyright" "$pkg/usr/share/doc/edgenet/copyright"
install -d -m 0755 "$pkg/DEBIAN"
for s in postinst prerm postrm; do
  install -m 0755 "$here/debian/$s" "$pkg/DEBIAN/$s"
done
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$here/debian/control.in" >"$pkg/DEBIAN/control"
(cd "$pkg" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"

deb="$out/edgenet_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$stage/edgenet.deb" >/dev/null
# Renamed into place so a concurrent reader never sees half a package.
mv "$stage/edgenet.deb" "$deb"
echo "$deb"

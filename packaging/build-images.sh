#!/usr/bin/env bash
# Builds static netmon and agent binaries and, unless --binaries-only, the two
# FROM-scratch images. Nothing is pulled: the images hold only the binaries built
# here.
#
#   packaging/build-images.sh [--binaries-only] [--force]
#
# The release build is slow, so it happens once: concurrent callers (tests, the
# .deb build, install.sh) serialise on a lock file and the build is skipped while
# both binaries are newer than every source file. Prints the binary paths and,
# when built, the image names and sizes.
#
# Environment: EDGENET_TARGET_DIR (default <repo>/target/static),
# EDGENET_NETMON_IMAGE / EDGENET_AGENT_IMAGE (default edgenet/netmon:<version>,
# edgenet/agent:<version>).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here="$root/packaging"
triple=x86_64-unknown-linux-gnu
target_dir=${EDGENET_TARGET_DIR:-$root/target/static}
bin_dir="$target_dir/$triple/release"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
netmon_image=${EDGENET_NETMON_IMAGE:-edgenet/netmon:$version}
agent_image=${EDGENET_AGENT_IMAGE:-edgenet/agent:$version}

images=1
force=0
for a in "$@"; do
  case "$a" in
    --binaries-only) images=0 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "build-images: $*" >&2; }

mkdir -p "$target_dir"
exec 9>"$target_dir/.edgenet-build.lock"
if ! flock -n 9; then
  log "another build holds $target_dir/.edgenet-build.lock; waiting"
  flock 9
fi

# A source newer than either binary means a rebuild; cargo itself would notice
# too, but asking it costs seconds even when nothing changed.
stale() {
  local b
  for b in netmon agent; do
    [ -x "$bin_dir/$b" ] || return 0
    # Only what goes into the binaries: tests and benches do not.
    if [ -n "$(find "$root/Cargo.toml" "$root/Cargo.lock" "$root"/{ipc,netmon,agent}/Cargo.toml \
                 "$root"/{ipc,netmon,agent}/src "$root"/{ipc,netmon,agent}/build.rs \
                 -type f -newer "$bin_dir/$b" -print -quit 2>/dev/null)" ]; then
      return 0
    fi
  done
  return 1
}

if [ "$force" = 1 ] || stale; then
  log "release build of netmon and agent (static, $triple) in $target_dir"
  started=$(date +%s)
  # crt-static links glibc statically; the code is pure Rust (no OpenSSL, no NSS
  # lookups on the hot path), so the binaries run in an empty image.
  (cd "$root" && CARGO_TARGET_DIR="$target_dir" \
     RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
     cargo build --release --locked --target "$triple" -p netmon -p agent --bins)
  # cargo leaves an unchanged binary's mtime alone; touch so the check above holds.
  touch "$bin_dir/netmon" "$bin_dir/agent"
  log "built in $(( $(date +%s) - started ))s"
else
  log "binaries are newer than the sources; not rebuilding"
fi

for b in netmon agent; do
  # ldd (libc-bin, always there) rather than file(1), which a minimal host lacks.
  if ! ldd "$bin_dir/$b" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
    log "$bin_dir/$b is not statically linked: $(ldd "$bin_dir/$b" 2>&1 | head -n3)"
    exit 1
  fi
done
echo "binary netmon $bin_dir/netmon"
echo "binary agent $bin_dir/agent"
[ "$images" = 1 ] || exit 0

revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
ctx_root="$root/packaging/out/images"
build_image() {
  local name=$1 image=$2 ctx="$ctx_root/$1"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/run/agent" "$ctx/rootfs/var/orchestrator"
  chmod 1777 "$ctx/rootfs/tmp"
  cp "$bin_dir/$name" "$ctx/rootfs/usr/bin/$name"
  if [ "$name" = netmon ]; then rmdir "$ctx/rootfs/run/agent"; fi
  local said
  if ! said=$(docker build -q -f "$here/Dockerfile.$name" \
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
      -t "$image" "$ctx" 2>&1); then
    log "docker build of $image failed: $said"
    exit 1
  fi
  rm -rf "$ctx"
  echo "image $name $image $(docker image inspect -f '{{.Size}}' "$image") bytes"
}
build_image netmon "$netmon_image"
build_image agent "$agent_image"

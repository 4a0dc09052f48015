#!/usr/bin/env bash
# Installs netmon and the agent on this host, either way:
#
#   packaging/install.sh --mode systemd [--deb FILE | --from binaries]
#       the .deb (built by build-deb.sh unless --deb is given), or the built static
#       binaries and the unit files copied in place; the netmon group created, the
#       units enabled and, when systemd is the running init, started.
#   packaging/install.sh --mode containers [--project NAME] [--config-dir DIR] [--wait SECONDS] [--rebuild]
#       the images (built by build-images.sh when missing, or with --rebuild), the
#       compose file copied to DIR
#       (default /etc/edgenet) and the project brought up; waits until both
#       containers are healthy (default 180 s, 0: do not wait).
#
#   packaging/install.sh --uninstall [--remove-runtimes] [--config-dir DIR]
#       undoes the install recorded in DIR/edgenet.env (either mode): the package
#       purged or the copied files removed; or the compose project brought down
#       with its volume. Runtime containers the agent made, and their networks,
#       stay unless --remove-runtimes (then the agent deletes them first).
#
# What it was given is recorded in DIR/edgenet.env (mode, project, images,
# container and volume names, and EDGENET_NO_DHCP_CLIENT and the EDGENET_CLOUD_*
# variables of compose.yaml when set), which later compose commands read with
# `--env-file`, so every one acts on the same project and volume.
# Safe to run again: what is already in place is left alone and said to be.
# Every step it takes, or skips, is printed. Exit status non-zero on failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here="$root/packaging"
mode=""
deb=""
from=""
project=${EDGENET_PROJECT:-edgenet}
config_dir=/etc/edgenet
wait_s=180
rebuild=0
uninstall=0
remove_runtimes=0
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" 2>/dev/null | head -n1)
version=${version:-0.1.0}
# Set when files changed, so running units are restarted onto them.
changed=0

usage() { sed -n '2,25p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode=${2:-}; shift 2 ;;
    --deb) deb=${2:-}; from=deb; shift 2 ;;
    --from) from=${2:-}; shift 2 ;;
    --project) project=${2:-}; shift 2 ;;
    --config-dir) config_dir=${2:-}; shift 2 ;;
    --wait) wait_s=${2:-}; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    --remove-runtimes) remove_runtimes=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs system files or drives the Docker engine)"

systemd_running() { [ -d /run/systemd/system ]; }

# Installs $1 to $2 with mode $3 unless identical; says which.
put() {
  local src=$1 dst=$2 m=$3
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    say "$dst unchanged"
    return 1
  fi
  install -D -m "$m" "$src" "$dst"
  say "installed $dst"
  return 0
}

install_systemd_deb() {
  command -v dpkg >/dev/null || die "dpkg not found: use --from binaries on this system"
  if [ -z "$deb" ]; then
    say "building the package (packaging/build-deb.sh)"
    deb=$("$here/build-deb.sh")
  fi
  [ -f "$deb" ] || die "no such package: $deb"
  local want have
  want=$(dpkg-deb -f "$deb" Version)
  have=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' edgenet 2>/dev/null || true)
  # Same version installed with every file intact and identical to the package's:
  # nothing to do.
  if [ "$have" = "ii $want" ] && dpkg --verify edgenet >/dev/null 2>&1 \
     && cmp -s <(dpkg-deb -I "$deb" md5sums | sort) <(sort /var/lib/dpkg/info/edgenet.md5sums); then
    say "edgenet $want is already installed and unchanged ($deb)"
  else
    if [ -n "$have" ]; then say "replacing edgenet (${have#* }) with $want"; fi
    dpkg -i "$deb" | sed 's/^/install: dpkg: /'
    changed=1
    say "installed edgenet $want from $deb"
  fi
}

install_systemd_binaries() {
  if dpkg-query -W -f='${db:Status-Abbrev}' edgenet 2>/dev/null | grep -q '^ii'; then
    die "the edgenet package is installed; upgrade it with --deb, or remove it before --from binaries"
  fi
  local bins
  bins=$("$here/build-images.sh" --binaries-only)
  put "$(awk '$2 == "netmon" {print $3}' <<<"$bins")" /usr/bin/netmon 0755 && changed=1
  put "$(awk '$2 == "agent" {print $3}' <<<"$bins")" /usr/bin/agent 0755 && changed=1
  put "$root/systemd/netmon.service" /etc/systemd/system/netmon.service 0644 && changed=1
  put "$root/systemd/agent.service" /etc/systemd/system/agent.service 0644 && changed=1
  put "$root/systemd/netmon.sysusers" /usr/lib/sysusers.d/netmon.conf 0644 && changed=1
  if getent group netmon >/dev/null; then
    say "group netmon exists"
  else
    groupadd --system netmon && say "created system group netmon"
  fi
  if getent passwd netmon >/dev/null; then
    say "user netmon exists"
  else
    useradd --system --gid netmon --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "netmon network monitor" netmon
    say "created system user netmon"
  fi
  local u
  for u in netmon.service agent.service; do
    if [ -L "/etc/systemd/system/multi-user.target.wants/$u" ]; then
      say "$u already enabled"
    else
      # Works without a running systemd: it only makes the wants/ symlink.
      systemctl enable "$u" >/dev/null 2>&1 \
        || ln -sf "/etc/systemd/system/$u" "/etc/systemd/system/multi-user.target.wants/$u"
      say "enabled $u"
    fi
  done
}

start_units() {
  if systemd_running; then
    systemctl daemon-reload
    if [ "$changed" = 1 ]; then
      systemctl restart netmon.service agent.service
      say "restarted netmon.service and agent.service"
    else
      systemctl start netmon.service agent.service
      say "started netmon.service and agent.service (no-op when running)"
    fi
    say "state: $(systemctl is-active netmon.service agent.service | tr '\n' ' ')"
    say "health: netmon health --socket /run/netmon/netmon.sock; agent health"
  else
    say "systemd is not the running init here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)): the units are installed and enabled but NOT started; they start at the next boot under systemd, or now with: systemctl start netmon.service agent.service"
  fi
}

compose_cmd() {
  if [ -n "${EDGENET_COMPOSE:-}" ]; then
    echo "$EDGENET_COMPOSE"
  elif docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null; then
    echo "docker-compose"
  else
    die "neither the docker compose plugin nor docker-compose is installed"
  fi
}

install_containers() {
  docker version >/dev/null 2>&1 || die "the Docker engine is not reachable (docker version failed)"
  local compose
  compose=$(compose_cmd)
  say "using $compose"
  local netmon_image=${EDGENET_NETMON_IMAGE:-edgenet/netmon:$version}
  local agent_image=${EDGENET_AGENT_IMAGE:-edgenet/agent:$version}
  if [ "$rebuild" = 1 ] || ! docker image inspect "$netmon_image" "$agent_image" >/dev/null 2>&1; then
    [ -f "$root/Cargo.toml" ] || die "images $netmon_image / $agent_image missing and no source tree to build them"
    say "building the images (packaging/build-images.sh)"
    "$here/build-images.sh" | sed -n 's/^image /install: image ready: /p'
  else
    say "images $netmon_image and $agent_image present (--rebuild to build them again)"
  fi
  local f="$config_dir/compose.yaml"
  put "$here/compose.yaml" "$f" 0644 || true
  # The DHCP client switch and the cloud link too, when given: later compose
  # commands that recreate the agent keep them.
  local v optional=()
  for v in EDGENET_NO_DHCP_CLIENT EDGENET_CLOUD_URL EDGENET_CLOUD_CERT EDGENET_CLOUD_KEY EDGENET_CLOUD_CA EDGENET_RUNTIME_IMAGE; do
    if [ -n "${!v:-}" ]; then optional+=("$v=${!v}"); fi
  done
  record "EDGENET_MODE=containers" "COMPOSE_PROJECT_NAME=$project" "COMPOSE_FILE=$f" \
    "EDGENET_NETMON_IMAGE=$netmon_image" "EDGENET_AGENT_IMAGE=$agent_image" \
    "EDGENET_AGENT_CONTAINER=${EDGENET_AGENT_CONTAINER:-edgenet-agent}" \
    "EDGENET_VOLUME=${EDGENET_VOLUME:-edgenet-orchestrator}" ${optional[@]+"${optional[@]}"}
  # The recorded values are what compose reads from here on.
  set -a; . "$(env_file)"; set +a
  local before after
  before=$($compose -p "$project" -f "$f" ps -q 2>/dev/null | sort | tr '\n' ' ')
  $compose -p "$project" -f "$f" up -d 2>&1 | sed 's/^/install: compose: /'
  after=$($compose -p "$project" -f "$f" ps -q | sort | tr '\n' ' ')
  if [ -n "$before" ] && [ "$before" = "$after" ]; then
    say "project $project was already up; containers unchanged"
  else
    say "project $project is up (compose file $f)"
  fi
  [ "$wait_s" -gt 0 ] || return 0
  local id end=$(( $(date +%s) + wait_s )) states
  while :; do
    states=""
    for id in $after; do
      states+="$(docker inspect -f '{{.Name}}={{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id") "
    done
    case "$states" in
      *starting*|*unhealthy*|*exited*|*restarting*|*created*) ;;
      *) say "healthy: $states"; break ;;
    esac
    if [ "$(date +%s)" -ge "$end" ]; then
      die "not healthy after ${wait_s}s: $states (see: $compose -p $project -f $f logs)"
    fi
    sleep 2
  done
  say "logs: $compose --env-file $(env_file) logs"
}

env_file() { echo "$config_dir/edgenet.env"; }

# Records what this install was given (atomically: a reader never sees half).
record() {
  local f tmp
  f=$(env_file)
  mkdir -p "$config_dir"
  tmp=$(mktemp "$f.XXXXXX")
  printf '%s\n' "# Written by packaging/install.sh; read by install.sh --uninstall and by" \
    "# docker compose --env-file $f (same project, images, volume)." "$@" >"$tmp"
  chmod 0644 "$tmp"
  if [ -f "$f" ] && cmp -s <(grep -v '^#' "$tmp") <(grep -v '^#' "$f"); then
    rm -f "$tmp"
    say "$f unchanged"
  else
    mv "$tmp" "$f"
    say "recorded the install in $f"
  fi
}

# The names of this install's runtimes, asked of its own agent while it runs
# (`$@` runs the agent CLI), so runtimes of any other agent are never touched.
# `runtime list --json` is an object of name -> [vNICs]; names are container names.
runtime_names() {
  local listed
  listed=$("$@" runtime list --json 2>/dev/null) || return 1
  # Pretty-printed: the runtimes are the keys indented by exactly two spaces.
  { grep -o '^  "[A-Za-z0-9][A-Za-z0-9_.-]*": *\[' <<<"$listed" || true; } \
    | sed 's/^  "\([^"]*\)".*/\1/' | tr '\n' ' '
}

# Before the agent stops: deletes its runtimes through it (their containers,
# internal networks and vNIC records; MACVLAN networks it no longer needs), or
# says what stays.
handle_runtimes() {
  local names n said
  if ! names=$(runtime_names "$@"); then
    say "the agent does not answer, so its runtimes cannot be listed: any it made stay in place"
    return 0
  fi
  if [ -z "${names// /}" ]; then
    say "no runtimes to leave or remove"
  elif [ "$remove_runtimes" = 1 ]; then
    for n in $names; do
      if said=$("$@" runtime delete "$n" 2>&1); then
        say "removed runtime $n"
      else
        say "warning: removing runtime $n: $said"
      fi
    done
  else
    say "runtimes left in place: $names (running, with their MACs and networks; nothing moves them on a LAN change now; --remove-runtimes removes them)"
  fi
}

uninstall_all() {
  local f
  f=$(env_file)
  [ -f "$f" ] || die "no install recorded in $f (use --config-dir DIR if it was installed with one)"
  # shellcheck disable=SC1090
  local EDGENET_MODE="" EDGENET_FROM="" COMPOSE_PROJECT_NAME=""
  set -a; . "$f"; set +a
  case "$EDGENET_MODE" in
    systemd)
      if [ -x /usr/bin/agent ]; then handle_runtimes /usr/bin/agent; fi
      if [ "$EDGENET_FROM" = binaries ]; then
        if systemd_running; then systemctl disable --now agent.service netmon.service >/dev/null 2>&1 || true; fi
        local p
        for p in /etc/systemd/system/multi-user.target.wants/agent.service \
                 /etc/systemd/system/multi-user.target.wants/netmon.service \
                 /etc/systemd/system/agent.service /etc/systemd/system/netmon.service \
                 /usr/lib/sysusers.d/netmon.conf /usr/bin/agent /usr/bin/netmon; do
          if [ -e "$p" ] || [ -L "$p" ]; then rm -f "$p"; say "removed $p"; fi
        done
        if systemd_running; then systemctl daemon-reload; fi
        rm -rf /var/lib/agent /run/netmon /run/agent
        userdel netmon >/dev/null 2>&1 && say "removed user netmon" || true
        groupdel netmon >/dev/null 2>&1 && say "removed group netmon" || true
      else
        dpkg --purge edgenet | sed 's/^/install: dpkg: /'
        say "purged edgenet"
      fi
      ;;
    containers)
      local compose
      compose=$(compose_cmd)
      handle_runtimes $compose --env-file "$f" -p "$COMPOSE_PROJECT_NAME" \
        -f "$config_dir/compose.yaml" exec -T agent agent
      $compose --env-file "$f" -p "$COMPOSE_PROJECT_NAME" -f "$config_dir/compose.yaml" \
        down -v --remove-orphans -t 10 2>&1 | sed 's/^/install: compose: /'
      say "project $COMPOSE_PROJECT_NAME down, its volume removed"
      rm -f "$config_dir/compose.yaml"
      ;;
    *) die "$f names no mode (EDGENET_MODE=$EDGENET_MODE)" ;;
  esac
  rm -f "$f"
  rmdir "$config_dir" 2>/dev/null || true
  say "uninstalled"
}

if [ "$uninstall" = 1 ]; then
  uninstall_all
  exit 0
fi

case "$mode" in
  systemd)
    case "${from:-deb}" in
      deb) install_systemd_deb ;;
      binaries) install_systemd_binaries ;;
      *) die "--from must be deb or binaries" ;;
    esac
    record "EDGENET_MODE=systemd" "EDGENET_FROM=${from:-deb}"
    start_units
    ;;
  containers) install_containers ;;
  *) usage >&2; die "--mode systemd or --mode containers is required" ;;
esac

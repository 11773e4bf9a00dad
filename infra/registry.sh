#!/usr/bin/env bash
# Runs a real OCI registry (Debian's docker-registry, the CNCF distribution server) on
# loopback, for the tests of the image assembly and the fake Fly.io.
#
#   infra/registry.sh start   install docker-registry if missing (apt-get), start it in the
#                             background (if not already running), wait until /v2/ answers
#   infra/registry.sh stop    stop the server this script started
#   infra/registry.sh env     print the `export` line the tests read
#                             (use: eval "$(infra/registry.sh env)")
#   infra/registry.sh status  say whether it runs
#
# Settings: REGISTRY_PORT (5056), TB_STATE_DIR (.turbobackend; storage, config, pid file and
# log under registry/). Relative paths are taken from the repository root. No auth, plain
# HTTP, loopback only: a test registry, nothing else.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

port="${REGISTRY_PORT:-5056}"
state="${TB_STATE_DIR:-.turbobackend}/registry"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
pidfile="$state/registry.pid"
logfile="$state/registry.log"
config="$state/config.yml"
endpoint="http://127.0.0.1:$port"
binary=/usr/bin/docker-registry

ready() { [[ "$(curl -s -o /dev/null -w '%{http_code}' "$endpoint/v2/")" == 200 ]]; }

# True while the process exists and has not exited (an exited child of a script that has
# itself exited can stay a zombie until PID 1 gets to it).
alive() {
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$stat" && "$stat" != Z* ]]
}

running_pid() {
  local pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  echo "$pid"
}

install() {
  [[ -x "$binary" ]] && return 0
  echo "registry: installing Debian's docker-registry" >&2
  local sudo=()
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q docker-registry >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q docker-registry >/dev/null
  fi
  # The package enables a system service on :5000 with htpasswd auth; this script runs its
  # own instance and leaves that service alone.
  [[ -x "$binary" ]] || { echo "registry: $binary still missing after apt-get" >&2; exit 1; }
}

write_config() {
  mkdir -p "$state/storage"
  cat >"$config" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $state/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  # Only one instance serves this storage, so a fixed upload-state secret is fine.
  secret: turbobackend-test-registry
YAML
}

start() {
  if running_pid >/dev/null; then
    ready || { echo "registry: process $(cat "$pidfile") runs but $endpoint/v2/ does not answer" >&2; exit 1; }
    echo "registry: already running on $endpoint (pid $(cat "$pidfile"))"
    return 0
  fi
  if ready; then
    echo "registry: something else already answers on $endpoint; stop it or set REGISTRY_PORT" >&2
    exit 1
  fi
  install
  write_config
  nohup "$binary" serve "$config" </dev/null >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  local tries=0
  until ready; do
    if ! alive "$(cat "$pidfile")"; then
      echo "registry: the server exited; its log ($logfile):" >&2
      tail -n 20 "$logfile" >&2
      rm -f "$pidfile"
      exit 1
    fi
    tries=$((tries + 1))
    if ((tries > 300)); then
      echo "registry: no answer on $endpoint/v2/ after 30 s; log: $logfile" >&2
      stop
      exit 1
    fi
    sleep 0.1
  done
  echo "registry: listening on $endpoint (pid $(cat "$pidfile"))"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$pidfile"
    return 0
  fi
  kill "$pid"
  for _ in $(seq 50); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then kill -9 "$pid"; fi
  rm -f "$pidfile"
  echo "registry: stopped (pid $pid)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export TB_TEST_REGISTRY=127.0.0.1:$port" ;;
  status)
    if pid="$(running_pid)" && ready; then echo "registry: running on $endpoint (pid $pid)"; else echo "registry: not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|env|status" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Runs a moto server on loopback with the resources of template.yaml under the names the
# functions use locally.
#
#   infra/moto.sh start   start moto in the background (if not already running), wait until
#                         it answers, create the table, queues and bucket (idempotent)
#   infra/moto.sh stop    stop the server this script started
#   infra/moto.sh reset   wipe every resource and its contents, then create them again
#   infra/moto.sh env     print `export` lines pointing the AWS SDK and the functions at it
#                         (use: eval "$(infra/moto.sh env)")
#   infra/moto.sh status  say whether it runs
#
# Settings: MOTO_PORT (5055), TB_VENV (.venv, made by infra/setup-venv.sh),
# TB_STATE_DIR (.turbobackend; pid file and log under moto/). Relative paths are taken from
# the repository root.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

port="${MOTO_PORT:-5055}"
venv="${TB_VENV:-.venv}"
state="${TB_STATE_DIR:-.turbobackend}/moto"
pidfile="$state/moto.pid"
logfile="$state/moto.log"
endpoint="http://127.0.0.1:$port"
region="us-east-1"

ready() { curl -sf -o /dev/null "$endpoint/moto-api/"; }

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

create_resources() {
  AWS_REGION="$region" "$venv/bin/python" infra/create_resources.py "$endpoint"
}

start() {
  if running_pid >/dev/null; then
    ready || { echo "moto: process $(cat "$pidfile") runs but $endpoint does not answer" >&2; exit 1; }
  else
    if ready; then
      echo "moto: something else already answers on $endpoint; stop it or set MOTO_PORT" >&2
      exit 1
    fi
    [[ -x "$venv/bin/moto_server" ]] || { echo "moto: $venv/bin/moto_server missing; run infra/setup-venv.sh" >&2; exit 1; }
    mkdir -p "$state"
    # infra/moto_server.py: moto's server with DynamoDB's conditional writes made atomic.
    nohup "$venv/bin/python" infra/moto_server.py -H 127.0.0.1 -p "$port" </dev/null >"$logfile" 2>&1 &
    echo $! >"$pidfile"
    local tries=0
    until ready; do
      if ! alive "$(cat "$pidfile")"; then
        echo "moto: the server exited; its log ($logfile):" >&2
        tail -n 20 "$logfile" >&2
        rm -f "$pidfile"
        exit 1
      fi
      tries=$((tries + 1))
      if ((tries > 300)); then
        echo "moto: no answer on $endpoint after 30 s; log: $logfile" >&2
        stop
        exit 1
      fi
      sleep 0.1
    done
    echo "moto: listening on $endpoint (pid $(cat "$pidfile"))"
  fi
  create_resources
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
  echo "moto: stopped (pid $pid)"
}

reset() {
  ready || { echo "moto: not answering on $endpoint; run infra/moto.sh start" >&2; exit 1; }
  curl -sf -o /dev/null -X POST "$endpoint/moto-api/reset"
  create_resources
}

print_env() {
  # moto's queue URLs are <endpoint>/<account>/<name>; 123456789012 is its default account.
  cat <<ENV
export AWS_ENDPOINT_URL=$endpoint
export AWS_REGION=$region
export AWS_DEFAULT_REGION=$region
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true
export TB_TABLE=turbobackend-requests
export TB_WORK_QUEUE_URL=$endpoint/123456789012/turbobackend-work
export TB_FINALIZE_QUEUE_URL=$endpoint/123456789012/turbobackend-finalize
export S3_PROJECTS_BUCKET=turbobackend-projects
ENV
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reset) reset ;;
  env) print_env ;;
  status)
    if pid="$(running_pid)" && ready; then echo "moto: running on $endpoint (pid $pid)"; else echo "moto: not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|reset|env|status" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# A local Prefect server + process worker on 127.0.0.1 for people without the team infra.
#   flows/prefect_local.sh up     start the server (SQLite under .prefect/), create the `puma` process pool,
#                                 deploy prefect.yaml (puma/full-pipeline), start a worker; logs in .prefect/
#   flows/prefect_local.sh run [prefect deployment run options]   run puma/full-pipeline and wait for it
#   flows/prefect_local.sh down   stop the worker and the server started by `up`
# PREFECT_PORT (default 4200), PREFECT_HOME (default <repo>/.prefect) and GPU_SLOTS (default 1: how many
# `gpu`-tagged stage tasks may run at once across all flow runs, Prefect's tag concurrency limit) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN=$(dirname "$(command -v python)")
PORT=${PREFECT_PORT:-4200}
export PREFECT_HOME=${PREFECT_HOME:-$REPO/.prefect}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PUMA_REPO=$REPO
export PREFECT_SERVER_ANALYTICS_ENABLED=false  # offline machines: no telemetry attempts
POOL=puma
mkdir -p "$PREFECT_HOME"

wait_healthy() {
  for _ in $(seq 1 120); do
    if python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$PREFECT_API_URL/health" 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  echo "Prefect server did not answer on $PREFECT_API_URL (see $PREFECT_HOME/server.log)" >&2
  return 1
}

stop_pid() {  # stop_pid FILE SIGNAL...: a worker needs two SIGINTs; then make sure it is gone
  local file=$1; shift
  [[ -f $file ]] || return 0
  local pid; pid=$(cat "$file")
  for sig in "$@"; do kill -s "$sig" "$pid" 2>/dev/null || break; sleep 2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$file"
}

case "${1:-}" in
  up)
    if [[ -f $PREFECT_HOME/server.pid ]] && kill -0 "$(cat "$PREFECT_HOME/server.pid")" 2>/dev/null; then
      echo "server already running (pid $(cat "$PREFECT_HOME/server.pid"))"
    else
      nohup "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
      echo $! >"$PREFECT_HOME/server.pid"
    fi
    wait_healthy
    "$BIN/prefect" work-pool create "$POOL" --type process --overwrite >/dev/null
    "$BIN/prefect" concurrency-limit create gpu "${GPU_SLOTS:-1}" >/dev/null  # GPU stages: one at a time
    "$BIN/prefect" --no-prompt deploy --all >"$PREFECT_HOME/deploy.log" 2>&1 || { cat "$PREFECT_HOME/deploy.log" >&2; exit 1; }
    if ! { [[ -f $PREFECT_HOME/worker.pid ]] && kill -0 "$(cat "$PREFECT_HOME/worker.pid")" 2>/dev/null; }; then
      nohup "$BIN/prefect" worker start --pool "$POOL" --type process >"$PREFECT_HOME/worker.log" 2>&1 &
      echo $! >"$PREFECT_HOME/worker.pid"
    fi
    echo "Prefect UI: http://127.0.0.1:$PORT   deployment: puma/full-pipeline   pool: $POOL (process)"
    echo "run it:     PREFECT_API_URL=$PREFECT_API_URL prefect deployment run puma/full-pipeline --watch"
    ;;
  run)
    shift
    exec "$BIN/prefect" deployment run puma/full-pipeline --watch "$@"
    ;;
  down)
    stop_pid "$PREFECT_HOME/worker.pid" INT INT
    stop_pid "$PREFECT_HOME/server.pid" INT TERM
    echo "Prefect server and worker stopped"
    ;;
  *)
    echo "usage: $0 up|run|down" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The team infrastructure of infra/docker-compose.yml without Docker, as local processes on 127.0.0.1:
#   PostgreSQL (the distribution's server; databases `mlflow` and `prefect`), an S3 endpoint (moto's server,
#   standing in for MinIO), an MLflow tracking server (Postgres backend, artifacts proxied to s3://mlflow),
#   a Prefect server on the same PostgreSQL, the `gpu` tag concurrency limit, the `puma` process pool,
#   the deployment puma/full-pipeline (prefect.yaml) and a process worker pointed at the MLflow server.
#
#   infra/local_stack.sh up      start everything (state, secrets and logs under $PUMA_STACK_DIR)
#   infra/local_stack.sh env     print `export ...` lines for a shell: eval "$(infra/local_stack.sh env)"
#   infra/local_stack.sh logs    the last lines of every service log
#   infra/local_stack.sh down    stop everything `up` started and delete the databases and the S3 data
#
# Needs: postgres/initdb/pg_ctl/psql (PostgreSQL 15 here; run as root it uses the `postgres` user), the
# server-side venv .venv-infra (`make infra-venv`: mlflow, psycopg2-binary, boto3, moto[server]) and the
# project's .venv (prefect, puma) active. Variables (each optional): PUMA_STACK_DIR (default <repo>/.stack),
# VENV_INFRA, GPU_SLOTS (default 1); ports PG_PORT MINIO_PORT MLFLOW_PORT PREFECT_PORT (default: free ports);
# secrets MLFLOW_DB_PASSWORD PREFECT_DB_PASSWORD MINIO_ROOT_USER MINIO_ROOT_PASSWORD (default: generated
# now, kept only in $PUMA_STACK_DIR/stack.env, mode 600); MLFLOW_BUCKET (default mlflow). The names are
# the ones infra/docker-compose.yml and infra/.env.example use.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN=$(dirname "$(command -v python)")
VENV_INFRA=${VENV_INFRA:-$REPO/.venv-infra}
STATE=${PUMA_STACK_DIR:-$REPO/.stack}
STACK_ENV=$STATE/stack.env
PG_BIN=${PG_BIN:-$(dirname "$(readlink -f "$(command -v postgres || echo /usr/lib/postgresql/15/bin/postgres)")")}
LOGS=$STATE/logs
POOL=puma

as_pg() {  # initdb and postgres refuse to run as root: use the distribution's `postgres` user then
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() { python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
secret() { python -c "import secrets; print(secrets.token_hex(24))"; }

wait_http() {  # wait_http URL NAME LOG [PIDNAME]: until it answers, the process exits, or 3 minutes
  for _ in $(seq 1 180); do
    if [[ -n ${4:-} ]] && ! kill -0 "$(cat "$STATE/$4.pid")" 2>/dev/null; then break; fi
    if python -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then
      echo "  $2 ready: $1"; return 0
    fi
    sleep 1
  done
  echo "$2 did not answer on $1; last lines of $3:" >&2; tail -n 40 "$3" >&2; return 1
}

start_bg() {  # start_bg NAME CMD...: own session (so `down` stops its children too), pid in $STATE/NAME.pid
  local name=$1; shift
  setsid nohup "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

stop_bg() {  # stop_bg NAME SIGNAL...: signal the process group, then make sure it is gone
  local file=$STATE/$1.pid; shift
  [[ -f $file ]] || return 0
  local pid; pid=$(cat "$file")
  for sig in "$@"; do kill -s "$sig" -- "-$pid" 2>/dev/null || break; sleep 2; done
  kill -0 -- "-$pid" 2>/dev/null && kill -9 -- "-$pid" 2>/dev/null || true
  rm -f "$file"
}

write_env() {  # ports and secrets for this stack, generated unless given
  mkdir -p "$STATE" "$LOGS"
  chmod 700 "$STATE"
  umask 077
  {
    echo "PG_PORT=${PG_PORT:-$(free_port)}"
    echo "MINIO_PORT=${MINIO_PORT:-$(free_port)}"
    echo "MLFLOW_PORT=${MLFLOW_PORT:-$(free_port)}"
    echo "PREFECT_PORT=${PREFECT_PORT:-$(free_port)}"
    echo "MLFLOW_BUCKET=${MLFLOW_BUCKET:-mlflow}"
    echo "PG_SUPERUSER_PASSWORD=$(secret)"
    echo "MLFLOW_DB_PASSWORD=${MLFLOW_DB_PASSWORD:-$(secret)}"
    echo "PREFECT_DB_PASSWORD=${PREFECT_DB_PASSWORD:-$(secret)}"
    echo "MINIO_ROOT_USER=${MINIO_ROOT_USER:-puma-$(secret | cut -c1-8)}"
    echo "MINIO_ROOT_PASSWORD=${MINIO_ROOT_PASSWORD:-$(secret)}"
  } >"$STACK_ENV"
}

client_env() {  # what a client (worker, CLI, tests) needs: no secret (artifacts go through the MLflow server)
  cat <<EOF
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export PUMA_TRACKING__URI=http://127.0.0.1:$MLFLOW_PORT
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
EOF
}

up() {
  [[ -x $VENV_INFRA/bin/mlflow ]] || { echo "$VENV_INFRA/bin/mlflow missing: run \`make infra-venv\`" >&2; exit 1; }
  [[ -f $STATE/postgres.dir ]] && { echo "a stack is already up in $STATE (run \`$0 down\` first)" >&2; exit 1; }
  write_env
  set -a; source "$STACK_ENV"; set +a

  echo "PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PG_PORT"
  # Its data lives in a folder the server's user can reach (pytest's temp dirs are private to root).
  local pgroot; pgroot=$(mktemp -d /tmp/puma-pg.XXXXXX)
  echo "$pgroot" >"$STATE/postgres.dir"
  printf '%s\n' "$PG_SUPERUSER_PASSWORD" >"$pgroot/pw"
  [[ $(id -u) == 0 ]] && chown -R postgres: "$pgroot"
  as_pg "$PG_BIN/initdb" -D "$pgroot/data" -U postgres --auth=scram-sha-256 --pwfile="$pgroot/pw" \
    --no-locale -E UTF8 >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log" >&2; exit 1; }
  rm -f "$pgroot/pw"
  as_pg "$PG_BIN/pg_ctl" -D "$pgroot/data" -l "$pgroot/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$pgroot" start >/dev/null \
    || { cat "$pgroot/postgres.log" >&2; exit 1; }
  PGPASSWORD=$PG_SUPERUSER_PASSWORD "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -d postgres >/dev/null <<SQL
CREATE ROLE mlflow LOGIN PASSWORD '$MLFLOW_DB_PASSWORD';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD '$PREFECT_DB_PASSWORD';
CREATE DATABASE prefect OWNER prefect;
SQL
  echo "  databases mlflow, prefect (roles mlflow, prefect)"

  echo "S3 endpoint (moto server, in memory) on 127.0.0.1:$MINIO_PORT"
  start_bg s3 "$VENV_INFRA/bin/moto_server" -H 127.0.0.1 -p "$MINIO_PORT"
  wait_http "http://127.0.0.1:$MINIO_PORT/moto-api/" "S3" "$LOGS/s3.log" s3
  AWS_ACCESS_KEY_ID=$MINIO_ROOT_USER AWS_SECRET_ACCESS_KEY=$MINIO_ROOT_PASSWORD "$VENV_INFRA/bin/python" -c \
    "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2])" \
    "http://127.0.0.1:$MINIO_PORT" "$MLFLOW_BUCKET"
  echo "  bucket s3://$MLFLOW_BUCKET"

  echo "MLflow server ($("$VENV_INFRA/bin/python" -c 'import mlflow; print(mlflow.__version__)')) on 127.0.0.1:$MLFLOW_PORT"
  MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$MINIO_PORT AWS_ACCESS_KEY_ID=$MINIO_ROOT_USER \
  AWS_SECRET_ACCESS_KEY=$MINIO_ROOT_PASSWORD AWS_DEFAULT_REGION=us-east-1 \
    start_bg mlflow "$VENV_INFRA/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
      --backend-store-uri "postgresql+psycopg2://mlflow:$MLFLOW_DB_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
      --artifacts-destination "s3://$MLFLOW_BUCKET/artifacts" --serve-artifacts
  wait_http "http://127.0.0.1:$MLFLOW_PORT/health" "MLflow" "$LOGS/mlflow.log" mlflow

  echo "Prefect server ($("$BIN/prefect" --version)) on 127.0.0.1:$PREFECT_PORT, database postgresql prefect"
  export PREFECT_HOME=$STATE/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
  mkdir -p "$PREFECT_HOME"
  PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$PREFECT_DB_PASSWORD@127.0.0.1:$PG_PORT/prefect" \
    start_bg prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" "Prefect" "$LOGS/prefect-server.log" prefect-server

  eval "$(client_env)"
  export PUMA_REPO=$REPO
  "$BIN/prefect" work-pool create "$POOL" --type process --overwrite >/dev/null
  "$BIN/prefect" concurrency-limit create gpu "${GPU_SLOTS:-1}" >/dev/null  # GPU stages: one at a time
  "$BIN/prefect" --no-prompt deploy --all >"$LOGS/deploy.log" 2>&1 || { cat "$LOGS/deploy.log" >&2; exit 1; }
  start_bg prefect-worker "$BIN/prefect" worker start --pool "$POOL" --type process
  echo "  pool $POOL (process), tag limit gpu=${GPU_SLOTS:-1}, deployment puma/full-pipeline, worker pid $(cat "$STATE/prefect-worker.pid")"
  echo "stack up: MLflow http://127.0.0.1:$MLFLOW_PORT   Prefect http://127.0.0.1:$PREFECT_PORT   state $STATE"
  echo "use it:   eval \"\$($0 env)\"; prefect deployment run puma/full-pipeline --watch"
}

down() {
  [[ -f $STACK_ENV ]] || { echo "no stack in $STATE"; return 0; }
  set -a; source "$STACK_ENV"; set +a
  stop_bg prefect-worker INT INT
  stop_bg prefect-server INT TERM
  stop_bg mlflow TERM
  stop_bg s3 TERM
  if [[ -f $STATE/postgres.dir ]]; then
    local pgroot; pgroot=$(cat "$STATE/postgres.dir")
    if [[ -d $pgroot/data ]]; then
      as_pg "$PG_BIN/pg_ctl" -D "$pgroot/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
      cp "$pgroot/postgres.log" "$LOGS/postgres.log" 2>/dev/null || true
    fi
    [[ $pgroot == /tmp/puma-pg.* ]] && rm -rf "$pgroot"
    rm -f "$STATE/postgres.dir"
  fi
  rm -f "$STACK_ENV"  # the secrets go with the data they protected; logs stay in $LOGS
  echo "stack down (logs kept in $LOGS)"
}

logs() {
  [[ -f $STATE/postgres.dir ]] && cp "$(cat "$STATE/postgres.dir")/postgres.log" "$LOGS/postgres.log" 2>/dev/null
  for f in "$LOGS"/*.log; do
    [[ -f $f ]] || continue
    echo "===== $f"; tail -n "${LINES_PER_LOG:-60}" "$f"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) set -a; source "$STACK_ENV"; set +a; client_env ;;
  logs) logs ;;
  *) echo "usage: $0 up|env|logs|down" >&2; exit 2 ;;
esac

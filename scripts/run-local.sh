#!/usr/bin/env bash
# Usage: scripts/run-local.sh — build and run source_service and target_service against a local PostgreSQL until Ctrl-C.
set -euo pipefail

# Environment (all optional):
#   DATABASE_URL   the target's database; created when missing. Default: the
#                  database target_service on the server at 127.0.0.1:5432
#                  when one lets user postgres in, else on a throwaway cluster
#                  under target/ that is removed on exit.
#   SYNC_INTERVAL  seconds between sync rounds (default 5 here)
#   SOURCE_ADDR    source listen address (default 127.0.0.1:8080 here)
#   METRICS_ADDR   target metrics/health address (default 127.0.0.1:2112 here)
#   ADMIN_TOKEN    token for /rejections and the status page's rejection
#                  list (default here: a random one, printed in the banner)
#   PG_FORCE_THROWAWAY=1  always use a throwaway cluster
# Every other variable of the services' configuration is passed through.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

# A throwaway cluster of a calling script is not this run's to remove.
unset PG_THROWAWAY_DIR PG_THROWAWAY_DATA PG_THROWAWAY_LOG PG_THROWAWAY_PORT

bin_dir=${CARGO_TARGET_DIR:-$PWD/target}/release
log_dir=${CARGO_TARGET_DIR:-$PWD/target}/run-local
src_pid="" tgt_pid="" tail_pid=""

# Stops one service: SIGTERM, then up to its shutdown timeout plus a margin,
# then SIGKILL.
# shellcheck disable=SC2317 # reached through the EXIT trap
stop_service() {
  local name=$1 pid=$2 limit=$((${SHUTDOWN_TIMEOUT_SECS:-10} + 5)) waited=0 status=0
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [[ $waited -lt $((limit * 10)) ]]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name did not stop within ${limit}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || status=$?
  echo "$name exited with status $status"
}

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  trap - INT TERM HUP
  stop_service target_service "$tgt_pid"
  stop_service source_service "$src_pid"
  if [[ -n $tail_pid ]]; then
    kill "$tail_pid" 2>/dev/null || true
    wait "$tail_pid" 2>/dev/null || true
  fi
  pg_stop_throwaway
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# host:port → a host to connect to (a wildcard address means this machine).
connect_host() {
  local host=${1%:*}
  case $host in
    "" | 0.0.0.0 | "[::]") echo 127.0.0.1 ;;
    *) echo "$host" ;;
  esac
}

port_in_use() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    local rest=${1#http://} host port path
    host=${rest%%/*}
    path=/${rest#*/}
    port=${host##*:}
    host=${host%:*}
    (
      exec 3<>"/dev/tcp/$host/$port" || exit 1
      printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
      head -n 1 <&3 | grep -q ' 200 '
    ) 2>/dev/null
  fi
}

# Waits until URL answers 200 while the service is alive.
wait_ready() {
  local name=$1 pid=$2 url=$3 log=$4 tries=0
  until http_ok "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited during start-up; the end of $log:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    if [[ $tries -ge 300 ]]; then
      echo "$name did not answer $url within 60s; the end of $log:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.2
    tries=$((tries + 1))
  done
}

# Before anything else is touched (PostgreSQL above all): a second run on
# the same ports stops here, and the first one goes on undisturbed.
source_addr=${SOURCE_ADDR:-127.0.0.1:8080}
metrics_addr=${METRICS_ADDR:-127.0.0.1:2112}
source_base=http://$(connect_host "$source_addr"):${source_addr##*:}
target_base=http://$(connect_host "$metrics_addr"):${metrics_addr##*:}
for pair in "SOURCE_ADDR=$source_base" "METRICS_ADDR=$target_base"; do
  hostport=${pair#*=http://}
  if port_in_use "${hostport%:*}" "${hostport##*:}"; then
    echo "${pair%%=*}: something already listens on $hostport (another run-local.sh?); stop it or set ${pair%%=*} to a free address" >&2
    exit 1
  fi
done
# Logs of their own per pair of ports, so that a run beside another one
# does not truncate its logs.
log_dir=$log_dir/${source_addr##*:}-${metrics_addr##*:}

echo "==> building release binaries"
cargo build --release -p source_service -p target_service

echo "==> PostgreSQL"
if [[ -n ${DATABASE_URL:-} ]]; then
  db=$(pg_url_db "$DATABASE_URL") || {
    echo "DATABASE_URL must name a database: postgres://user@host:port/NAME" >&2
    exit 2
  }
  pg_ensure_server local "$(pg_url_with_db "$DATABASE_URL" postgres)"
else
  db=target_service
  pg_ensure_server local ""
fi
if [[ -n ${DATABASE_URL:-} && -z ${PG_THROWAWAY_DIR:-} ]]; then
  db_url=$DATABASE_URL
else
  db_url=$(pg_url_with_db "$PG_ADMIN_URL" "$db")
fi
pg_create_database "$PG_ADMIN_URL" "$db"
echo "database $db is ready"

mkdir -p "$log_dir"
: >"$log_dir/source.log"
: >"$log_dir/target.log"

# Each service runs in a session of its own, so Ctrl-C reaches only this
# script, which then stops them in order (SIGTERM) and exits 130.
echo "==> starting source_service on $source_addr"
SOURCE_ADDR=$source_addr setsid "$bin_dir/source_service" >"$log_dir/source.log" 2>&1 &
src_pid=$!
wait_ready source_service "$src_pid" "$source_base/healthz" "$log_dir/source.log"

# A random admin token unless one is given, so the status page can list the
# rejections out of the box; target_service reads it from the environment.
if [[ -n ${ADMIN_TOKEN:-} ]]; then
  shown_token="the ADMIN_TOKEN you set"
else
  ADMIN_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  shown_token=$ADMIN_TOKEN
fi
export ADMIN_TOKEN

echo "==> starting target_service (metrics on $metrics_addr)"
DATABASE_URL=$db_url \
  SOURCE_SERVICE_URL=${SOURCE_SERVICE_URL:-$source_base/users/changes} \
  SYNC_INTERVAL=${SYNC_INTERVAL:-5} \
  METRICS_ADDR=$metrics_addr \
  setsid "$bin_dir/target_service" >"$log_dir/target.log" 2>&1 &
tgt_pid=$!
wait_ready target_service "$tgt_pid" "$target_base/healthz" "$log_dir/target.log"

shown_url=$(pg_redact_url "$db_url")
# No password in it: psql asks for one (or reads PGPASSWORD or ~/.pgpass).
psql_url=$(pg_shell_quote "$(pg_url_without_password "$db_url")")
also=""
if [[ -n ${PG_THROWAWAY_DIR:-} ]]; then
  also=" and the throwaway PostgreSQL (its data goes with it)"
fi
cat <<EOF

profile sync is running; Ctrl-C stops both services$also.
  status page      $target_base/   (open this first)
  admin token      $shown_token
                   (type it into the page to list the rejections)
  source changes   $source_base/users/changes
  source metrics   $source_base/metrics
  target status    $target_base/status (JSON)
  target metrics   $target_base/metrics
  target ready     $target_base/readyz
  table            users (rejections in sync_rejections, cursor in sync_state)
                   in $shown_url
  look at it       psql $psql_url -c 'SELECT sync_status, count(*) FROM users GROUP BY 1'
  logs             $log_dir/source.log
                   $log_dir/target.log

EOF

setsid tail -n +1 -F "$log_dir/source.log" "$log_dir/target.log" &
tail_pid=$!

# Reached only when a service ends by itself: Ctrl-C (SIGINT) and SIGTERM
# leave through the traps above, with 130 and 143.
status=0
wait -n "$src_pid" "$tgt_pid" || status=$?
for pair in "source_service:$src_pid" "target_service:$tgt_pid"; do
  if ! kill -0 "${pair#*:}" 2>/dev/null; then
    echo "${pair%%:*} stopped by itself (status $status); stopping the rest" >&2
  fi
done
exit 1

#!/usr/bin/env bash
# Usage: scripts/run-local-check.sh — two scripts/run-local.sh at once: a second one on the same ports fails without harm, one on other ports runs beside the first.
set -euo pipefail

# Both runs use throwaway clusters (PG_FORCE_THROWAWAY=1), as a developer
# without a server of their own would. Checks, printing one ok line each:
#   - a second run on the first one's ports fails at once, naming
#     SOURCE_ADDR, before touching PostgreSQL; the first one's /status stays
#     idle or syncing and its rows stay in its database;
#   - a second run on other ports runs beside the first one, with logs and a
#     cluster of its own, and leaves the first one's cluster and logs alone;
#   - once both are stopped, nothing of them listens or runs.
# Needs the release binaries (run-local.sh builds them) and curl.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

work=$repo/target/run-local-check
passed=0 runs=() started=$SECONDS

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local status=$? pid
  trap - INT TERM HUP
  for pid in "${runs[@]}"; do
    stop_run "$pid" >/dev/null 2>&1 || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

ok() {
  echo "ok: $*"
  passed=$((passed + 1))
}

fail() {
  local log
  echo "FAIL: $1"
  shift
  for log in "$@"; do
    [[ -f $log ]] && tail -n 20 "$log" | sed 's/^/  | /'
  done
  exit 1
}

# start_run OUT SOURCE_PORT METRICS_PORT: run-local.sh in the background,
# its own output in OUT. Sets RUN_PID.
start_run() {
  local out=$1
  env PG_FORCE_THROWAWAY=1 SOURCE_ADDR="127.0.0.1:$2" METRICS_ADDR="127.0.0.1:$3" \
    SYNC_INTERVAL=1 SOURCE_PRELOAD=200 bash scripts/run-local.sh >"$out" 2>&1 </dev/null &
  RUN_PID=$!
  runs+=("$RUN_PID")
}

# Stops one run-local.sh with SIGTERM, which it handles as it does Ctrl-C
# (its services and cluster go with it; a background job ignores SIGINT),
# and waits for it.
stop_run() {
  local pid=$1 waited=0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [[ $waited -lt 300 ]]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -0 "$pid" 2>/dev/null && return 1
  wait "$pid" 2>/dev/null || true
}

http_code() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# wait_ready PID URL OUT: until URL answers 200 while the run lives.
wait_ready() {
  local pid=$1 url=$2 out=$3 deadline=$((SECONDS + 120))
  until [[ $(http_code "$url") == 200 ]]; do
    kill -0 "$pid" 2>/dev/null || fail "run-local.sh ended before $url answered 200" "$out"
    [[ $SECONDS -lt $deadline ]] || fail "$url did not answer 200 within 120s" "$out"
    sleep 0.2
  done
}

status_state() {
  curl -fsS --max-time 2 "$1/status" 2>/dev/null | sed -nE 's/.*"state" *: *"([a-z_]+)".*/\1/p'
}

# The port and data directory of the cluster a run started, from what
# scripts/lib/pg.sh logged in its output.
cluster_port() {
  sed -nE 's/^pg: throwaway cluster up at 127\.0\.0\.1:([0-9]+) .*/\1/p' "$1" | head -n 1
}

cluster_data() {
  sed -nE 's/^pg: initdb (.*)$/\1/p' "$1" | head -n 1
}

# The postmaster's pid while the cluster in DATA runs; fails otherwise.
postmaster_pid() {
  local pid
  pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] && echo "$pid"
}

users_count() {
  psql "postgres://postgres@127.0.0.1:$1/target_service" -w -X -q -t -A -c 'SELECT count(*) FROM users'
}

# The pids of the services a run started, from its "stopping NAME (pid N)"
# lines and its log of what it started.
service_pids() {
  sed -nE 's/^stopping [a-z_]+ \(pid ([0-9]+)\)$/\1/p' "$1"
}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

rm -rf "$work"
mkdir -p "$work"
ports=()
for _ in 1 2 3 4; do
  ports+=("$(pg__free_port)")
done
first_out=$work/first.out
second_out=$work/second.out
third_out=$work/third.out
first_base=http://127.0.0.1:${ports[1]}
third_base=http://127.0.0.1:${ports[3]}

echo "==> first run: SOURCE_ADDR=127.0.0.1:${ports[0]} METRICS_ADDR=127.0.0.1:${ports[1]}"
start_run "$first_out" "${ports[0]}" "${ports[1]}"
first_pid=$RUN_PID
wait_ready "$first_pid" "$first_base/readyz" "$first_out"
first_pg_port=$(cluster_port "$first_out")
first_data=$(cluster_data "$first_out")
[[ -n $first_pg_port && -n $first_data ]] || fail "the first run logged no throwaway cluster" "$first_out"
first_postmaster=$(postmaster_pid "$first_data") || fail "the first run's cluster in $first_data does not run" "$first_out"
deadline=$((SECONDS + 30))
until rows=$(users_count "$first_pg_port" 2>/dev/null) && [[ $rows -gt 0 ]]; do
  [[ $SECONDS -lt $deadline ]] || fail "the first run wrote no rows within 30s" "$first_out"
  sleep 0.2
done
ok "the first run is ready, with $rows rows in its database"

echo "==> second run on the same ports"
start=$SECONDS
status=0
env PG_FORCE_THROWAWAY=1 SOURCE_ADDR="127.0.0.1:${ports[0]}" METRICS_ADDR="127.0.0.1:${ports[1]}" \
  timeout 60 bash scripts/run-local.sh >"$second_out" 2>&1 </dev/null || status=$?
[[ $status -eq 1 ]] || fail "the second run on the same ports exited $status (want 1)" "$second_out"
grep -q '^SOURCE_ADDR: something already listens on 127.0.0.1:'"${ports[0]}" "$second_out" ||
  fail "the second run's error does not name SOURCE_ADDR and its port" "$second_out"
! grep -q '^pg: \|building release binaries' "$second_out" ||
  fail "the second run touched PostgreSQL or cargo before checking its ports" "$second_out"
ok "a second run on the same ports exits 1 after $((SECONDS - start))s: $(grep -m 1 '^SOURCE_ADDR' "$second_out")"

check_first_undisturbed() {
  local what=$1 state count
  state=$(status_state "$first_base")
  [[ $state == idle || $state == syncing ]] ||
    fail "after $what, the first run's /status says state ${state:-nothing} (want idle or syncing)" "$first_out"
  [[ $(postmaster_pid "$first_data") == "$first_postmaster" ]] ||
    fail "after $what, the first run's cluster (postmaster $first_postmaster in $first_data) is gone" "$first_out"
  count=$(users_count "$first_pg_port") || fail "after $what, the first run's database does not answer"
  [[ $count -ge $rows ]] || fail "after $what, the first run's users table has $count rows (had $rows)"
  if [[ -n $first_log ]]; then
    [[ $(head -n 1 "$first_log") == "$first_log_head" ]] ||
      fail "after $what, the first run's log $first_log was truncated"
  fi
  ok "after $what, the first run is $state, its cluster runs and users has $count rows (had $rows)"
}
first_log=""
check_first_undisturbed "the second run on the same ports"

first_log=$repo/target/run-local/${ports[0]}-${ports[1]}/target.log
[[ -s $first_log ]] || fail "the first run has no log of its own at $first_log" "$first_out"
first_log_head=$(head -n 1 "$first_log")
ok "the first run's logs are its own, under target/run-local/${ports[0]}-${ports[1]}/"

echo "==> third run on other ports: SOURCE_ADDR=127.0.0.1:${ports[2]} METRICS_ADDR=127.0.0.1:${ports[3]}"
start_run "$third_out" "${ports[2]}" "${ports[3]}"
third_pid=$RUN_PID
wait_ready "$third_pid" "$third_base/readyz" "$third_out"
third_data=$(cluster_data "$third_out")
[[ -n $third_data && $third_data != "$first_data" ]] ||
  fail "the third run did not start a cluster of its own (data ${third_data:-none}, the first's $first_data)" "$third_out"
third_postmaster=$(postmaster_pid "$third_data") || fail "the third run's cluster does not run" "$third_out"
third_state=$(status_state "$third_base")
[[ -s $repo/target/run-local/${ports[2]}-${ports[3]}/target.log ]] ||
  fail "the third run has no log of its own under target/run-local/${ports[2]}-${ports[3]}/" "$third_out"
ok "a run on other ports is ready beside the first ($third_state), its cluster in $third_data"
check_first_undisturbed "the run on other ports started"

echo "==> stopping both"
stop_run "$third_pid" || fail "the third run did not stop within 30s" "$third_out"
stop_run "$first_pid" || fail "the first run did not stop within 30s" "$first_out"
runs=()
# pg_ctl stop returns once the postmaster has removed its pid file, a
# moment before the process itself is gone: give it up to 5 s. A zombie
# waiting to be reaped has stopped.
running() {
  [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
for pid in $(service_pids "$first_out") $(service_pids "$third_out") "$first_postmaster" "$third_postmaster"; do
  for _ in $(seq 1 50); do
    running "$pid" || break
    sleep 0.1
  done
  ! running "$pid" || fail "process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) still runs 5 s after both runs stopped"
done
for port in "${ports[@]}"; do
  ! listening "$port" || fail "something still listens on port $port after both runs stopped"
done
for data in "$first_data" "$third_data"; do
  [[ ! -e $data ]] || fail "the cluster in $data is still there after its run stopped"
done
ok "both stopped: no service, postmaster, port or cluster of theirs is left"
echo "run-local check: $passed passed, 0 failed in $((SECONDS - started))s"

#!/usr/bin/env bash
# Usage: scripts/faults.sh [kill|db-outage|db-crash|db-failover|source-restart|failover ...] — failure drills, each on its own throwaway PostgreSQL, each checking the final tables against what the source handed out.
set -euo pipefail

# The drills:
#   kill            SIGKILL the target mid-backlog and restart it; then
#                   SIGTERM it mid-backlog (exit 0 in time) and restart it.
#   db-outage       stop PostgreSQL for 10 s mid-round: /readyz 503, then
#                   200 again, and the target does not exit.
#   db-crash        crash PostgreSQL (an immediate stop: no checkpoint, what
#                   was not yet in the WAL on disk is gone) at 40% and again
#                   at 70% of a catch-up, starting it again each time: no
#                   change a crash took may be left behind the stored cursor.
#   db-failover     a streaming standby beside PostgreSQL (asynchronous
#                   replication) and the target given both in one URL with
#                   target_session_attrs=read-write; crash the primary mid
#                   catch-up and promote the standby: the target, never
#                   restarted, carries on against it and fetches again what
#                   the promoted server lost.
#   source-restart  restart the source with another seed (a new epoch).
#   failover        two replicas, one standby; SIGKILL the active one
#                   mid-backlog, and the standby takes over.
# Without arguments every drill runs. Each drill runs in a process of its
# own (this script with --run NAME) that cleans up after itself: its
# services, and its throwaway clusters under target/pg-drill-NAME*. Logs, the
# source's changes as read back and the expected tables go to
# target/faults/NAME/. Exit status 0 when no drill lost, duplicated or
# invented data.
#
# How a drill knows what the table must hold: the drills run the source with
# SOURCE_INVALID_RATE=0 and leave the target the only client of the source.
# Once the target has caught up it is stopped, and the stored cursor must
# equal the source's head; then the source is idle and scripts/lib/oracle.py
# reads its whole change log (stopping at the head, since asking past it
# would generate more) and replays it to get the expected users and
# sync_rejections, which psql compares with the real ones as sets.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/svc.sh
source scripts/lib/svc.sh

# A throwaway cluster of the calling script (scripts/test.sh exports its
# variables) is not this script's to stop, nor a standby of it.
unset PG_THROWAWAY_DIR PG_THROWAWAY_DATA PG_THROWAWAY_LOG PG_THROWAWAY_PORT
unset PG_STANDBY_DIR PG_STANDBY_DATA PG_STANDBY_LOG PG_STANDBY_PORT

all_drills=(kill db-outage db-crash db-failover source-restart failover)
cargo_target=${CARGO_TARGET_DIR:-$repo/target}
[[ $cargo_target == /* ]] || cargo_target=$repo/$cargo_target
bin_dir=$cargo_target/release
sync_interval=0.5
shutdown_secs=10
# Catching up with a preload takes seconds; these bound a stuck drill.
catch_up_secs=120
takeover_limit_secs=3
# How soon after a promotion the target must write to the promoted server:
# a few rounds, and the longest backoff between reconnection attempts (5 s).
resume_limit_secs=15

# ---------------------------------------------------------------------------
# Parent: build once, run each drill in a child, summarise.

run_all() {
  local drills=("$@") name status started child="" failed=() passed=0
  # shellcheck disable=SC2317 # reached through the traps
  stop_child() {
    if [[ -n $child ]]; then
      kill -TERM "$child" 2>/dev/null || true
      wait "$child" 2>/dev/null || true
    fi
  }
  trap 'stop_child; exit 130' INT
  trap 'stop_child; exit 143' TERM HUP
  for name in "${drills[@]}"; do
    if [[ " ${all_drills[*]} " != *" $name "* ]]; then
      echo "unknown drill $name; drills: ${all_drills[*]}" >&2
      exit 2
    fi
  done
  # curl talks to the services, python3 runs the oracle.
  local missing=()
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  if [[ ${#missing[@]} -gt 0 ]]; then
    # shellcheck source=scripts/lib/apt.sh
    source scripts/lib/apt.sh
    apt_install "${missing[@]}"
  fi
  pg_ensure_binaries
  echo "==> building release binaries"
  started=$SECONDS
  cargo build --release
  echo "built in $((SECONDS - started))s"
  started=$SECONDS
  for name in "${drills[@]}"; do
    echo "==> drill $name"
    status=0
    bash "${BASH_SOURCE[0]}" --run "$name" &
    child=$!
    wait "$child" || status=$?
    child=""
    if [[ $status -eq 0 ]]; then
      passed=$((passed + 1))
    else
      failed+=("$name")
    fi
  done
  if [[ ${#failed[@]} -gt 0 ]]; then
    echo "faults: FAILED: ${failed[*]} ($passed of ${#drills[@]} drills ok) in $((SECONDS - started))s; logs in target/faults/"
    exit 1
  fi
  echo "faults: all ${#drills[@]} drills ok in $((SECONDS - started))s"
}

# ---------------------------------------------------------------------------
# Child: one drill.

drill="" work="" db_url="" src_pid="" src_addr="" src_base="" src_url="" drill_started=0
targets=() target_bases=() target_logs=()

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup_drill() {
  local status=$?
  trap - INT TERM HUP
  svc_stop_all
  pg_stop_standby >/dev/null 2>&1
  pg_stop_throwaway >/dev/null 2>&1
  exit "$status"
}

say() {
  echo "  [$drill] $*"
}

# fail MESSAGE: the drill fails; shows the end of every log it wrote.
fail() {
  local log
  echo "FAIL: drill $drill: $*"
  for log in "$work"/*.log; do
    [[ -f $log ]] && show_log "$log" 15
  done
  exit 1
}

elapsed() {
  echo "$((SECONDS - drill_started))s"
}

# Seconds since a now_secs reading, to a tenth.
since() {
  awk -v a="$1" -v b="$(now_secs)" 'BEGIN { printf "%.1f", b - a }'
}

psql_db() {
  psql "$db_url" -w -X -q -t -A -v ON_ERROR_STOP=1 "$@"
}

# The stored cursor (empty while PostgreSQL is away or nothing is stored).
stored_cursor() {
  psql_db -v url="$src_url" 2>/dev/null <<'SQL' || true
SELECT cursor FROM sync_state WHERE source_url = :'url';
SQL
}

stored_epoch() {
  psql_db -v url="$src_url" 2>/dev/null <<'SQL' || true
SELECT source_epoch FROM sync_state WHERE source_url = :'url';
SQL
}

user_rows() {
  psql_db -c 'SELECT count(*) FROM users' 2>/dev/null || true
}

source_head() {
  metric_value "$(http_get "$src_base/metrics" 2>/dev/null || true)" source_change_log_head_cursor ||
    true
}

# The epoch of the running source; since=0 with a non-empty log only reads it.
source_epoch() {
  curl -fsS --max-time 5 -D - -o /dev/null "$src_base/users/changes?since=0&limit=1" |
    tr -d '\r' | awk 'tolower($1) == "x-source-epoch:" { print $2 }'
}

# start_source VAR=VALUE...: starts the source (on SOURCE_ADDR if given,
# else on a free port) and waits for /healthz.
start_source() {
  local log=$work/source.log addr=127.0.0.1:0 arg
  for arg in "$@"; do
    [[ $arg == SOURCE_ADDR=* ]] && addr=${arg#SOURCE_ADDR=}
  done
  echo "--- source_service $*" >>"$log"
  svc_start source_service "$log" "$work" SOURCE_ADDR="$addr" SOURCE_INVALID_RATE=0 \
    LOG_LEVEL=info "$@" -- "$bin_dir/source_service"
  src_pid=$SVC_PID
  # The address is the one of this start: the log may hold earlier ones.
  local before
  before=$(grep -c 'listening on' "$log") || true
  local deadline=$((SECONDS + 60))
  until [[ $(grep -c 'listening on' "$log") -gt $before ]]; do
    svc_running "$src_pid" || fail "source_service exited during start-up"
    [[ $SECONDS -lt $deadline ]] || fail "source_service did not start within 60s"
    sleep 0.05
  done
  src_addr=$(grep 'listening on' "$log" | tail -n 1 | sed 's#.*listening on http://\([0-9.:]*\).*#\1#')
  src_base=http://$src_addr
  src_url=$src_base/users/changes
  [[ $(http_code "$src_base/healthz") == 200 ]] || fail "source_service /healthz does not answer 200"
}

# start_target NAME: starts a target replica; its pid, base URL and log are
# appended to targets, target_bases and target_logs.
start_target() {
  local name=$1 log=$work/$1.log
  svc_start "$name" "$log" "$work" DATABASE_URL="$db_url" SOURCE_SERVICE_URL="$src_url" \
    SYNC_INTERVAL="$sync_interval" METRICS_ADDR=127.0.0.1:0 \
    SHUTDOWN_TIMEOUT_SECS="$shutdown_secs" LOG_LEVEL=info -- "$bin_dir/target_service"
  local pid=$SVC_PID
  svc_listen_addr "$name" "$pid" "$log" "metrics and health on" || fail "$name did not start"
  targets+=("$pid")
  target_bases+=("http://$SVC_ADDR")
  target_logs+=("$log")
}

target_status_field() {
  local base=$1 field=$2
  http_get "$base/status" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1]))' "$field" 2>/dev/null ||
    echo unreachable
}

# Waits until the stored cursor is the source's head (and, when given, the
# stored epoch is EPOCH). The target's own rounds move the head on, so
# both are read until they agree.
wait_caught_up() {
  local epoch=${1:-} deadline cursor head pid alive
  deadline=$((SECONDS + catch_up_secs))
  while :; do
    alive=0
    for pid in "${targets[@]}"; do
      svc_running "$pid" && alive=1
    done
    [[ $alive -eq 1 ]] || fail "no target_service is running any more"
    cursor=$(stored_cursor)
    head=$(source_head)
    if [[ -n $cursor && $cursor == "$head" ]] &&
      { [[ -z $epoch ]] || [[ $(stored_epoch) == "$epoch" ]]; }; then
      return 0
    fi
    [[ $SECONDS -lt $deadline ]] ||
      fail "the stored cursor (${cursor:-none}) did not reach the source's head ($head) within ${catch_up_secs}s"
    sleep 0.2
  done
}

# Stops every live target with SIGTERM: each must exit 0 in time.
stop_targets() {
  local i
  for i in "${!targets[@]}"; do
    if svc_running "${targets[$i]}"; then
      if ! svc_stop "target$i" "${targets[$i]}" "$shutdown_secs" || [[ $SVC_STATUS != 0 ]]; then
        fail "target (pid ${targets[$i]}) on SIGTERM: exit status $SVC_STATUS after ${SVC_SECS}s (want 0 within ${shutdown_secs}s)"
      fi
    fi
  done
}

# verify FIGURES DUMP...: with the targets stopped, the stored cursor must be
# the head; then the tables must be what the oracle computes from the dumps
# (earlier epochs) plus the running source's whole log.
verify() {
  local figures=$1 cursor head epoch dump
  shift
  stop_targets
  cursor=$(stored_cursor)
  head=$(source_head)
  [[ -n $cursor && $cursor == "$head" ]] ||
    fail "after a clean stop the stored cursor is ${cursor:-none} but the source's head is $head"
  dump=$work/changes-$(date +%s%N).jsonl
  read -r epoch _ _ < <(python3 scripts/lib/oracle.py dump "$src_base" "$head" "$dump") ||
    fail "could not read the source's log back"
  [[ $epoch == "$(stored_epoch)" ]] || fail "the stored epoch is $(stored_epoch), the source's is $epoch"
  local oracle_figures
  oracle_figures=$(python3 scripts/lib/oracle.py expect "$work/expected" "$@" "$dump") ||
    fail "the oracle failed"
  say "oracle: $oracle_figures"
  compare_tables "$figures" "$oracle_figures"
}

# The expected tables against the real ones, as sets.
compare_tables() {
  local figures=$1 oracle_figures=$2 dir=$work/expected result
  # \copy is a psql command that takes no variables: write the script out.
  {
    cat <<'SQL'
CREATE TEMP TABLE exp_users (id uuid, name text, email text, mobile text, status text,
                             last_updated_at timestamptz, sync_status text);
CREATE TEMP TABLE exp_ambiguous (id uuid);
CREATE TEMP TABLE exp_allowed (id uuid, name text, email text, mobile text, status text,
                               last_updated_at timestamptz);
CREATE TEMP TABLE exp_sequential (LIKE exp_allowed);
CREATE TEMP TABLE exp_must (profile_id uuid, changed_at timestamptz, outcome text, reason text);
CREATE TEMP TABLE exp_may (LIKE exp_must);
SQL
    local pair
    for pair in exp_users:users exp_ambiguous:ambiguous exp_allowed:allowed \
      exp_sequential:sequential exp_must:must exp_may:may; do
      echo "\\copy ${pair%%:*} FROM '$dir/${pair#*:}.csv' WITH (FORMAT csv)"
    done
    cat <<'SQL'
CREATE TEMP VIEW got_users AS
  SELECT id, name::text, email::text, mobile::text, status::text, last_updated_at,
         sync_status::text, id IN (SELECT id FROM exp_ambiguous) AS ambiguous
  FROM users;
CREATE TEMP VIEW got_rejections AS
  SELECT profile_id, changed_at, outcome::text, reason::text FROM sync_rejections;
SELECT 'missing=' || count(*) FROM (
  SELECT id, name, email, mobile, status, last_updated_at FROM exp_users
  EXCEPT SELECT id, name, email, mobile, status, last_updated_at FROM got_users) d;
SELECT 'extra=' || count(*) FROM (
  SELECT id, name, email, mobile, status, last_updated_at FROM got_users WHERE NOT ambiguous
  EXCEPT SELECT id, name, email, mobile, status, last_updated_at FROM exp_users) d;
SELECT 'not_allowed=' || count(*) FROM (
  SELECT id, name, email, mobile, status, last_updated_at FROM got_users WHERE ambiguous
  EXCEPT SELECT * FROM exp_allowed) d;
SELECT 'page_dependent=' || count(DISTINCT id) FROM (
  (SELECT id, name, email, mobile, status, last_updated_at FROM got_users WHERE ambiguous
   EXCEPT SELECT * FROM exp_sequential)
  UNION ALL
  (SELECT * FROM exp_sequential
   EXCEPT SELECT id, name, email, mobile, status, last_updated_at FROM got_users WHERE ambiguous)) d;
SELECT 'sync_status_wrong=' || count(*)
  FROM exp_users e JOIN got_users g USING (id) WHERE g.sync_status IS DISTINCT FROM e.sync_status;
SELECT 'rejections_missing=' || count(*) FROM (
  SELECT * FROM exp_must EXCEPT SELECT * FROM got_rejections) d;
SELECT 'rejections_unexpected=' || count(*) FROM (
  SELECT * FROM got_rejections
  EXCEPT (SELECT * FROM exp_must UNION SELECT * FROM exp_may)) d;
SELECT 'rejections_duplicated=' || (SELECT count(*) FROM got_rejections)
  - (SELECT count(*) FROM (SELECT DISTINCT * FROM got_rejections) d);
SELECT 'payloads_duplicated=' || count(*) - count(DISTINCT payload) FROM sync_rejections;
SELECT 'users=' || count(*) FROM users;
SELECT 'rejections=' || count(*) FROM sync_rejections;
SQL
  } >"$dir/compare.sql"
  result=$(psql_db -f "$dir/compare.sql" 2>&1) || fail "comparing the tables failed: $result"
  local -A got=()
  local line
  while IFS= read -r line; do
    [[ $line == *=* ]] && got[${line%%=*}]=${line#*=}
  done <<<"$result"
  local problems=() key
  for key in missing extra not_allowed sync_status_wrong rejections_missing \
    rejections_unexpected rejections_duplicated payloads_duplicated; do
    [[ ${got[$key]:-x} == 0 ]] || problems+=("$key=${got[$key]:-?}")
  done
  if [[ ${#problems[@]} -gt 0 ]]; then
    show_differences
    fail "the tables differ from what the source handed out: ${problems[*]} (users=${got[users]}, rejections=${got[rejections]}; oracle: $oracle_figures)"
  fi
  local conflicts ambiguous
  conflicts=$(sed -n 's/.*conflicts=\([0-9]*\).*/\1/p' <<<"$oracle_figures")
  ambiguous=$(sed -n 's/.*ambiguous=\([0-9]*\).*/\1/p' <<<"$oracle_figures")
  local checked="users=${got[users]} rows as expected, rejections=${got[rejections]} as expected"
  if [[ ${ambiguous:-0} -gt 0 ]]; then
    checked+=", $conflicts conflicts; $ambiguous ids whose newest change conflicts are within their allowed versions, ${got[page_dependent]} of them differ from applying changes one by one"
  fi
  echo "drill $drill: ok ($figures; $checked; $(elapsed))"
  # The source's log as read back is large; keep it only when a drill fails.
  rm -f "$work"/changes-*.jsonl
}

# A few differing rows, to start an investigation from.
show_differences() {
  psql_db -f - <<SQL >&2 || true
$(sed -n '1,/^CREATE TEMP VIEW got_users/{/^CREATE TEMP VIEW got_users/!p}' "$work/expected/compare.sql")
\\echo '  expected users rows missing (up to 5):'
SELECT id, name, email, mobile, status, last_updated_at FROM exp_users
EXCEPT SELECT id, name::text, email::text, mobile::text, status::text, last_updated_at FROM users
LIMIT 5;
\\echo '  users rows not expected (up to 5):'
SELECT id, name::text, email::text, mobile::text, status::text, last_updated_at FROM users
WHERE id NOT IN (SELECT id FROM exp_ambiguous)
EXCEPT SELECT id, name, email, mobile, status, last_updated_at FROM exp_users
LIMIT 5;
\\echo '  expected rejections missing (up to 5):'
SELECT * FROM exp_must EXCEPT SELECT profile_id, changed_at, outcome::text, reason::text FROM sync_rejections LIMIT 5;
\\echo '  rejections not expected (up to 5):'
SELECT profile_id, changed_at, outcome::text, reason::text FROM sync_rejections
EXCEPT (SELECT * FROM exp_must UNION SELECT * FROM exp_may) LIMIT 5;
SQL
}

# ---------------------------------------------------------------------------
# The drills.

# Waits until the stored cursor is at least FRACTION of HEAD; fails when the
# target got to the head first, for then the drill would test nothing.
wait_mid_backlog() {
  local head=$1 min=$2 deadline cursor
  deadline=$((SECONDS + 60))
  while :; do
    cursor=$(stored_cursor)
    if [[ -n $cursor && $cursor -ge $min ]]; then
      [[ $cursor -lt $head ]] ||
        fail "the target reached the head ($head) before the fault; give it a longer backlog"
      return 0
    fi
    [[ $SECONDS -lt $deadline ]] || fail "the stored cursor did not reach $min within 60s (it is ${cursor:-none})"
    sleep 0.05
  done
}

drill_kill() {
  local head cursor rows termed t0
  start_source SOURCE_SEED=101 SOURCE_PRELOAD=200000
  head=$(source_head)
  start_target target-1
  wait_mid_backlog "$head" $((head / 10))
  svc_kill "${targets[0]}"
  cursor=$(stored_cursor)
  rows=$(user_rows)
  [[ $cursor -lt $head ]] || fail "the target reached the head before it was killed"
  say "SIGKILL at stored cursor $cursor of $head, $rows users rows; restarting"
  # The graceful way out, mid-backlog too: exit 0 in time, nothing lost.
  start_target target-2
  wait_mid_backlog "$head" $((cursor + head / 10))
  if ! svc_stop target-2 "${targets[1]}" "$shutdown_secs" || [[ $SVC_STATUS != 0 ]]; then
    fail "target-2 on SIGTERM mid-backlog: exit status $SVC_STATUS after ${SVC_SECS}s (want 0 within ${shutdown_secs}s)"
  fi
  termed=$(stored_cursor)
  say "SIGTERM mid-backlog: exit 0 in ${SVC_SECS}s at stored cursor $termed; restarting"
  start_target target-3
  t0=$(now_secs)
  wait_caught_up
  say "caught up with the head $(since "$t0")s after the restart"
  verify "SIGKILL at cursor $cursor/$head with $rows rows, SIGTERM at cursor $termed"
}

drill_db_outage() {
  local head cursor saw_503=0 pid base code deadline ready_after caught_up t0 outage=10
  start_source SOURCE_SEED=102 SOURCE_PRELOAD=200000
  head=$(source_head)
  start_target target
  pid=${targets[0]} base=${target_bases[0]}
  wait_mid_backlog "$head" $((head / 10))
  cursor=$(stored_cursor)
  pg_throwaway_stop_server fast || fail "could not stop PostgreSQL"
  say "PostgreSQL stopped at stored cursor $cursor of $head; down for ${outage}s"
  deadline=$((SECONDS + outage))
  while [[ $SECONDS -lt $deadline ]]; do
    svc_running "$pid" || fail "target_service exited while PostgreSQL was down"
    code=$(http_code "$base/readyz")
    [[ $code == 503 ]] && saw_503=1
    sleep 0.25
  done
  [[ $saw_503 -eq 1 ]] || fail "/readyz never answered 503 while PostgreSQL was down"
  pg_throwaway_start_server || fail "could not start PostgreSQL again"
  t0=$(now_secs)
  deadline=$((SECONDS + 30))
  until [[ $(http_code "$base/readyz") == 200 ]]; do
    svc_running "$pid" || fail "target_service exited after PostgreSQL came back"
    [[ $SECONDS -lt $deadline ]] || fail "/readyz not 200 within 30s of PostgreSQL coming back"
    sleep 0.1
  done
  ready_after=$(since "$t0")
  say "/readyz 503 during the outage, 200 again ${ready_after}s after PostgreSQL came back"
  wait_caught_up
  caught_up=$(since "$t0")
  say "caught up with the head ${caught_up}s after PostgreSQL came back"
  svc_running "$pid" || fail "target_service exited"
  verify "PostgreSQL down ${outage}s at cursor $cursor/$head, /readyz 503 then 200 ${ready_after}s after, caught up ${caught_up}s after"
}

# wait_cursor_in_db MIN HEAD: as wait_mid_backlog, but polled inside
# PostgreSQL every millisecond, for a catch-up that crosses MIN within a few
# milliseconds of psql's start-up time.
wait_cursor_in_db() {
  wait_sync_state_table
  psql_db -v url="$src_url" -v min="$1" -v head="$2" >/dev/null <<'SQL' ||
SELECT set_config('drill.url', :'url', false), set_config('drill.min', :'min', false),
       set_config('drill.head', :'head', false);
DO $$
DECLARE
  stored bigint;
  deadline timestamptz := clock_timestamp() + interval '60 seconds';
BEGIN
  LOOP
    IF to_regclass('sync_state') IS NOT NULL THEN
      EXECUTE 'SELECT cursor FROM sync_state WHERE source_url = $1'
        INTO stored USING current_setting('drill.url');
    END IF;
    EXIT WHEN stored >= current_setting('drill.min')::bigint;
    IF clock_timestamp() > deadline THEN
      RAISE EXCEPTION 'the stored cursor did not reach % within 60s (it is %)',
        current_setting('drill.min'), stored;
    END IF;
    PERFORM pg_sleep(0.001);
  END LOOP;
  IF stored >= current_setting('drill.head')::bigint THEN
    RAISE EXCEPTION 'the target reached the head (%) before the fault; give it a longer backlog',
      current_setting('drill.head');
  END IF;
END
$$;
SQL
    fail "waiting for the stored cursor to reach $1 of $2 failed (see above)"
}

# Waits until sync_state exists. A session that looked for it before the
# target created it keeps not finding it (to_regclass takes no lock, so it
# reads no catalog change), so the loop of wait_cursor_in_db begins only
# once it is there.
wait_sync_state_table() {
  local deadline=$((SECONDS + 60))
  until [[ $(psql_db -c "SELECT to_regclass('sync_state') IS NOT NULL" 2>/dev/null) == t ]]; do
    [[ $SECONDS -lt $deadline ]] || fail "the target did not create sync_state within 60s"
    sleep 0.05
  done
}

drill_db_crash() {
  local head at recovered=() pid t0 caught_up
  # About 100,000 new users among the changes, and updates of them: long
  # enough that the cursor, stored at most twice a second, cannot step from
  # before the second crash point to the head in one store.
  start_source SOURCE_SEED=105 SOURCE_PRELOAD=200000
  head=$(source_head)
  start_target target
  pid=${targets[0]}
  # Twice, at 40% and at 70%: what a crash takes depends on what the WAL
  # writer had written at that instant, so one crash alone can be lucky.
  for at in $((head * 2 / 5)) $((head * 7 / 10)); do
    wait_cursor_in_db "$at" "$head"
    pg_throwaway_stop_server immediate || fail "could not crash PostgreSQL"
    pg_throwaway_start_server || fail "could not start PostgreSQL again"
    t0=$(now_secs)
    # Informative only: the target is already writing again.
    recovered+=("past $at: recovered with cursor $(stored_cursor), $(user_rows) users rows")
    say "PostgreSQL crashed (immediate stop) once the stored cursor passed $at of $head; ${recovered[-1]#*: }"
  done
  wait_caught_up
  caught_up=$(since "$t0")
  say "caught up with the head ${caught_up}s after PostgreSQL came back"
  svc_running "$pid" || fail "target_service exited"
  verify "PostgreSQL crashed ${recovered[*]}; caught up ${caught_up}s after the last"
}

# Waits until the target at BASE says on /status that it is idle with the
# source's head as its cursor. Its own rounds move the head on, so the head
# is read just before and just after /status, and must not have moved.
wait_status_idle_at_head() {
  local base=$1 pid=$2 deadline body state cursor head_before head_after
  deadline=$((SECONDS + 30))
  while :; do
    svc_running "$pid" || fail "target_service exited"
    head_before=$(source_head)
    body=$(http_get "$base/status" 2>/dev/null) || body='{}'
    head_after=$(source_head)
    read -r state cursor < <(python3 -c 'import json, sys; s = json.loads(sys.argv[1]); print(s.get("state"), s.get("cursor"))' \
      "$body" 2>/dev/null || echo "unreadable none")
    if [[ $state == idle && $cursor == "$head_before" && $cursor == "$head_after" ]]; then
      return 0
    fi
    [[ $SECONDS -lt $deadline ]] ||
      fail "/status did not say idle at the source's head ($head_after) within 30s: state $state, cursor $cursor"
    sleep 0.1
  done
}

# Waits until the stored cursor, read from the promoted server, moves past
# FROM: the target writes to it.
wait_writes_resumed() {
  local from=$1 pid=$2 deadline cursor
  deadline=$((SECONDS + resume_limit_secs))
  while :; do
    svc_running "$pid" || fail "target_service exited after the failover"
    cursor=$(stored_cursor)
    [[ -n $cursor && $cursor -gt $from ]] && return 0
    [[ $SECONDS -lt $deadline ]] ||
      fail "the target stored no cursor past $from on the promoted server within ${resume_limit_secs}s (it is ${cursor:-none}; see target.log)"
    sleep 0.05
  done
}

drill_db_failover() {
  local head pid base halted at before promoted rows t0 resumed caught_up
  pg_start_standby "drill-$drill-standby" >"$work/standby.out" 2>&1 || {
    cat "$work/standby.out" >&2
    fail "could not start a streaming standby"
  }
  # The drill's own queries go, as the target's, to whichever server
  # accepts writes.
  db_url="postgres://postgres@127.0.0.1:$PG_THROWAWAY_PORT,127.0.0.1:$PG_STANDBY_PORT/drill?target_session_attrs=read-write"
  say "standby streaming at 127.0.0.1:$PG_STANDBY_PORT; the target's DATABASE_URL is $db_url"
  # Long enough that the catch-up still runs seconds after 30% on a quiet
  # machine, where the target stores its cursor every half second.
  start_source SOURCE_SEED=106 SOURCE_PRELOAD=600000
  head=$(source_head)
  start_target target
  pid=${targets[0]} base=${target_bases[0]}
  # Replication is asynchronous: what the primary committed last may not
  # have reached the standby when it dies. The standby stops receiving at
  # 30% of the catch-up and the primary goes on a twentieth further, so the
  # promoted server surely lacks changes below the cursor the target had
  # stored, and the drill sees them fetched again.
  wait_cursor_in_db $((head * 3 / 10)) "$head"
  pg_standby_stop_streaming >>"$work/standby.out" 2>&1 ||
    fail "could not stop the standby's streaming (see standby.out)"
  # The standby has nothing the primary had not committed by now.
  halted=$(stored_cursor)
  [[ -n $halted ]] || fail "the primary holds no stored cursor"
  at=$((halted + head / 20))
  [[ $at -lt $head ]] ||
    fail "the stored cursor was $halted of $head once the standby stopped receiving: too late to crash mid catch-up; give it a longer backlog"
  wait_cursor_in_db "$at" "$head"
  before=$(stored_cursor)
  pg_throwaway_stop_server immediate || fail "could not crash the primary"
  pg_promote_standby >>"$work/standby.out" 2>&1 || fail "could not promote the standby (see standby.out)"
  t0=$(now_secs)
  promoted=$(stored_cursor)
  rows=$(user_rows)
  [[ -n $promoted ]] || fail "the promoted standby does not answer, or holds no cursor"
  [[ $promoted -lt $at ]] ||
    fail "the promoted server holds cursor $promoted, past the $at the primary had stored: it lost nothing"
  say "the standby stopped receiving at stored cursor $halted or before; primary crashed (immediate stop) at stored cursor ${before:-$at}+ of $head; promoted the standby, which holds cursor $promoted and $rows users rows"
  wait_writes_resumed "$promoted" "$pid"
  resumed=$(since "$t0")
  say "the target stored a cursor on the promoted server ${resumed}s after the promotion"
  wait_caught_up
  caught_up=$(since "$t0")
  wait_status_idle_at_head "$base" "$pid"
  say "caught up with the head ${caught_up}s after the promotion; /status idle at the head"
  verify "primary crashed at cursor ${before:-$at}/$head, the standby promoted at cursor $promoted, writes resumed ${resumed}s after, caught up ${caught_up}s after, target never restarted"
}

drill_source_restart() {
  local head1 epoch1 epoch2 dump1 cursor head pid frozen=0 tries t0
  start_source SOURCE_SEED=103 SOURCE_PRELOAD=20000
  start_target target
  pid=${targets[0]}
  wait_caught_up
  # Hold the target still at a moment when it has stored everything it
  # fetched, so that the first epoch's log can be read in full before the
  # source goes away with it.
  for tries in $(seq 1 50); do
    cursor=$(stored_cursor)
    head=$(source_head)
    if [[ -n $cursor && $cursor == "$head" ]]; then
      kill -STOP "$pid"
      sleep 0.3
      if [[ $(stored_cursor) == "$head" && $(source_head) == "$head" ]]; then
        frozen=1
        break
      fi
      kill -CONT "$pid"
    fi
    sleep 0.1
  done
  [[ $frozen -eq 1 ]] || fail "could not find the target caught up in $tries tries"
  head1=$head
  epoch1=$(stored_epoch)
  dump1=$work/changes-epoch1.jsonl
  python3 scripts/lib/oracle.py dump "$src_base" "$head1" "$dump1" >/dev/null ||
    fail "could not read the first epoch's log"
  if ! svc_stop source_service "$src_pid" 10 || [[ $SVC_STATUS != 0 ]]; then
    fail "source_service on SIGTERM: exit status $SVC_STATUS after ${SVC_SECS}s"
  fi
  # A longer log than the first, so the target's old cursor is a valid
  # cursor of the new epoch: only X-Source-Epoch tells it apart.
  start_source SOURCE_ADDR="$src_addr" SOURCE_SEED=203 SOURCE_PRELOAD=$((head1 * 3))
  epoch2=$(source_epoch)
  [[ -n $epoch2 && $epoch2 != "$epoch1" ]] || fail "the restarted source kept epoch $epoch1"
  say "epoch 1 ended at cursor $head1; source restarted with another seed, epoch 2 head $(source_head)"
  kill -CONT "$pid"
  t0=$(now_secs)
  wait_caught_up "$epoch2"
  say "epoch 2 stored and caught up with its head $(since "$t0")s after the target resumed"
  # Another seed starts the generator's email and mobile counters elsewhere,
  # so the expected table is the union of both epochs' users; the oracle
  # still applies the conflict rule in case any value were shared.
  verify "epoch 1: $head1 changes, epoch 2: $(source_head) changes" "$dump1"
}

drill_failover() {
  local head deadline s0 s1 active standby cursor fetched t0 took
  start_source SOURCE_SEED=104 SOURCE_PRELOAD=300000
  head=$(source_head)
  start_target replica-0
  start_target replica-1
  deadline=$((SECONDS + 30))
  while :; do
    s0=$(target_status_field "${target_bases[0]}" state)
    s1=$(target_status_field "${target_bases[1]}" state)
    cursor=$(stored_cursor)
    if [[ $s0 == standby && $s1 =~ ^(syncing|idle)$ ]]; then
      active=1 standby=0
    elif [[ $s1 == standby && $s0 =~ ^(syncing|idle)$ ]]; then
      active=0 standby=1
    else
      active="" standby=""
    fi
    if [[ -n $active && -n $cursor && $cursor -gt 0 ]]; then
      break
    fi
    [[ $SECONDS -lt $deadline ]] ||
      fail "want one replica syncing or idle and one standby; /status says $s0 and $s1"
    sleep 0.05
  done
  [[ $cursor -lt $head ]] || fail "the active replica reached the head before the standby was seen"
  fetched=$(metric_value "$(http_get "${target_bases[$standby]}/metrics")" profiles_fetched_total)
  [[ $fetched -eq 0 ]] || fail "the standby replica fetched $fetched changes while the other held the lock"
  svc_kill "${targets[$active]}"
  t0=$(now_secs)
  cursor=$(stored_cursor)
  [[ $cursor -lt $head ]] || fail "the active replica reached the head before it was killed"
  say "replica-$active active, replica-$standby standby; SIGKILL replica-$active at stored cursor $cursor of $head"
  deadline=$((SECONDS + 30))
  until [[ $(target_status_field "${target_bases[$standby]}" state) =~ ^(syncing|idle)$ ]] &&
    [[ $(metric_value "$(http_get "${target_bases[$standby]}/metrics" 2>/dev/null || true)" profiles_fetched_total || echo 0) -gt 0 ]]; do
    svc_running "${targets[$standby]}" || fail "the standby replica exited"
    [[ $SECONDS -lt $deadline ]] || fail "the standby did not take over within 30s"
    sleep 0.05
  done
  took=$(since "$t0")
  awk -v t="$took" -v l="$takeover_limit_secs" 'BEGIN { exit !(t <= l) }' ||
    fail "the standby took ${took}s to take over (SYNC_INTERVAL=$sync_interval; want at most ${takeover_limit_secs}s)"
  say "replica-$standby took over in ${took}s"
  wait_caught_up
  say "caught up with the head $(since "$t0")s after the kill"
  verify "killed the active replica at cursor $cursor/$head, standby took over in ${took}s"
}

run_drill() {
  drill=$1
  drill_started=$SECONDS
  work=$repo/target/faults/$drill
  rm -rf "$work"
  mkdir -p "$work"
  trap cleanup_drill EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM HUP
  pg_start_throwaway "drill-$drill" >"$work/pg.out" 2>&1 || {
    cat "$work/pg.out" >&2
    fail "could not start a throwaway PostgreSQL"
  }
  pg_create_database "$PG_ADMIN_URL" drill || fail "could not create the database"
  db_url=$(pg_url_with_db "$PG_ADMIN_URL" drill)
  say "throwaway PostgreSQL at $PG_ADMIN_URL, logs in target/faults/$drill/"
  "drill_${drill//-/_}"
}

if [[ ${1:-} == --run ]]; then
  run_drill "$2"
else
  if [[ $# -eq 0 ]]; then
    set -- "${all_drills[@]}"
  fi
  run_all "$@"
fi

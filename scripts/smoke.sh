#!/usr/bin/env bash
# Usage: scripts/smoke.sh — builds both services, runs them against a fresh database and prints one ok line per checked contract point.
set -euo pipefail

# Environment (all optional): TEST_DATABASE_URL, a maintenance database on a
# server where a database may be created and dropped (else the server at
# 127.0.0.1:5432, else a throwaway cluster under target/); PG_FORCE_THROWAWAY=1;
# SMOKE_SEED (source seed, default 4242); SMOKE_INVALID_RATE (default 0.2).
# Logs go to target/smoke/. Exit status 0 when every check passed.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
# shellcheck source=scripts/lib/svc.sh
source scripts/lib/svc.sh

# A throwaway cluster of the calling script (scripts/test.sh exports its
# variables) is not this script's to stop.
unset PG_THROWAWAY_DIR PG_THROWAWAY_DATA PG_THROWAWAY_LOG PG_THROWAWAY_PORT

cargo_target=${CARGO_TARGET_DIR:-$repo/target}
[[ $cargo_target == /* ]] || cargo_target=$repo/$cargo_target
bin_dir=$cargo_target/release
work=$repo/target/smoke
seed=${SMOKE_SEED:-4242}
invalid_rate=${SMOKE_INVALID_RATE:-0.2}
# Enough logged changes that every kind of bad change, conflicts included,
# is in the first round rather than trickling in over minutes.
preload=3000
shutdown_secs=5

db="" db_created=0 src_pid="" tgt_pid="" src_log=$work/source.log tgt_log=$work/target.log
passed=0 failed=0 noted=0

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local status=$?
  trap - INT TERM HUP
  svc_stop_all
  if [[ $db_created -eq 1 && -z ${PG_THROWAWAY_DIR:-} ]]; then
    psql "$PG_ADMIN_URL" -w -X -q -v ON_ERROR_STOP=1 -v db="$db" >/dev/null 2>&1 <<'SQL' ||
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :'db';
SELECT format('DROP DATABASE IF EXISTS %I', :'db') \gexec
SQL
      echo "smoke: could not drop database $db" >&2
  fi
  pg_stop_throwaway
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

ok() {
  echo "ok: $*"
  passed=$((passed + 1))
}

note() {
  echo "note: $*"
  noted=$((noted + 1))
}

# bad MESSAGE [LOG...]: a failed check; the run goes on and fails at the end.
bad() {
  local message=$1 log
  shift
  echo "FAIL: $message"
  for log in "$@"; do
    show_log "$log"
  done
  failed=$((failed + 1))
}

# A failure that leaves nothing further to check.
die() {
  bad "$@"
  echo "smoke: stopped early after $((SECONDS - started))s: $passed ok, $failed failed"
  exit 1
}

psql_db() {
  psql "$db_url" -w -X -q -t -A -v ON_ERROR_STOP=1 "$@"
}

target_metrics() {
  http_get "$tgt_base/metrics"
}

# Waits up to SECS for `metric_value` of NAME at the target to reach MIN.
wait_metric_at_least() {
  local name=$1 min=$2 secs=$3 deadline value
  deadline=$((SECONDS + secs))
  while :; do
    value=$(metric_value "$(target_metrics 2>/dev/null || true)" "$name" || echo 0)
    if awk -v v="$value" -v m="$min" 'BEGIN { exit !(v >= m) }'; then
      echo "$value"
      return 0
    fi
    [[ $SECONDS -lt $deadline ]] || {
      echo "$value"
      return 1
    }
    sleep 0.1
  done
}

# bad_config NAME VAR VALUE: the program must exit 2 with one line naming VAR.
bad_config() {
  local name=$1 var=$2 value=$3 out status=0 lines
  out=$(cd "$work" && env -i PATH="$PATH" "$var=$value" timeout 10 "$bin_dir/$name" 2>&1 </dev/null) ||
    status=$?
  lines=$(printf '%s\n' "$out" | grep -c .) || true
  if [[ $status -eq 2 && $lines -eq 1 && $out == *"$var"* ]]; then
    ok "$name with $var=$value exits 2 with one line: $out"
  else
    bad "$name with $var=$value: exit status $status (want 2), $lines lines (want 1 naming $var): $out"
  fi
}

echo "==> building release binaries"
build_started=$SECONDS
cargo build --release
echo "built in $((SECONDS - build_started))s"
# Timings below leave the build out.
started=$SECONDS

# curl talks to the services, python3 reads /status.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_install "${missing[@]}"
fi

echo "==> PostgreSQL"
pg_ensure_server smoke "${TEST_DATABASE_URL:-}"
command -v psql >/dev/null 2>&1 || pg_ensure_binaries
db=smoke_$(date +%s)_$$
pg_create_database "$PG_ADMIN_URL" "$db"
db_created=1
db_url=$(pg_url_with_db "$PG_ADMIN_URL" "$db")
echo "database $db on $(pg_redact_url "$PG_ADMIN_URL")"

rm -rf "$work"
mkdir -p "$work"

echo "==> checks"
bad_config target_service WRITER_THREADS abc
bad_config source_service SOURCE_INVALID_RATE 2

svc_start source_service "$src_log" "$work" SOURCE_ADDR=127.0.0.1:0 SOURCE_SEED="$seed" \
  SOURCE_INVALID_RATE="$invalid_rate" SOURCE_PRELOAD="$preload" LOG_LEVEL=info -- "$bin_dir/source_service"
src_pid=$SVC_PID
svc_listen_addr source_service "$src_pid" "$src_log" "listening on" || die "source_service did not start"
src_base=http://$SVC_ADDR
src_epoch=$(sed -n 's/.*listening on .* epoch \([^ ]*\).*/\1/p' "$src_log" | head -n 1)
code=$(http_code "$src_base/healthz")
[[ $code == 200 ]] || die "source_service /healthz answered $code" "$src_log"
ok "source_service up at $src_base (seed $seed, invalid rate $invalid_rate, $preload changes preloaded)"

svc_start target_service "$tgt_log" "$work" DATABASE_URL="$db_url" \
  SOURCE_SERVICE_URL="$src_base/users/changes" SYNC_INTERVAL=0.5 METRICS_ADDR=127.0.0.1:0 \
  SHUTDOWN_TIMEOUT_SECS="$shutdown_secs" LOG_LEVEL=info -- "$bin_dir/target_service"
tgt_pid=$SVC_PID
svc_listen_addr target_service "$tgt_pid" "$tgt_log" "metrics and health on" || die "target_service did not start"
tgt_base=http://$SVC_ADDR

t0=$(now_secs)
if rounds=$(wait_metric_at_least sync_batch_duration_seconds_count 4 30); then
  ok "target_service at $tgt_base ran $rounds sync rounds in $(awk -v a="$t0" -v b="$(now_secs)" 'BEGIN { printf "%.1f", b - a }')s"
else
  die "target_service ran $rounds sync rounds in 30s (want 4)" "$tgt_log"
fi

users=$(psql_db -c 'SELECT count(*) FROM users')
if [[ $users -gt 0 ]]; then
  ok "users holds $users rows"
else
  bad "users is empty after $rounds rounds" "$tgt_log"
fi

# Every recorded outcome shows up; conflicts are the rarest, so allow some
# rounds. Skipped changes (inactive, stale) are counted, never recorded.
deadline=$((SECONDS + 30))
while :; do
  outcomes=$(psql_db -F ' ' -c 'SELECT outcome, count(*) FROM sync_rejections GROUP BY 1 ORDER BY 1' | paste -sd ' ' -)
  missing=()
  for outcome in failed_validation conflict; do
    [[ " $outcomes " == *" $outcome "* ]] || missing+=("$outcome")
  done
  [[ ${#missing[@]} -gt 0 && $SECONDS -lt $deadline ]] || break
  sleep 0.5
done
if [[ ${#missing[@]} -eq 0 && " $outcomes " == *" skipped "* ]]; then
  bad "sync_rejections records skipped changes: $outcomes" "$tgt_log"
elif [[ ${#missing[@]} -eq 0 ]]; then
  ok "sync_rejections holds every recorded outcome, and no skipped one: $outcomes"
else
  bad "sync_rejections lacks ${missing[*]} after 30s (has: ${outcomes:-nothing})" "$tgt_log"
fi
# A rejection is its element's exact text: no text is recorded twice.
dups=$(psql_db -c 'SELECT count(*) FROM (SELECT md5(payload) FROM sync_rejections
  GROUP BY 1 HAVING count(*) > 1) d')
if [[ $dups -eq 0 ]]; then
  ok "sync_rejections records each element text once"
else
  bad "sync_rejections has $dups element texts recorded more than once" "$tgt_log"
fi

metrics=$(target_metrics)
inactive=$(metric_value "$metrics" 'profiles_rejected_total{reason="inactive_status"}' || echo missing)
if [[ $inactive != missing && $inactive -gt 0 ]]; then
  ok "inactive changes are counted ($inactive), not recorded"
else
  bad "profiles_rejected_total{reason=\"inactive_status\"} is $inactive" "$tgt_log"
fi
stale=$(metric_value "$metrics" 'profiles_rejected_total{reason="stale"}' || echo missing)
stale_made=$(metric_value "$(http_get "$src_base/metrics")" \
  'source_invalid_changes_generated_total{kind="stale_timestamp"}' || echo 0)
if [[ $stale != missing && $stale -gt 0 ]]; then
  ok "profiles_rejected_total{reason=\"stale\"} is $stale (the source made $stale_made stale changes on purpose)"
elif [[ $stale_made -eq 0 ]]; then
  note "profiles_rejected_total{reason=\"stale\"} is $stale: the source has made no stale change yet"
else
  bad "profiles_rejected_total{reason=\"stale\"} is $stale although the source made $stale_made stale changes" "$tgt_log"
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found; installing Debian's prometheus package"
  apt_install prometheus || true
fi
if command -v promtool >/dev/null 2>&1; then
  for pair in "source_service:$src_base" "target_service:$tgt_base"; do
    name=${pair%%:*}
    if out=$(http_get "${pair#*:}/metrics" | promtool check metrics 2>&1); then
      ok "$name /metrics passes promtool check metrics"
    else
      bad "$name /metrics fails promtool check metrics: $out"
    fi
  done
else
  bad "promtool is missing and could not be installed; /metrics was not linted"
fi

code=$(http_code "$tgt_base/readyz")
if [[ $code == 200 ]]; then
  ok "target_service /readyz is 200"
else
  bad "target_service /readyz is $code" "$tgt_log"
fi

status_json=$(http_get "$tgt_base/status" || true)
if verdict=$(python3 - "$status_json" "$src_epoch" <<'PY'
import json, sys
body, epoch = json.loads(sys.argv[1]), sys.argv[2]
problems = []
if body.get("state") not in ("syncing", "idle"):
    problems.append("state is %r" % body.get("state"))
if not isinstance(body.get("cursor"), int) or body["cursor"] <= 0:
    problems.append("cursor is %r" % body.get("cursor"))
if body.get("epoch") != epoch:
    problems.append("epoch is %r, the source's is %r" % (body.get("epoch"), epoch))
if problems:
    sys.exit("; ".join(problems))
print("state=%s cursor=%s epoch=%s" % (body["state"], body["cursor"], body["epoch"]))
PY
); then
  ok "target_service /status: $verdict"
else
  bad "target_service /status is not as expected: $status_json" "$tgt_log"
fi

# An idle moment: with the source gone, rounds fail before fetching anything,
# and a failed round has waited for every page it handed to the writers.
errors_before=$(metric_value "$(target_metrics)" sync_fetch_errors_total)
if svc_stop source_service "$src_pid" 10 && [[ $SVC_STATUS == 0 ]]; then
  ok "source_service stopped on SIGTERM with exit code 0 in ${SVC_SECS}s"
else
  bad "source_service on SIGTERM: exit status $SVC_STATUS after ${SVC_SECS}s (want 0 within 10s)" "$src_log"
fi
if errors=$(wait_metric_at_least sync_fetch_errors_total $((errors_before + 2)) 15); then
  metrics=$(target_metrics)
  fetched=$(metric_value "$metrics" profiles_fetched_total)
  synced=$(metric_value "$metrics" profiles_synced_total)
  skipped=$(metric_value "$metrics" profiles_skipped_total)
  queued=$(metric_value "$metrics" sync_queue_depth)
  if [[ $fetched -eq $((synced + skipped)) ]]; then
    ok "idle: profiles_fetched_total $fetched = profiles_synced_total $synced + profiles_skipped_total $skipped"
  else
    bad "idle: profiles_fetched_total $fetched != profiles_synced_total $synced + profiles_skipped_total $skipped" "$tgt_log"
  fi
  if [[ $queued -eq 0 ]]; then
    ok "idle: sync_queue_depth is 0"
  else
    bad "idle: sync_queue_depth is $queued, want 0 (nothing waits for a writer)" "$tgt_log"
  fi
  if svc_running "$tgt_pid" && [[ $(http_code "$tgt_base/readyz") == 200 ]]; then
    ok "target_service rides out the source being down ($((errors - errors_before)) failed fetches counted) and stays ready"
  else
    bad "target_service did not ride out the source being down" "$tgt_log"
  fi
else
  bad "sync_fetch_errors_total did not grow within 15s of stopping the source ($errors_before, then $errors)" "$tgt_log"
fi

if svc_stop target_service "$tgt_pid" "$shutdown_secs" && [[ $SVC_STATUS == 0 ]]; then
  ok "target_service stopped on SIGTERM with exit code 0 in ${SVC_SECS}s (SHUTDOWN_TIMEOUT_SECS=$shutdown_secs)"
else
  bad "target_service on SIGTERM: exit status $SVC_STATUS after ${SVC_SECS}s (want 0 within ${shutdown_secs}s)" "$tgt_log"
fi

summary="$passed ok, $failed failed, $noted noted in $((SECONDS - started))s (logs in target/smoke/)"
if [[ $failed -gt 0 ]]; then
  echo "smoke: FAILED: $summary"
  exit 1
fi
echo "smoke: passed: $summary"

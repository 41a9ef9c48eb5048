#!/usr/bin/env bash
# Usage: scripts/bench.sh — builds release and prints one "bench: <name>: <value> <unit> (<context>)" line per figure: machine, source, raw PostgreSQL ceiling, dlt (the loader a user would pick instead), target catch-up and replay (with the target's CPU per 1,000,000 changes), the catch-up of a backlog with invalid changes against a raw ceiling that records them too, target RSS.
set -euo pipefail

# Environment (all optional):
#   BENCH_PROFILES     changes preloaded into the source (default 1000000)
#   BENCH_SKIP_SOURCE  1: skip scripts/bench-source.sh (the source's own figures)
#   BENCH_SKIP_RAW     1: skip the raw COPY + INSERT ceilings (no ratios then)
#   BENCH_SKIP_INVALID 1: skip the second data set: a source with the default
#                      SOURCE_INVALID_RATE=0.05 (same seed and preload),
#                      whose catch-up each pair measures against a raw
#                      ceiling that also records the invalid changes and
#                      conflicts (scripts/lib/raw_expected.py)
#   BENCH_SKIP_DLT     1: skip the dlt peer (scripts/lib/dlt_peer.py), which
#                      is otherwise installed into a virtualenv under
#                      target/dlt-venv on first use (PyPI) and measured in
#                      every pair, into a table of its own and into one with
#                      the constraints of users
#   BENCH_PAIRS        how many times to measure the raw empty-table rate and
#                      the catch-up back to back, and the same for the
#                      second data set (default 3); each pair gives
#                      a ratio, and the median of them is the figure. On a
#                      shared machine whose speed drifts, one pair's ratio
#                      can be off by a tenth either way; more pairs give a
#                      steadier median
#   BENCH_BASELINE_BIN another target_service binary (say, one built from an
#                      earlier commit): each pair then also runs a catch-up
#                      with it, alternating which of the two goes first, and
#                      prints ours divided by its rate, with the median;
#                      the replay is then measured twice for each binary
#                      (ours, baseline, baseline, ours), the baseline's on
#                      the database its last catch-up loaded
#   BENCH_TARGET_ENV   extra VAR=VALUE words for target_service, e.g.
#                      "WRITER_THREADS=8 FETCH_LIMIT=5000", to compare settings
#   BENCH_SERVER_SETTINGS  NAME=VALUE words set on the whole throwaway
#                      server (ALTER SYSTEM, then a restart), e.g.
#                      "shared_buffers=1GB", to see how both the raw ceiling
#                      and the target react to the server's configuration
#   BENCH_DB_SETTINGS  NAME=VALUE words set on the target's database (ALTER
#                      DATABASE ... SET), e.g. "random_page_cost=1.1", to see
#                      how the target's queries react to planner settings
#   BENCH_PERF         1: `perf record -a -g` (whole machine) during the
#                      catch-up and the replay (target/bench/perf-*.data)
#   BENCH_PG_STATS     1: load pg_stat_statements and save the top statements
#                      of each target run, and the tables' insert, update
#                      and HOT-update counts so far, and its WAL figures
#                      (target/bench/pgss-*.txt)
#   BENCH_TIMEOUT_SECS give up on a catch-up or replay after this long (1800)
#   BENCH_QUIET_SECS   before each timed step, wait up to this long (120) for
#                      a second in which the machine is at least 90% idle, so
#                      other work on a shared machine skews the figures less;
#                      0 does not wait. Each step's CPU line shows what else ran.
# Everything runs on a throwaway PostgreSQL cluster and on free ports; logs go
# to target/bench/. Every process started here is stopped on exit.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

PROFILES=${BENCH_PROFILES:-1000000}
PAIRS=${BENCH_PAIRS:-3}
[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_PAIRS must be a whole number >= 1, not '$PAIRS'" >&2; exit 2; }
TIMEOUT_SECS=${BENCH_TIMEOUT_SECS:-1800}
read -r -a target_extra_env <<<"${BENCH_TARGET_ENV:-}"

logs=$CARGO_TARGET_DIR/bench
rm -rf "$logs"
mkdir -p "$logs"
bin=$CARGO_TARGET_DIR/release

src_pid="" inv_src_pid="" tgt_pid="" perf_pid=""

# Stops one process we started: SIGTERM, up to 20 s, then SIGKILL.
# Returns the process's exit status.
stop_pid() {
  local pid=$1 waited=0 status=0
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [[ $waited -lt 200 ]]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "bench: pid $pid did not stop within 20 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  return "$status"
}

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  trap - INT TERM HUP
  stop_pid "$perf_pid" || true
  stop_pid "$tgt_pid" || true
  stop_pid "$src_pid" || true
  stop_pid "$inv_src_pid" || true
  pg_stop_throwaway
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

die() {
  echo "bench: $*" >&2
  exit 1
}

now_ns() { date +%s%N; }
# seconds between two now_ns values, 3 decimals
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
verdict() { # verdict VALUE OP LIMIT -> "met" or "MISSED"
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
    ok = (op == ">=") ? v >= l : (op == "<") ? v < l : 0
    print ok ? "met" : "MISSED" }'
}

# CPU time in clock ticks: of one process (all its threads), of the
# throwaway cluster (with its reaped children: backends that ended), and of
# the whole machine (busy, idle, and stolen by the hypervisor). Other work on
# the machine (another checkout's tests, say) shows as "anything else".
clk_tck=$(getconf CLK_TCK)
pid_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
postgres_ticks() { # of our throwaway cluster only: its postmaster and children
  local pm
  pm=$(head -n 1 "$PG_THROWAWAY_DATA/postmaster.pid")
  # One line per process. A process that ends meanwhile is skipped by cat,
  # which then exits 1; under pipefail that must not end the benchmark.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '{
      pid = $1; sub(/^.*\) /, "")
      if (pid == pm || $2 == pm) sum += $12 + $13 + $14 + $15
    } END { print sum + 0 }'
}
idle_ticks() { awk '$1 == "cpu" { print $5 + $6 }' /proc/stat; }
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
steal_ticks() { awk '$1 == "cpu" { print $9 }' /proc/stat; }
# Waits (up to BENCH_QUIET_SECS) for a second with the machine >= 90% idle.
wait_quiet() {
  local limit=${BENCH_QUIET_SECS:-120} waited=0 b0 i0 pct
  while :; do
    b0=$(busy_ticks) i0=$(idle_ticks)
    sleep 1
    pct=$(awk -v b="$(($(busy_ticks) - b0))" -v i="$(($(idle_ticks) - i0))" 'BEGIN { printf "%.0f", 100 * i / (b + i + 1e-9) }')
    [[ $pct -ge 90 ]] && return 0
    waited=$((waited + 1))
    if [[ $waited -ge $limit ]]; then
      echo "bench: the machine is still busy ($pct% idle) after ${limit}s; measuring anyway" >&2
      return 0
    fi
  done
}
ticks_s() { awk -v t="$1" -v c="$clk_tck" 'BEGIN { printf "%.1f", t / c }'; }

# ---------------------------------------------------------------- machine
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem_gib=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
b0=$(busy_ticks) i0=$(idle_ticks)
sleep 1
quiet=$(awk -v b="$(($(busy_ticks) - b0))" -v i="$(($(idle_ticks) - i0))" 'BEGIN { printf "%.0f", 100 * i / (b + i) }')
echo "bench: machine: $(nproc) cpus ($cpu, ${mem_gib} GiB RAM, $(uname -sr); ${quiet}% idle in the second before the run, load average $(cut -d' ' -f1-3 /proc/loadavg))"

# ---------------------------------------------------------------- source's own figures
if [[ ${BENCH_SKIP_SOURCE:-0} != 1 ]]; then
  # It pages and loads its own source_service; nothing else runs meanwhile.
  scripts/bench-source.sh 2>"$logs/bench-source.stderr" | sed -u 's/^/bench: source: /' ||
    die "scripts/bench-source.sh failed; see $logs/bench-source.stderr"
fi

# ---------------------------------------------------------------- build
cargo build --release -q -p source_service -p target_service --bin source_service --bin target_service

# ---------------------------------------------------------------- PostgreSQL
pg_start_throwaway bench 2>"$logs/pg.stderr" || { cat "$logs/pg.stderr" >&2; die "no PostgreSQL"; }
psql_admin() { psql "$PG_ADMIN_URL" -w -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
# The checkpoints the server has counted: PostgreSQL 17 moved them from
# pg_stat_bgwriter to pg_stat_checkpointer.
if [[ $(psql_admin -c "SHOW server_version_num") -ge 170000 ]]; then
  checkpoints_view="pg_stat_checkpointer"
  checkpoints_counted="(SELECT num_timed + num_requested FROM pg_stat_checkpointer)"
else
  checkpoints_view="pg_stat_bgwriter"
  checkpoints_counted="(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)"
fi
# wal_position -> "LSN CHECKPOINTS": where the server's WAL stands and how
# many checkpoints it has counted.
wal_position() {
  psql_admin -F ' ' -c "SELECT pg_current_wal_lsn(), $checkpoints_counted"
}
# wal_since LSN CHECKPOINTS -> "N MiB, checkpoints K": since that position.
wal_since() {
  psql_admin -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$1') / 1048576) || ' MiB, checkpoints ' || ($checkpoints_counted - $2)"
}
# fresh_database NAME: NAME dropped if it exists and created empty.
fresh_database() {
  PGOPTIONS="-c client_min_messages=warning" psql_admin -c "DROP DATABASE IF EXISTS $1"
  pg_create_database "$PG_ADMIN_URL" "$1"
}
# settle URL: vacuums and analyzes what a timed step just loaded, untimed.
# Left to autovacuum, that work would start during the next step, and its
# CPU would count as that step's PostgreSQL time.
settle() {
  psql "$1" -w -X -q -c 'VACUUM (ANALYZE)'
}
# Measure against a durable server, as PostgreSQL runs by default and as the
# reference figures were taken: the throwaway cluster turns fsync and full
# page writes off for test speed. BENCH_DURABLE=0 keeps them off.
if [[ ${BENCH_DURABLE:-1} == 1 ]]; then
  psql_admin -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET full_page_writes = on"
fi
# BENCH_SERVER_SETTINGS come after, so they win over the lines above. (The
# target's own sessions keep synchronous_commit off whatever the server says.)
read -r -a server_settings <<<"${BENCH_SERVER_SETTINGS:-}"
for setting in "${server_settings[@]}"; do
  psql_admin -c "ALTER SYSTEM SET ${setting%%=*} = '${setting#*=}'"
done
if [[ ${BENCH_PG_STATS:-0} == 1 ]]; then
  psql_admin -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
fi
if [[ ${BENCH_PG_STATS:-0} == 1 || ${#server_settings[@]} -gt 0 ]]; then
  pg_throwaway_restart_server fast >>"$logs/pg.stderr" 2>&1 || die "PostgreSQL did not restart with the benchmark's settings"
else
  psql_admin -c "SELECT pg_reload_conf()" >/dev/null
  sleep 1
fi
pg_version=$(psql_admin -c 'SHOW server_version')
pg_conf=$(psql_admin -c "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'fsync', 'synchronous_commit', 'max_wal_size', 'full_page_writes')")
echo "bench: postgresql: $pg_version (throwaway cluster on 127.0.0.1:$PG_THROWAWAY_PORT; $pg_conf)"

# ---------------------------------------------------------------- sources with the data sets
# start_source INVALID_RATE LOG PID_VAR: a source preloaded with the backlog,
# seed 7; sets PID_VAR (right away, so cleanup stops it whatever happens)
# and $started_url. The log keeps twice the preload so that the changes the
# target's idle rounds generate never push the first ones out: the replay
# starts from 0 again.
start_source() {
  local rate=$1 log=$2 addr=""
  env SOURCE_ADDR=127.0.0.1:0 SOURCE_PRELOAD="$PROFILES" SOURCE_INVALID_RATE="$rate" SOURCE_SEED=7 \
    SOURCE_LOG_CAPACITY=$((PROFILES * 2)) LOG_LEVEL=info "$bin/source_service" 2>"$log" &
  printf -v "$3" '%s' "$!"
  for _ in $(seq 1 600); do
    kill -0 "${!3}" 2>/dev/null || { cat "$log" >&2; die "source_service exited early"; }
    # The log may not exist yet: the source was started in the background.
    addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" 2>/dev/null | head -n 1 || true)
    [[ -n $addr ]] && curl -fsS -o /dev/null "http://$addr/healthz" 2>/dev/null && break
    addr=""
    sleep 0.1
  done
  [[ -n $addr ]] || die "source_service (SOURCE_INVALID_RATE=$rate) did not become healthy"
  started_url="http://$addr/users/changes"
}
start_source 0 "$logs/source.log" src_pid
src_url=$started_url
# The source whose CPU time a target run counts.
run_src_pid=$src_pid
skip_invalid=${BENCH_SKIP_INVALID:-0}
if [[ $skip_invalid != 1 ]]; then
  start_source 0.05 "$logs/source-invalid.log" inv_src_pid
  inv_src_url=$started_url
fi

# The head, without making the source generate anything (there are changes
# after 0, so it just answers one).
source_head() {
  curl -fsS -o /dev/null -D - "$src_url?since=0&limit=1" |
    tr -d '\r' | sed -n 's/^[Xx]-[Hh]ead-[Cc]ursor: *//p'
}
head0=$(source_head)
[[ $head0 =~ ^[0-9]+$ ]] || die "no X-Head-Cursor from the source"

# ---------------------------------------------------------------- raw ceiling
raw_empty_rate=""
if [[ ${BENCH_SKIP_RAW:-0} != 1 ]]; then
  tsv=$logs/profiles.tsv
  # Pages the whole log (limit 10000) into COPY text format.
  python3 - "$src_url" "$tsv" >"$logs/page.out" <<'PY'
import json, sys, time, urllib.request
url, out = sys.argv[1], sys.argv[2]
def esc(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
since, rows, started = 0, 0, time.monotonic()
with open(out, "w", encoding="utf-8") as f:
    while True:
        with urllib.request.urlopen(f"{url}?since={since}&limit=10000") as r:
            nxt, head = int(r.headers["X-Next-Cursor"]), int(r.headers["X-Head-Cursor"])
            page = json.load(r)
        for p in page:
            f.write("\t".join(esc(p[k]) for k in ("id", "name", "email", "mobile", "status", "last_updated_at")))
            f.write("\n")
        rows += len(page)
        since = nxt
        if nxt >= head:
            break
print(rows, since, round(time.monotonic() - started, 3))
PY
  read -r raw_rows raw_head page_secs <"$logs/page.out"
  [[ $raw_head == "$head0" && $raw_rows == "$head0" ]] ||
    die "paged $raw_rows rows up to $raw_head, expected $head0"
  echo "bench: raw: paged to TSV: $raw_rows profiles in ${page_secs} s (python3, limit 10000; not part of the rates below)"

  raw_db=bench_raw
  raw_url=$(pg_url_with_db "$PG_ADMIN_URL" "$raw_db")
  # fresh_raw_db: an empty bench_raw with the target's schema.
  fresh_raw_db() {
    fresh_database "$raw_db"
    PGOPTIONS="-c client_min_messages=warning" psql "$raw_url" -w -X -q -v ON_ERROR_STOP=1 -f schema.sql
  }
  # One transaction: COPY into a temporary table, newest change per id, one
  # set-based upsert that only overwrites older rows.
  raw_load="CREATE TEMP TABLE tmp (id uuid, name text, email text, mobile text, status text, last_updated_at timestamptz) ON COMMIT DROP;
\\copy tmp FROM '$tsv'"
  raw_upsert="INSERT INTO users AS u (id, name, email, mobile, status, last_updated_at, sync_status, sync_message)
SELECT DISTINCT ON (id) id, name, email, mobile, status, last_updated_at, 'synced', 'created'
FROM tmp ORDER BY id, last_updated_at DESC
ON CONFLICT (id) DO UPDATE SET
  name = excluded.name, email = excluded.email, mobile = excluded.mobile, status = excluded.status,
  last_updated_at = excluded.last_updated_at, sync_status = 'synced', sync_message = 'updated'
WHERE u.last_updated_at < excluded.last_updated_at;"
  printf '%s\n' '\timing on' 'BEGIN;' "$raw_load" "$raw_upsert" 'COMMIT;' >"$logs/raw.sql"
  # run_raw NAME REFERENCE [SQL URL CHANGES]: times SQL (raw.sql) on the
  # database of URL (bench_raw), CHANGES ($raw_rows) changes in it; prints
  # its line, sets $raw_rate. An empty REFERENCE is a ceiling with none yet.
  run_raw() {
    local name=$1 reference=$2 sql=${3:-$logs/raw.sql} url=${4:-$raw_url} changes=${5:-$raw_rows}
    local t0 t1 s out copy_ms insert_ms inserted pg0 busy0 pg_t other_t rejections=""
    psql "$url" -w -X -q -c CHECKPOINT
    wait_quiet
    pg0=$(postgres_ticks) busy0=$(busy_ticks)
    t0=$(now_ns)
    out=$(psql "$url" -w -X -v ON_ERROR_STOP=1 -f "$sql" 2>&1) || { echo "$out" >&2; die "raw $name failed"; }
    t1=$(now_ns)
    # The session's backend may still be exiting; until the postmaster has
    # reaped it, its CPU time shows nowhere in /proc.
    sleep 0.5
    pg_t=$(($(postgres_ticks) - pg0))
    other_t=$(($(busy_ticks) - busy0 - pg_t))
    echo "$out" >"$logs/raw-$name.out"
    settle "$url"
    s=$(secs "$t0" "$t1")
    raw_rate=$(rate "$changes" "$s")
    # Every COPY's time, summed (the ceiling with rejections copies two files).
    copy_ms=$(awk '/^COPY/ { getline; sub(/^Time: /, ""); v += $1 } END { printf "%.3f", v }' <<<"$out")
    # The users upsert is the last INSERT; one before it records rejections.
    insert_ms=$(awk '/^INSERT/ { getline; sub(/^Time: /, ""); v = $1 } END { print v }' <<<"$out")
    inserted=$(awk '/^INSERT/ { v = $3 } END { print v }' <<<"$out")
    if [[ $(grep -c '^INSERT' <<<"$out") -gt 1 ]]; then
      rejections=$(awk '/^INSERT/ { n++; if (n == 1) { r = $3; getline; sub(/^Time: /, ""); printf "%s rejections recorded in %s ms, ", r, $1 } }' <<<"$out")
    fi
    [[ -z $reference ]] || reference="earlier reference on this machine about $reference; "
    echo "bench: raw $name: $raw_rate rows/s (${reference}$changes profiles in $s s: COPY ${copy_ms} ms, ${rejections}dedupe + upsert ${insert_ms} ms, $inserted rows written; cpu: postgres $(ticks_s "$pg_t") s, psql and anything else $(ticks_s "$other_t") s)"
  }
fi

# ---------------------------------------------------------------- raw ceiling with rejections
# The second data set (SOURCE_INVALID_RATE=0.05), decided change by change
# by scripts/lib/raw_expected.py (the rules of SPEC §3, conflicts against
# the simulated table; untimed): the final row of every id and every
# rejection, each with its element's exact text. The timed transaction
# loads both: the rejections with their SHA-256 key, unique, then the same
# newest-per-id upsert as the raw ceiling.
inv_raw_rows=""
if [[ $skip_invalid != 1 && ${BENCH_SKIP_RAW:-0} != 1 ]]; then
  inv_users_tsv=$logs/invalid-users.tsv inv_rejections_tsv=$logs/invalid-rejections.tsv
  inv_head0=$(curl -fsS -o /dev/null -D - "$inv_src_url?since=0&limit=1" | tr -d '\r' | sed -n 's/^[Xx]-[Hh]ead-[Cc]ursor: *//p')
  python3 scripts/lib/raw_expected.py "$inv_src_url" "$inv_users_tsv" "$inv_rejections_tsv" >"$logs/invalid-page.out" ||
    die "scripts/lib/raw_expected.py could not page and decide the invalid-rate source"
  read -r inv_raw_rows inv_raw_head inv_page_secs inv_final_rows inv_rejections <"$logs/invalid-page.out"
  [[ $inv_raw_head == "$inv_head0" && $inv_raw_rows == "$inv_head0" ]] ||
    die "paged $inv_raw_rows changes of the invalid-rate source up to $inv_raw_head, expected $inv_head0"
  echo "bench: raw invalid-rate 0.05: paged and decided: $inv_raw_rows changes in ${inv_page_secs} s, $inv_final_rows final rows and $inv_rejections rejections (python3, limit 10000, scripts/lib/raw_expected.py; not part of the rates below)"
  inv_raw_db=bench_raw_invalid
  inv_raw_url=$(pg_url_with_db "$PG_ADMIN_URL" "$inv_raw_db")
  inv_raw_load="CREATE TEMP TABLE tmp (id uuid, name text, email text, mobile text, status text, last_updated_at timestamptz, sync_status text) ON COMMIT DROP;
CREATE TEMP TABLE tmp_rejections (profile_id uuid, outcome text, reason text, message text, payload text, changed_at timestamptz) ON COMMIT DROP;
\\copy tmp FROM '$inv_users_tsv'
\\copy tmp_rejections FROM '$inv_rejections_tsv'"
  inv_raw_rejections="INSERT INTO sync_rejections (profile_id, outcome, reason, message, payload, changed_at, change_key)
SELECT profile_id, outcome, reason, message, payload, changed_at, sha256(convert_to(payload, 'UTF8'))
FROM tmp_rejections
ON CONFLICT (profile_id, change_key) DO NOTHING;"
  # The raw ceiling's upsert, the row's sync_status (a mark) taken along.
  inv_raw_upsert="INSERT INTO users AS u (id, name, email, mobile, status, last_updated_at, sync_status, sync_message)
SELECT DISTINCT ON (id) id, name, email, mobile, status, last_updated_at, sync_status, 'created'
FROM tmp ORDER BY id, last_updated_at DESC
ON CONFLICT (id) DO UPDATE SET
  name = excluded.name, email = excluded.email, mobile = excluded.mobile, status = excluded.status,
  last_updated_at = excluded.last_updated_at, sync_status = excluded.sync_status, sync_message = 'updated'
WHERE u.last_updated_at < excluded.last_updated_at;"
  printf '%s\n' '\timing on' 'BEGIN;' "$inv_raw_load" "$inv_raw_rejections" "$inv_raw_upsert" 'COMMIT;' >"$logs/raw-invalid.sql"
  # run_inv_raw TAG: the ceiling with rejections into an empty bench_raw_invalid.
  run_inv_raw() {
    fresh_database "$inv_raw_db"
    PGOPTIONS="-c client_min_messages=warning" psql "$inv_raw_url" -w -X -q -v ON_ERROR_STOP=1 -f schema.sql
    run_raw "invalid-rate-0.05$1" "" "$logs/raw-invalid.sql" "$inv_raw_url" "$inv_raw_rows"
  }
fi

# ---------------------------------------------------------------- dlt, the peer
# dlt 1.31 on its fast path: pyarrow pages, parquet loaded through ADBC.
# Pinned so that figures of different days compare the same peer.
DLT_PACKAGES=("dlt[postgres,parquet]==1.31.0" "adbc-driver-postgresql==1.13.0" "pyarrow==26.0.1")
dlt_python=""
if [[ ${BENCH_SKIP_DLT:-0} != 1 ]]; then
  venv=$CARGO_TARGET_DIR/dlt-venv
  if [[ ! -x $venv/bin/python || $(cat "$venv/.installed" 2>/dev/null) != "${DLT_PACKAGES[*]}" ]]; then
    echo "bench: installing ${DLT_PACKAGES[*]} into $venv" >&2
    rm -rf "$venv"
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q "${DLT_PACKAGES[@]}"; } >"$logs/dlt-install.log" 2>&1 ||
      { tail -n 20 "$logs/dlt-install.log" >&2; die "dlt could not be installed; BENCH_SKIP_DLT=1 runs without it"; }
    echo "${DLT_PACKAGES[*]}" >"$venv/.installed"
  fi
  dlt_python=$venv/bin/python
fi
dlt_db=bench_dlt
dlt_url=$(pg_url_with_db "$PG_ADMIN_URL" "$dlt_db")
# run_dlt VARIANT TAG HEAD: loads changes 1..HEAD with dlt into a fresh
# database (free: dlt's own table; constrained: a table with the primary key
# and unique email and mobile of users), prints its line, sets $dlt_rate.
run_dlt() {
  local variant=$1 tag=$2 head=$3 t0 t1 s out rows peak pg0 busy0 pg_t other_t distinct url
  fresh_database "$dlt_db"
  psql "$dlt_url" -w -X -q -c CHECKPOINT
  # dlt insists on a password; the throwaway cluster trusts loopback.
  url=$(sed 's#^postgres\(ql\)\{0,1\}://\([^:@/]*\)@#postgresql://\2:unused@#' <<<"$dlt_url")
  rm -rf "$logs/dlt-work"
  mkdir -p "$logs/dlt-work"
  wait_quiet
  pg0=$(postgres_ticks) busy0=$(busy_ticks)
  t0=$(now_ns)
  out=$(cd "$logs/dlt-work" && "$dlt_python" "$root/scripts/lib/dlt_peer.py" "$src_url" "$head" "$url" peer "$logs/dlt-work" "$variant" 2>"$logs/dlt-$variant$tag.log") ||
    { tail -n 20 "$logs/dlt-$variant$tag.log" >&2; die "dlt ($variant) failed"; }
  t1=$(now_ns)
  sleep 0.5
  pg_t=$(($(postgres_ticks) - pg0))
  other_t=$(($(busy_ticks) - busy0 - pg_t))
  read -r rows _ peak <<<"$out"
  s=$(secs "$t0" "$t1")
  dlt_rate=$(rate "$head" "$s")
  distinct=$(psql "$dlt_url" -w -X -q -t -A -c 'SELECT count(*) FROM peer.users')
  echo "bench: dlt $variant$tag: $dlt_rate profiles/s ($head changes in $s s from process start, $rows active or pending merged into $distinct rows on id, newest last_updated_at winning; peak RSS $(awk -v k="$peak" 'BEGIN { printf "%.0f", k / 1024 }') MiB; cpu: postgres $(ticks_s "$pg_t") s, dlt and anything else $(ticks_s "$other_t") s)"
  dlt_distinct=$distinct
  psql_admin -c "DROP DATABASE $dlt_db"
}

# ---------------------------------------------------------------- target_service
e2e_db=bench_e2e
e2e_url=$(pg_url_with_db "$PG_ADMIN_URL" "$e2e_db")
read -r -a db_settings <<<"${BENCH_DB_SETTINGS:-}"
# fresh_e2e_db: an empty bench_e2e with BENCH_DB_SETTINGS; the target
# applies its schema itself.
fresh_e2e_db() {
  fresh_database "$e2e_db"
  for setting in "${db_settings[@]}"; do
    psql_admin -c "ALTER DATABASE $e2e_db SET ${setting%%=*} = '${setting#*=}'"
  done
}
db_cursor() {
  psql "$e2e_url" -w -X -q -t -A -c "SELECT coalesce(max(cursor), 0) FROM sync_state" 2>/dev/null || echo 0
}
metric() { # metric TEXT NAME -> value (0 when absent)
  awk -v n="$2" '$1 == n { v = $2 } END { printf "%.0f", v + 0 }' <<<"$1"
}

# run_target NAME HEAD [BINARY]: starts the target (BINARY, by default ours), waits until the stored cursor
# reaches HEAD, sampling VmRSS every 100 ms; stops it (it must exit 0).
# Sets $run_secs, $run_peak_kib (max VmRSS sampled), $run_hwm_kib, $run_metrics,
# $run_tgt_ticks (the target's CPU time) and $run_cpu (a line saying where the CPU time went, and how much WAL
# PostgreSQL wrote and how many checkpoints it counted meanwhile: one that
# falls inside a run makes the first change to each page write all of it).
run_target() {
  local name=$1 head=$2 binary=${3:-$bin/target_service} log t0 t_done=""
  log=$logs/target-$name.log
  local tgt_addr="" pg0 idle0 busy0 steal0 src0 wal0 checkpoints0
  run_peak_kib=0 run_hwm_kib=0
  psql "$e2e_url" -w -X -q -c CHECKPOINT
  if [[ ${BENCH_PG_STATS:-0} == 1 ]]; then
    PGOPTIONS='-c client_min_messages=warning' psql "$e2e_url" -w -X -q -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' -c 'SELECT pg_stat_statements_reset()' -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
  fi
  wait_quiet
  read -r wal0 checkpoints0 < <(wal_position)
  pg0=$(postgres_ticks) idle0=$(idle_ticks) busy0=$(busy_ticks) steal0=$(steal_ticks) src0=$(pid_ticks "$run_src_pid")
  t0=$(now_ns)
  # Started from target/bench so no .env of the working tree is read.
  (cd "$logs" && exec env DATABASE_URL="$e2e_url" SOURCE_SERVICE_URL="$src_url" SYNC_INTERVAL=1 \
    METRICS_ADDR=127.0.0.1:0 LOG_LEVEL=info "${target_extra_env[@]}" "$binary") 2>"$log" &
  tgt_pid=$!
  if [[ ${BENCH_PERF:-0} == 1 ]]; then
    perf record -a -g -F 499 -o "$logs/perf-$name.data" >"$logs/perf-$name.out" 2>&1 &
    perf_pid=$!
  fi
  # One python3 process polls (a shell loop forks ~10 processes per 100 ms,
  # a few percent of two cores): VmRSS of the target and its sync_cursor
  # gauge every 100 ms, until the cursor reaches the head. The gauge is set
  # right after the cursor's UPDATE commits; sync_state.cursor itself is
  # checked once at the end.
  local poll
  poll=$(python3 - "$tgt_pid" "$log" "$head" "$((t0 + TIMEOUT_SECS * 1000000000))" <<'PY'
import re, sys, time, urllib.request
pid, log, head, deadline = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
addr, peak, cursor = None, 0, 0
while True:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]))
    except OSError:
        print("exited", cursor, peak); sys.exit(0)
    if addr is None:
        with open(log, errors="replace") as f:
            m = re.search(r"metrics and health on http://([^ ;]+)", f.read())
            addr = m and m.group(1)
    if addr:
        try:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=1) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("sync_cursor "):
                        cursor = int(float(line.split()[1]))
        except OSError:
            pass
    if cursor >= head:
        print("done", time.time_ns(), peak); sys.exit(0)
    if time.time_ns() > deadline:
        print("timeout", cursor, peak); sys.exit(0)
    time.sleep(0.1)
PY
)
  local outcome value
  read -r outcome value run_peak_kib <<<"$poll"
  case $outcome in
    done) t_done=$value ;;
    exited) tail -n 20 "$log" >&2; die "target_service exited during $name (cursor at $value)" ;;
    *) die "$name: cursor at $value after ${TIMEOUT_SECS}s, head $head" ;;
  esac
  run_secs=$(secs "$t0" "$t_done")
  local tgt_t pg_t src_t idle_t other_t steal_t stored
  tgt_t=$(pid_ticks "$tgt_pid")
  pg_t=$(($(postgres_ticks) - pg0))
  src_t=$(($(pid_ticks "$run_src_pid") - src0))
  idle_t=$(($(idle_ticks) - idle0))
  other_t=$(($(busy_ticks) - busy0 - tgt_t - pg_t - src_t))
  steal_t=$(($(steal_ticks) - steal0))
  run_tgt_ticks=$tgt_t
  stored=$(db_cursor)
  [[ $stored -ge $head ]] || die "$name: sync_cursor reached $head but sync_state.cursor is $stored"
  run_cpu="bench: $name cpu: target_service $(ticks_s "$tgt_t") s, postgres $(ticks_s "$pg_t") s, source_service $(ticks_s "$src_t") s, anything else $(ticks_s "$other_t") s, stolen $(ticks_s "$steal_t") s, idle $(ticks_s "$idle_t") s (of $(nproc) cpus x $run_secs s wall); WAL $(wal_since "$wal0" "$checkpoints0")"
  if [[ ${BENCH_PG_STATS:-0} == 1 ]]; then
    psql "$e2e_url" -w -X -P pager=off >"$logs/pgss-$name.txt" -c \
      "SELECT calls, round(total_exec_time::numeric / 1000, 2) AS total_s, round(mean_exec_time::numeric, 2) AS mean_ms, rows,
              shared_blks_hit + shared_blks_read AS blks, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
       FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15" \
      -c "SELECT relname, n_tup_ins AS inserted, n_tup_upd AS updated, n_tup_hot_upd AS hot_updated,
              n_live_tup AS live, n_dead_tup AS dead, pg_size_pretty(pg_total_relation_size(relid)) AS size
       FROM pg_stat_user_tables ORDER BY relname" \
      -c "SELECT wal_records, wal_fpi, pg_size_pretty(wal_bytes) AS wal_bytes, wal_buffers_full, wal_write, wal_sync FROM pg_stat_wal" \
      -c "SELECT * FROM $checkpoints_view"
  fi
  tgt_addr=$(sed -n 's/.*metrics and health on http:\/\/\([^ ;]*\).*/\1/p' "$log" | head -n 1)
  run_metrics=$(curl -fsS "http://$tgt_addr/metrics" || true)
  echo "$run_metrics" >"$logs/metrics-$name.txt"
  run_hwm_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$tgt_pid/status")
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=""
  fi
  local pid=$tgt_pid status=0
  tgt_pid=""
  stop_pid "$pid" || status=$?
  [[ $status -eq 0 ]] || die "target_service exited with $status after SIGTERM ($name)"
  settle "$e2e_url"
}

# cpu_per_million NAME CHANGES: prints the target's CPU time of the run just
# made, scaled to 1,000,000 changes; sets $run_cpu_per_million.
cpu_per_million() {
  run_cpu_per_million=$(awk -v t="$run_tgt_ticks" -v c="$clk_tck" -v n="$2" 'BEGIN { printf "%.2f", t / c * 1e6 / n }')
  echo "bench: $1 target_service cpu per 1,000,000 changes: $run_cpu_per_million s ($(ticks_s "$run_tgt_ticks") s for $2 changes)"
}

target_settings="SYNC_INTERVAL=1${BENCH_TARGET_ENV:+ $BENCH_TARGET_ENV}${BENCH_DB_SETTINGS:+; database: $BENCH_DB_SETTINGS}"

# 3. Pairs of the raw empty-table ceiling and the catch-up into an empty
# database, measured back to back so that both see the machine alike.
median() { # median FORMAT <<<"V1 V2 ..." -> the median, printed with FORMAT
  tr ' ' '\n' | LC_ALL=C sort -g | awk -v f="$1" '{ v[NR] = $1 } END { printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
baseline_bin=${BENCH_BASELINE_BIN:-}
[[ -z $baseline_bin || -x $baseline_bin ]] || die "BENCH_BASELINE_BIN: $baseline_bin is not an executable"
# as_baseline COMMAND...: runs COMMAND against the baseline's database.
as_baseline() {
  local ours_db=$e2e_db ours_url=$e2e_url
  e2e_db=bench_baseline e2e_url=$(pg_url_with_db "$PG_ADMIN_URL" bench_baseline)
  "$@"
  e2e_db=$ours_db e2e_url=$ours_url
}
# run_baseline TAG HEAD: a catch-up with BENCH_BASELINE_BIN; sets $baseline_rate.
# It loads a database of its own (its schema may differ), kept for its replay.
run_baseline() {
  as_baseline fresh_e2e_db
  as_baseline run_target "baseline-catch-up$1" "$2" "$baseline_bin"
  baseline_rate=$(rate "$2" "$run_secs")
  echo "bench: baseline catch-up$1: $baseline_rate profiles/s ($baseline_bin; $2 changes in $run_secs s from process start)"
  echo "$run_cpu"
}
# as_invalid COMMAND...: runs COMMAND against the invalid-rate source and
# the database of its catch-up.
as_invalid() {
  local ours_db=$e2e_db ours_url=$e2e_url ours_src_url=$src_url
  e2e_db=bench_invalid e2e_url=$(pg_url_with_db "$PG_ADMIN_URL" bench_invalid)
  src_url=$inv_src_url run_src_pid=$inv_src_pid
  "$@"
  e2e_db=$ours_db e2e_url=$ours_url src_url=$ours_src_url run_src_pid=$src_pid
}
recorded_reasons='invalid_id|invalid_timestamp|invalid_email|invalid_name|invalid_mobile|malformed|future_timestamp|email_taken|mobile_taken|db_error'
# run_invalid_catch_up TAG: the catch-up of the invalid-rate source into an
# empty database; sets $inv_catch_rate, $inv_head and $inv_fetched (the
# changes it fetched, those its idle rounds made the source generate too).
run_invalid_catch_up() {
  local synced stale inactive rejected skipped
  inv_head=$(source_head)
  [[ $inv_head =~ ^[0-9]+$ ]] || die "no X-Head-Cursor from the invalid-rate source"
  fresh_e2e_db
  run_target "catch-up-invalid$1" "$inv_head"
  inv_catch_rate=$(rate "$inv_head" "$run_secs")
  inv_fetched=$(metric "$run_metrics" profiles_fetched_total)
  synced=$(metric "$run_metrics" profiles_synced_total)
  skipped=$(metric "$run_metrics" profiles_skipped_total)
  stale=$(metric "$run_metrics" 'profiles_rejected_total{reason="stale"}')
  inactive=$(metric "$run_metrics" 'profiles_rejected_total{reason="inactive_status"}')
  rejected=$(awk -v re="^profiles_rejected_total[{]reason=\"($recorded_reasons)\"[}]$" '$1 ~ re { v += $2 } END { printf "%.0f", v }' <<<"$run_metrics")
  echo "bench: catch-up invalid-rate 0.05$1: $inv_catch_rate profiles/s ($inv_head changes of the SOURCE_INVALID_RATE=0.05 source from cursor 0 to the head in $run_secs s from process start; $target_settings; synced $synced, stale $stale, inactive $inactive, failed validation or conflict $rejected, skipped in all $skipped)"
  cpu_per_million "catch-up invalid-rate 0.05$1" "$inv_head"
  echo "$run_cpu"
}
# invalid_pair PAIR TAG: the raw ceiling with rejections and the catch-up of
# the invalid-rate source, in turns (odd pairs the raw one first, even pairs
# the target), so that drift favours neither; prints their ratio.
invalid_pair() {
  local pair=$1 tag=$2 raw_inv_rate="" ratio users rejections raw_rejections slack
  if [[ -n $inv_raw_rows && $((pair % 2)) -eq 1 ]]; then
    run_inv_raw "$tag"
    raw_inv_rate=$raw_rate
  fi
  as_invalid run_invalid_catch_up "$tag"
  inv_catch_rates+=("$inv_catch_rate") inv_cpu_per_million+=("$run_cpu_per_million")
  if [[ -n $inv_raw_rows && $((pair % 2)) -eq 0 ]]; then
    run_inv_raw "$tag"
    raw_inv_rate=$raw_rate
  fi
  [[ -n $raw_inv_rate ]] || return 0
  ratio=$(awk -v a="$inv_catch_rate" -v b="$raw_inv_rate" 'BEGIN { printf "%.2f", a / b }')
  inv_ratios+=("$ratio")
  echo "bench: catch-up invalid-rate 0.05 vs raw with rejections$tag: $ratio (target >= 0.85: $(verdict "$ratio" '>=' 0.85); $inv_catch_rate / $raw_inv_rate rows/s)"
  # The raw ceiling holds the log up to the head it was paged at; the
  # catch-up also took what the source generated since at its head (this
  # and earlier catch-ups' idle rounds), each change of which may add a
  # row or a rejection.
  users=$(as_invalid psql_e2e 'SELECT count(*) FROM users')
  rejections=$(as_invalid psql_e2e 'SELECT count(*) FROM sync_rejections')
  raw_rejections=$(psql "$inv_raw_url" -w -X -q -t -A -c 'SELECT count(*) FROM sync_rejections')
  slack=$((inv_fetched - inv_raw_rows))
  ((users >= inv_final_rows && users - inv_final_rows <= slack)) ||
    echo "bench: WARNING: users holds $users rows after the invalid-rate catch-up, the raw ceiling's $inv_final_rows (at most $slack more were possible, one per change it fetched beyond the ceiling's): the two did not load the same ids" >&2
  ((rejections >= raw_rejections && rejections - raw_rejections <= slack)) ||
    echo "bench: WARNING: sync_rejections holds $rejections rows after the invalid-rate catch-up, the raw ceiling's $raw_rejections (at most $slack more were possible): the two did not record the same rejections" >&2
}
# psql_e2e SQL: one value from the database of $e2e_url.
psql_e2e() { psql "$e2e_url" -w -X -q -t -A -c "$1"; }
inv_catch_rates=() inv_cpu_per_million=() inv_ratios=() catch_cpu_per_million=()
baseline_ratios=()
ratios=() dlt_constrained_ratios=() dlt_free_ratios=() catch_rates=() catch_peak=0 catch_hwm=0
for pair in $(seq 1 "$PAIRS"); do
  tag=""
  [[ $PAIRS -eq 1 ]] || tag="-$pair"
  if [[ -n ${tsv:-} ]]; then
    fresh_raw_db
    run_raw "empty-table$tag" 52000
    raw_empty_rate=$raw_rate
  fi
  # Later pairs also take the few changes that earlier catch-ups made the
  # source generate when they reached the head; the raw run keeps its TSV.
  head=$(source_head)
  [[ $head =~ ^[0-9]+$ ]] || die "no X-Head-Cursor from the source"
  dlt_free_rate="" dlt_constrained_rate=""
  if [[ -n $dlt_python ]]; then
    run_dlt constrained "$tag" "$head"
    dlt_constrained_rate=$dlt_rate
    run_dlt free "$tag" "$head"
    dlt_free_rate=$dlt_rate
  fi
  baseline_rate=""
  # Even pairs run the baseline first, odd ones ours, so drift favours neither.
  if [[ -n $baseline_bin && $((pair % 2)) -eq 0 ]]; then run_baseline "$tag" "$head"; fi
  fresh_e2e_db
  run_target "catch-up$tag" "$head"
  catch_rate=$(rate "$head" "$run_secs")
  catch_rates+=("$catch_rate")
  catch_peak=$((run_peak_kib > catch_peak ? run_peak_kib : catch_peak))
  catch_hwm=$((run_hwm_kib > catch_hwm ? run_hwm_kib : catch_hwm))
  synced=$(metric "$run_metrics" profiles_synced_total)
  skipped=$(metric "$run_metrics" profiles_skipped_total)
  stale=$(metric "$run_metrics" 'profiles_rejected_total{reason="stale"}')
  inactive=$(metric "$run_metrics" 'profiles_rejected_total{reason="inactive_status"}')
  echo "bench: catch-up$tag: $catch_rate profiles/s (target >= 35000: $(verdict "$catch_rate" '>=' 35000); $head changes from cursor 0 to the head in $run_secs s from process start; $target_settings; synced $synced, stale $stale, inactive $inactive, skipped in all $skipped)"
  cpu_per_million "catch-up$tag" "$head"
  catch_cpu_per_million+=("$run_cpu_per_million")
  if [[ -n $raw_empty_rate ]]; then
    ratio=$(awk -v a="$catch_rate" -v b="$raw_empty_rate" 'BEGIN { printf "%.2f", a / b }')
    ratios+=("$ratio")
    echo "bench: catch-up vs raw$tag: $ratio of the raw empty-table rate (target >= 0.8: $(verdict "$ratio" '>=' 0.8); $catch_rate / $raw_empty_rate rows/s)"
  fi
  if [[ -n $dlt_constrained_rate ]]; then
    ratio=$(awk -v a="$catch_rate" -v b="$dlt_constrained_rate" 'BEGIN { printf "%.2f", a / b }')
    dlt_constrained_ratios+=("$ratio")
    echo "bench: catch-up vs dlt constrained$tag: $ratio (target >= 1.0: $(verdict "$ratio" '>=' 1.0); $catch_rate / $dlt_constrained_rate profiles/s)"
    ratio=$(awk -v a="$catch_rate" -v b="$dlt_free_rate" 'BEGIN { printf "%.2f", a / b }')
    dlt_free_ratios+=("$ratio")
    echo "bench: catch-up vs dlt free$tag: $ratio (the moonshot is >= 1.0: $(verdict "$ratio" '>=' 1.0); $catch_rate / $dlt_free_rate profiles/s)"
    # The catch-up also takes the fresh batch (2-5 new users) its last
    # fetch makes the source generate; a larger gap means the two disagree.
    # A baseline catch-up before ours took a fresh batch of its own.
    users=$(psql "$e2e_url" -w -X -q -t -A -c 'SELECT count(*) FROM users')
    slack=5
    [[ -z $baseline_rate ]] || slack=10
    ((users >= dlt_distinct && users - dlt_distinct <= slack)) ||
      echo "bench: WARNING: users holds $users rows, dlt's table $dlt_distinct: the two did not load the same ids" >&2
  fi
  echo "$run_cpu"
  if [[ -n $baseline_bin ]]; then
    [[ -n $baseline_rate ]] || run_baseline "$tag" "$head"
    ratio=$(awk -v a="$catch_rate" -v b="$baseline_rate" 'BEGIN { printf "%.2f", a / b }')
    baseline_ratios+=("$ratio")
    echo "bench: catch-up vs baseline$tag: $ratio ($catch_rate / $baseline_rate profiles/s)"
  fi
  [[ $skip_invalid == 1 ]] || invalid_pair "$pair" "$tag"
done
if [[ ${#baseline_ratios[@]} -gt 0 ]]; then
  ratio=$(median %.2f <<<"${baseline_ratios[*]}")
  echo "bench: catch-up vs baseline, median of $PAIRS pairs: $ratio (each: ${baseline_ratios[*]})"
fi
if [[ $PAIRS -gt 1 ]]; then
  catch_rate=$(median %.0f <<<"${catch_rates[*]}")
  echo "bench: catch-up, median of $PAIRS: $catch_rate profiles/s (target >= 35000: $(verdict "$catch_rate" '>=' 35000); each: ${catch_rates[*]})"
  cpu_median=$(median %.2f <<<"${catch_cpu_per_million[*]}")
  echo "bench: catch-up target_service cpu per 1,000,000 changes, median of $PAIRS: $cpu_median s (each: ${catch_cpu_per_million[*]})"
  if [[ ${#ratios[@]} -gt 0 ]]; then
    ratio=$(median %.2f <<<"${ratios[*]}")
    echo "bench: catch-up vs raw, median of $PAIRS pairs: $ratio (target >= 0.8: $(verdict "$ratio" '>=' 0.8); each: ${ratios[*]})"
  fi
  if [[ ${#dlt_constrained_ratios[@]} -gt 0 ]]; then
    ratio=$(median %.2f <<<"${dlt_constrained_ratios[*]}")
    echo "bench: catch-up vs dlt constrained, median of $PAIRS: $ratio (target >= 1.0: $(verdict "$ratio" '>=' 1.0); each: ${dlt_constrained_ratios[*]})"
    ratio=$(median %.2f <<<"${dlt_free_ratios[*]}")
    echo "bench: catch-up vs dlt free, median of $PAIRS: $ratio (the moonshot is >= 1.0: $(verdict "$ratio" '>=' 1.0); each: ${dlt_free_ratios[*]})"
  fi
  if [[ ${#inv_catch_rates[@]} -gt 0 ]]; then
    inv_rate_median=$(median %.0f <<<"${inv_catch_rates[*]}")
    echo "bench: catch-up invalid-rate 0.05, median of $PAIRS: $inv_rate_median profiles/s (each: ${inv_catch_rates[*]})"
    cpu_median=$(median %.2f <<<"${inv_cpu_per_million[*]}")
    echo "bench: catch-up invalid-rate 0.05 target_service cpu per 1,000,000 changes, median of $PAIRS: $cpu_median s (each: ${inv_cpu_per_million[*]})"
  fi
  if [[ ${#inv_ratios[@]} -gt 0 ]]; then
    ratio=$(median %.2f <<<"${inv_ratios[*]}")
    echo "bench: catch-up invalid-rate 0.05 vs raw with rejections, median of $PAIRS pairs: $ratio (target >= 0.85: $(verdict "$ratio" '>=' 0.85); each: ${inv_ratios[*]})"
  fi
fi
if [[ -n $inv_raw_rows ]]; then
  psql_admin -c "DROP DATABASE $inv_raw_db"
fi
if [[ $skip_invalid != 1 ]]; then
  psql_admin -c "DROP DATABASE bench_invalid"
  stop_pid "$inv_src_pid" || true
  inv_src_pid=""
fi
if [[ -n ${tsv:-} ]]; then
  # The raw statement once more on the table the last pair filled.
  run_raw all-stale 110000
  raw_stale_rate=$raw_rate
  users=$(psql "$raw_url" -w -X -q -t -A -c 'SELECT count(*) FROM users')
  echo "bench: raw: distinct ids: $users (users rows after both runs)"
  psql_admin -c "DROP DATABASE $raw_db"
fi

# 4. Replay of the whole log: every change is stale.
# replay NAME [BINARY]: the whole log again into the database of $e2e_url.
replay() {
  psql "$e2e_url" -w -X -q -v ON_ERROR_STOP=1 -c 'UPDATE sync_state SET cursor = 0'
  head1=$(source_head)
  run_target "$1" "$head1" "${2:-$bin/target_service}"
}
if [[ -n $baseline_bin ]]; then
  # Ours, baseline, baseline, ours: drift favours neither; ours last so
  # the figures below are of its second replay.
  replay replay-a
  ours_a=$(rate "$head1" "$run_secs")
  as_baseline replay baseline-replay-a "$baseline_bin"
  base_a=$(rate "$head1" "$run_secs")
  as_baseline replay baseline-replay-b "$baseline_bin"
  base_b=$(rate "$head1" "$run_secs")
  echo "bench: baseline replay: $base_a, $base_b profiles/s ($baseline_bin)"
  psql_admin -c "DROP DATABASE bench_baseline"
fi
replay replay
replay_rate=$(rate "$head1" "$run_secs")
if [[ -n $baseline_bin ]]; then
  ratio=$(awk -v a="$ours_a" -v b="$replay_rate" -v c="$base_a" -v d="$base_b" 'BEGIN { printf "%.2f", (a + b) / (c + d) }')
  echo "bench: replay vs baseline: $ratio (ours $ours_a, $replay_rate profiles/s)"
fi
replay_peak=$run_peak_kib replay_hwm=$run_hwm_kib
synced=$(metric "$run_metrics" profiles_synced_total)
stale=$(metric "$run_metrics" 'profiles_rejected_total{reason="stale"}')
skipped=$(metric "$run_metrics" profiles_skipped_total)
echo "bench: replay: $replay_rate profiles/s (target >= 80000: $(verdict "$replay_rate" '>=' 80000); $head1 changes from cursor 0 to the head in $run_secs s from process start, all stored by the catch-up but the $((head1 - head)) that fetches at the head made the source generate since; synced $synced, stale $stale, skipped in all $skipped)"
if [[ -n ${raw_stale_rate:-} ]]; then
  ratio=$(awk -v a="$replay_rate" -v b="$raw_stale_rate" 'BEGIN { printf "%.2f", a / b }')
  echo "bench: replay vs raw all-stale: $ratio (target >= 0.8: $(verdict "$ratio" '>=' 0.8); $replay_rate / $raw_stale_rate rows/s)"
fi
cpu_per_million replay "$head1"
echo "$run_cpu"

# 5. Memory.
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
peak=$(printf '%s\n' "$catch_peak" "$catch_hwm" "$replay_peak" "$replay_hwm" | sort -n | tail -n 1)
peak_mib=$(mib "$peak")
echo "bench: target peak RSS: $peak_mib MiB (target <= 64 MiB: $(verdict "$peak_mib" '<' 64.01); catch-up VmHWM $(mib "$catch_hwm") MiB, max sampled VmRSS $(mib "$catch_peak") MiB; replay VmHWM $(mib "$replay_hwm") MiB, max sampled VmRSS $(mib "$replay_peak") MiB)"

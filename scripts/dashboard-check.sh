#!/usr/bin/env bash
# Usage: scripts/dashboard-check.sh — every query of the Grafana dashboard, evaluated by a real Prometheus scraping both running services.
set -euo pipefail

# Validates deploy/grafana/ (the dashboard's JSON, its datasource uid, the
# provisioning files), starts both services (release build) with
# SYNC_INTERVAL=1 against a fresh database, starts Prometheus (Debian's
# package, installed when missing) on a free port scraping them every second,
# waits for a few scrapes, then evaluates every panel's query through
# /api/v1/query with Grafana's interval variables set to 30s. A query that
# does not parse or returns no series fails the check. Environment:
# TEST_DATABASE_URL, PG_FORCE_THROWAWAY=1 (as for scripts/test.sh).

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
# shellcheck source=scripts/lib/svc.sh
source scripts/lib/svc.sh

# A throwaway cluster of the calling script is not this script's to stop.
unset PG_THROWAWAY_DIR PG_THROWAWAY_DATA PG_THROWAWAY_LOG PG_THROWAWAY_PORT

dashboard=$repo/deploy/grafana/dashboards/profile-sync.json
provisioning=$repo/deploy/grafana/provisioning
cargo_target=${CARGO_TARGET_DIR:-$repo/target}
[[ $cargo_target == /* ]] || cargo_target=$repo/$cargo_target
bin_dir=$cargo_target/release
work=$repo/target/dashboard-check
db="" prom_pid="" prom_url=""

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local status=$?
  trap - INT TERM HUP
  svc_stop_all
  if [[ -n $db && -z ${PG_THROWAWAY_DIR:-} ]]; then
    pg_drop_database "$PG_ADMIN_URL" "$db" ||
      echo "dashboard-check: could not drop database $db" >&2
  fi
  pg_stop_throwaway
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

fail() {
  echo "FAIL: $1"
  shift
  local log
  for log in "$@"; do
    show_log "$log"
  done
  exit 1
}

# The dashboard is JSON with a uid, a title and panels whose queries all
# use the provisioned datasource; the provisioning files name that uid and
# the directory the dashboard is mounted at. Prints one ok line.
validate_files() {
  python3 - "$dashboard" "$provisioning" <<'PY'
import json, re, sys
path, prov = sys.argv[1], sys.argv[2]
try:
    dash = json.load(open(path))
except ValueError as e:
    sys.exit(f"FAIL: {path} is not valid JSON: {e}")
problems = []
for key in ("uid", "title", "panels", "schemaVersion"):
    if key not in dash:
        problems.append(f"no {key!r}")
ds = open(f"{prov}/datasources/prometheus.yml").read()
uid = re.search(r"^\s*uid:\s*(\S+)", ds, re.M)
uid = uid.group(1) if uid else None
if uid is None:
    problems.append("the datasource provisioning file names no uid")
queries = 0
ids = set()
for panel in dash.get("panels", []):
    if panel.get("id") in ids:
        problems.append(f"panel id {panel.get('id')} twice")
    ids.add(panel.get("id"))
    for target in panel.get("targets", []):
        queries += 1
        if target.get("datasource", panel.get("datasource", {})).get("uid") != uid:
            problems.append(f"panel {panel.get('title')!r} does not use datasource uid {uid}")
        if not target.get("expr", "").strip():
            problems.append(f"panel {panel.get('title')!r} has an empty query")
    if not panel.get("targets"):
        problems.append(f"panel {panel.get('title')!r} has no query")
board = open(f"{prov}/dashboards/profile-sync.yml").read()
if "/etc/grafana/dashboards" not in board:
    problems.append("the dashboard provider does not read /etc/grafana/dashboards")
if problems:
    sys.exit("FAIL: " + path + ": " + "; ".join(problems))
print(f"ok: {path} is valid JSON: {len(dash['panels'])} panels, {queries} queries, datasource uid {uid}")
PY
}

# Every panel's query, one per line as "TITLE<TAB>EXPR", Grafana's interval
# variables replaced by 30s.
dashboard_queries() {
  python3 - "$dashboard" <<'PY'
import json, re, sys
for panel in json.load(open(sys.argv[1]))["panels"]:
    for target in panel.get("targets", []):
        expr = re.sub(r"\$__(rate_interval|interval|range)\b", "30s", target["expr"])
        expr = re.sub(r"\$\{__(rate_interval|interval|range)\}", "30s", expr)
        print(panel["title"] + "\t" + " ".join(expr.split()))
PY
}

ensure_prometheus() {
  command -v prometheus >/dev/null 2>&1 && return 0
  echo "prometheus not found; installing Debian's prometheus package"
  apt_install prometheus >/dev/null && command -v prometheus >/dev/null 2>&1
}

# prom_query EXPR: the JSON answer of /api/v1/query.
prom_query() {
  curl -sS --max-time 10 --get --data-urlencode "query=$1" "$prom_url/api/v1/query"
}

# The value of EXPR's first series, or nothing.
prom_value() {
  prom_query "$1" 2>/dev/null | python3 -c '
import json, sys
try:
    result = json.load(sys.stdin)["data"]["result"]
    print(result[0]["value"][1] if result else "")
except (ValueError, KeyError, IndexError):
    print("")'
}

# evaluate_queries: one line per query, then "N passed, M failed"; fails
# when any query does not parse or returns no series.
evaluate_queries() {
  dashboard_queries >"$work/queries.tsv"
  python3 - "$prom_url" "$work/queries.tsv" <<'PY'
import json, sys, urllib.error, urllib.parse, urllib.request
base, queries = sys.argv[1], sys.argv[2]
passed = failed = 0
for line in open(queries):
    title, expr = line.rstrip("\n").split("\t", 1)
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    except (OSError, ValueError) as e:
        body = {"status": "error", "error": f"no answer: {e}"}
    if body.get("status") != "success":
        failed += 1
        kind = body.get("errorType", "error")
        print(f"FAIL: {title}: {expr}: {kind}: {body.get('error')}")
        continue
    series = body["data"]["result"]
    if not series:
        failed += 1
        print(f"FAIL: {title}: {expr}: no series")
        continue
    passed += 1
    print(f"ok: {title}: {expr}: {len(series)} series")
print(f"dashboard queries: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
PY
}

start_services() {
  local db_url src_log=$work/source.log tgt_log=$work/target.log
  pg_ensure_server dashboard-check "${TEST_DATABASE_URL:-}"
  db=dashboard_check_$$
  pg_create_database "$PG_ADMIN_URL" "$db"
  db_url=$(pg_url_with_db "$PG_ADMIN_URL" "$db")
  svc_start source_service "$src_log" "$work" SOURCE_ADDR=127.0.0.1:0 SOURCE_PRELOAD=500 \
    SOURCE_INVALID_RATE=0.2 -- "$bin_dir/source_service"
  svc_listen_addr source_service "$SVC_PID" "$src_log" "listening on" || fail "source_service did not start"
  source_addr=$SVC_ADDR
  svc_start target_service "$tgt_log" "$work" DATABASE_URL="$db_url" METRICS_ADDR=127.0.0.1:0 \
    SOURCE_SERVICE_URL="http://$source_addr/users/changes" SYNC_INTERVAL=1 -- "$bin_dir/target_service"
  svc_listen_addr target_service "$SVC_PID" "$tgt_log" "metrics and health on" || fail "target_service did not start"
  target_addr=$SVC_ADDR
  echo "source_service on $source_addr, target_service on $target_addr"
}

start_prometheus() {
  local port log=$work/prometheus.log deadline
  port=$(pg__free_port)
  cat >"$work/prometheus.yml" <<YAML
# The jobs of prometheus.yml, scraped every second.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: target_service
    static_configs:
      - targets: ["$target_addr"]
  - job_name: source_service
    static_configs:
      - targets: ["$source_addr"]
YAML
  svc_start prometheus "$log" "$work" -- prometheus --config.file="$work/prometheus.yml" \
    --storage.tsdb.path="$work/tsdb" --web.listen-address="127.0.0.1:$port"
  prom_pid=$SVC_PID
  prom_url=http://127.0.0.1:$port
  deadline=$((SECONDS + 30))
  until [[ $(http_code "$prom_url/-/ready") == 200 ]]; do
    svc_running "$prom_pid" || fail "prometheus exited during start-up" "$log"
    [[ $SECONDS -lt $deadline ]] || fail "prometheus was not ready within 30s" "$log"
    sleep 0.2
  done
  echo "prometheus $(prometheus --version 2>&1 | awk 'NR == 1 {print $3}') on 127.0.0.1:$port"
}

# Until both jobs are up and each has been scraped SCRAPES times.
wait_for_scrapes() {
  local scrapes=$1 deadline=$((SECONDS + 60)) up seen
  while :; do
    up=$(prom_value 'sum(up{job=~"target_service|source_service"})')
    seen=$(prom_value 'min(count_over_time(up{job=~"target_service|source_service"}[1m]))')
    if [[ $up == 2 && -n $seen && $seen -ge $scrapes ]]; then
      echo "ok: both jobs up, each scraped $seen times"
      return 0
    fi
    [[ $SECONDS -lt $deadline ]] ||
      fail "after 60s: ${up:-no} of 2 jobs up, ${seen:-no} scrapes (want $scrapes)" "$work/prometheus.log"
    sleep 0.5
  done
}

rm -rf "$work"
mkdir -p "$work"
validate_files
if ! ensure_prometheus; then
  echo "skipped: dashboard queries: prometheus is missing and could not be installed"
  exit 0
fi
cargo build --release -p source_service -p target_service
start_services
start_prometheus
wait_for_scrapes 5
evaluate_queries

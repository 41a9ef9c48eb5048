#!/usr/bin/env bash
# Usage: scripts/api-check.sh — runs schemathesis against both services,
# started here, with every check, to keep their responses true to their
# /openapi.json: no 5xx, every status code, content type, header and body as
# documented, bad input refused, valid input accepted. Fails when
# schemathesis finds anything.
#
# Environment: TEST_DATABASE_URL (as for scripts/test.sh), API_CHECK_EXAMPLES
# (test cases per operation and phase, default 30).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
# shellcheck source=scripts/lib/svc.sh
source scripts/lib/svc.sh
# shellcheck source=scripts/lib/ops.sh
source scripts/lib/ops.sh

examples=${API_CHECK_EXAMPLES:-30}
work=target/api-check
token=api-check-token

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local status=$?
  ops_cleanup
  pg_stop_throwaway
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

ops_venv
cargo build --release -p source_service -p target_service
bin_dir=target/release
pg_ensure_server api-check "${TEST_DATABASE_URL:-}"
ops_database api_check
rm -rf "$work"
mkdir -p "$work"

svc_start source_service "$work/source.log" "$work" SOURCE_ADDR=127.0.0.1:0 SOURCE_PRELOAD=2000 \
  LOG_LEVEL=info -- "$PWD/$bin_dir/source_service"
svc_listen_addr source_service "$SVC_PID" "$work/source.log" "listening on"
src=http://$SVC_ADDR
svc_start target_service "$work/target.log" "$work" DATABASE_URL="$OPS_DB_URL" \
  SOURCE_SERVICE_URL="$src/users/changes" METRICS_ADDR=127.0.0.1:0 SYNC_INTERVAL=1 \
  ADMIN_TOKEN="$token" LOG_LEVEL=info -- "$PWD/$bin_dir/target_service"
svc_listen_addr target_service "$SVC_PID" "$work/target.log" "metrics and health on"
tgt=http://$SVC_ADDR
# Rejections to list: the first round records some.
for _ in $(seq 50); do
  [[ $(http_code "$tgt/readyz") == 200 ]] && break
  sleep 0.2
done

# Every check runs. scripts/schemathesis-<name>.toml, where there is one,
# says which documented refusals of schema-valid input (the source's 410
# cursor, its limit without since) count as accepting it.
run_schemathesis() {
  local name=$1 base=$2 config=()
  shift 2
  if [[ -f scripts/schemathesis-$name.toml ]]; then
    config=(--config-file "$PWD/scripts/schemathesis-$name.toml")
  fi
  echo "==> schemathesis against $name ($base)"
  # From inside $work, where schemathesis keeps its cache.
  (cd "$work" && "$OPS_PY" -m schemathesis.cli "${config[@]}" run "$base/openapi.json" \
    --checks all \
    --max-examples "$examples" --seed 1 --request-timeout 10 --no-color --generation-database none \
    --report junit --report-dir "report-$name" "$@")
}

failed=0
run_schemathesis source_service "$src" || failed=1
run_schemathesis target_service "$tgt" -H "Authorization: Bearer $token" || failed=1
if ! svc_running "${SVC_PIDS[0]}" || ! svc_running "${SVC_PIDS[1]}"; then
  echo "api-check: a service died during the run" >&2
  show_log "$work/source.log"
  show_log "$work/target.log"
  failed=1
fi
if [[ $failed -ne 0 ]]; then
  echo "api-check: schemathesis found problems (reports under $work)" >&2
  exit 1
fi
echo "api-check: both services keep their OpenAPI documents"

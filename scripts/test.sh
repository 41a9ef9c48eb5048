#!/usr/bin/env bash
# Usage: scripts/test.sh — format check, clippy, all tests against a real PostgreSQL, smoke test, deploy-file checks.
set -euo pipefail

# Environment: TEST_DATABASE_URL (a maintenance database where tests may
# create and drop databases; found or started when unset), PG_FORCE_THROWAWAY=1
# (always use a throwaway cluster under target/).

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh

trap pg_stop_throwaway EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

step() {
  printf '\n==> %s\n' "$*"
}

check_compose() {
  local cmd=() out
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    cmd=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    cmd=(docker-compose)
  else
    echo "skipped: neither the docker compose plugin nor docker-compose is installed"
    return 0
  fi
  if out=$("${cmd[@]}" config -q 2>&1); then
    echo "docker-compose.yml is valid (${cmd[*]} config -q)"
    return 0
  fi
  if grep -qiE 'docker daemon|docker\.sock|connection refused' <<<"$out"; then
    echo "skipped: ${cmd[*]} config wants a Docker engine and none runs here:"
    printf '  %s\n' "$out"
    return 0
  fi
  printf '%s\n' "$out" >&2
  return 1
}

check_prometheus() {
  if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found; installing Debian's prometheus package"
    if ! apt_install prometheus || ! command -v promtool >/dev/null 2>&1; then
      echo "skipped: promtool is missing and could not be installed"
      return 0
    fi
  fi
  promtool check config prometheus.yml
}

step "PostgreSQL"
pg_ensure_server test "${TEST_DATABASE_URL:-}"
export TEST_DATABASE_URL=$PG_ADMIN_URL
echo "TEST_DATABASE_URL=$(pg_redact_url "$TEST_DATABASE_URL")"
# The TLS and PostgreSQL-crash tests start clusters of their own through
# pg.sh; installing initdb once here keeps parallel tests from each trying.
pg_ensure_binaries
echo "initdb: $(command -v initdb) (for the tests' own clusters)"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace (TLS: target_service/tests/it/tls.rs; tokens: source_service/tests/it/token.rs; secrets: target_service/tests/it/secrets.rs)"
cargo test --workspace

step "smoke test"
if [[ -f scripts/smoke.sh ]]; then
  bash scripts/smoke.sh
else
  echo "skipped: scripts/smoke.sh does not exist yet"
fi

step "schemathesis against both services' /openapi.json"
bash scripts/api-check.sh

step "status page in a headless browser"
bash scripts/browser-check.sh

step "docker compose config -q"
check_compose

step "promtool check config prometheus.yml"
check_prometheus

step "scripts/run-local.sh twice at once (scripts/run-local-check.sh)"
bash scripts/run-local-check.sh

step "every Grafana dashboard query against a real Prometheus (scripts/dashboard-check.sh)"
bash scripts/dashboard-check.sh

step "all checks passed"

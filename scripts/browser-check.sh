#!/usr/bin/env bash
# Usage: scripts/browser-check.sh — the status page in a headless Chromium:
# it renders, follows the live cursor, shows times relative with the UTC
# instant on hover, names the source and database with secrets masked, lists
# reasons by count without zeros, draws the throughput and lag charts from
# its polls, lists rejections once the admin token is typed in, and shows
# markup from the source as text, never as elements. Saves a screenshot of
# that scripted run to target/browser-check/status-page.png, or to
# SCREENSHOT. (The README's docs/status-page.png is of a real run instead:
# see docs/running.md.)
#
# Installs Debian's chromium when missing. Environment: TEST_DATABASE_URL
# (as for scripts/test.sh), CHROMIUM (the browser to use), SCREENSHOT.
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

work=target/browser-check

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

chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z $chromium ]]; then
  echo "browser-check: chromium not found; installing Debian's chromium package"
  apt_install chromium
  chromium=$(command -v chromium)
fi
ops_venv
cargo build --release -p target_service
pg_ensure_server browser-check "${TEST_DATABASE_URL:-}"
ops_database browser_check
rm -rf "$work"
mkdir -p "$work"
screenshot=${SCREENSHOT:-$work/status-page.png}
mkdir -p "$(dirname "$screenshot")"
"$OPS_PY" scripts/lib/browser_check.py "$PWD/target/release/target_service" "$OPS_DB_URL" \
  "$chromium" "$screenshot" "$PWD/$work"

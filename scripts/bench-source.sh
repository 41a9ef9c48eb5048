#!/usr/bin/env bash
# Usage: scripts/bench-source.sh — builds source_service (release) and prints one line per figure: preload start-up and RSS, paging rate, wrk load.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
WRK_SECONDS="${WRK_SECONDS:-10}"

work="$(mktemp -d)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    apt-get update -qq >/dev/null
    apt-get install -y -qq wrk >/dev/null
fi

cargo build --release -q -p source_service --bin source_service --example page_all
bin="$CARGO_TARGET_DIR/release/source_service"
page_all="$CARGO_TARGET_DIR/release/examples/page_all"

now_ns() { date +%s%N; }
rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# start NAME VAR=VALUE... : starts the service on a free port; sets $pid, $base
# and $started_ns, and waits until /healthz answers (setting $ready_ns).
start() {
    local name="$1"
    shift
    local log="$work/$name.log"
    started_ns="$(now_ns)"
    env SOURCE_ADDR=127.0.0.1:0 LOG_LEVEL=info "$@" "$bin" 2>"$log" &
    pid=$!
    pids+=("$pid")
    # The real port appears in the log ("listening on ...") at info level.
    local addr=""
    base=""
    local deadline=$((started_ns + 60 * 1000000000))
    while [ "$(now_ns)" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "$name exited early" >&2; exit 1; }
        addr="$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -n1)"
        if [ -n "$addr" ] && curl -fsS -o /dev/null "http://$addr/healthz" 2>/dev/null; then
            ready_ns="$(now_ns)"
            base="http://$addr"
            return
        fi
        sleep 0.005
    done
    echo "$name did not become healthy within 60 s" >&2
    exit 1
}

# stop: SIGTERM to the service started last; it must exit 0.
stop() {
    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    local kept=() p
    for p in "${pids[@]}"; do
        [ "$p" = "$pid" ] || kept+=("$p")
    done
    pids=("${kept[@]}")
    if [ "$status" -ne 0 ]; then
        echo "service exited with $status after SIGTERM" >&2
        exit 1
    fi
}

# 1. Start-up with a million preloaded changes.
start preload SOURCE_PRELOAD=1000000 SOURCE_SEED=1
ready_ms=$(((ready_ns - started_ns) / 1000000))
echo "preload 1000000: healthy after ${ready_ms} ms (target < 2000 ms), RSS $(rss_mib "$pid") MiB (target < 400 MiB)"

# 2. Paging the whole log over loopback.
echo "paging: $("$page_all" "$base" 10000) (target >= 300000 profiles/s)"
echo "paging: RSS after $(rss_mib "$pid") MiB"
stop

# 3. Fresh batches under wrk, with the log already at capacity.
start load SOURCE_PRELOAD=100000 SOURCE_LOG_CAPACITY=100000 SOURCE_SEED=2
rss_before="$(rss_mib "$pid")"
wrk -t2 -c32 -d"${WRK_SECONDS}s" --latency "$base/users/changes" >"$work/wrk.txt"
rss_after="$(rss_mib "$pid")"
# A second run shows whether memory keeps growing once the log is full.
wrk -t2 -c32 -d"${WRK_SECONDS}s" "$base/users/changes" >"$work/wrk2.txt"
rss_again="$(rss_mib "$pid")"
rps2="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$work/wrk2.txt")"
rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$work/wrk.txt")"
p99="$(awk '$1 == "99%" { print $2 }' "$work/wrk.txt")"
non2xx="$(awk '/Non-2xx/ { print $NF }' "$work/wrk.txt")"
socket="$(sed -n 's/^ *Socket errors: //p' "$work/wrk.txt")"
echo "wrk -t2 -c32 -d${WRK_SECONDS}s GET /users/changes: ${rps} req/s (target >= 30000), p99 ${p99} (target < 20ms), non-2xx ${non2xx:-0}, socket errors ${socket:-none}"
echo "wrk: RSS before ${rss_before} MiB, after ${rss_after} MiB, after a second run (${rps2} req/s) ${rss_again} MiB (log capacity 100000, full before the runs)"
stop

# shellcheck shell=bash disable=SC2034 # SVC_* are results for the caller
# Sourced helper of scripts/smoke.sh and scripts/faults.sh: start the two
# services on free ports, talk to them, and stop them. Functions only; it
# changes no shell options. Needs curl.
#
#   svc_start NAME LOG DIR VAR=VALUE... -- PROGRAM
#       Starts PROGRAM in the background with the given environment, its
#       working directory DIR (so no stray .env is read) and its output in
#       LOG. Sets SVC_PID and remembers the process for svc_stop_all.
#   svc_listen_addr NAME PID LOG PATTERN [SECS]
#       Waits until LOG has a line with PATTERN followed by http://ADDR (the
#       services log the address they bound, so a port of 0 picks a free
#       one) and sets SVC_ADDR=ADDR.
#   svc_running PID                      true while the process lives
#   svc_stop NAME PID SECS               SIGTERM, then waits up to SECS;
#                                        sets SVC_STATUS (exit status, or
#                                        "timeout") and SVC_SECS (seconds taken)
#   svc_kill PID                         SIGKILL and reap
#   svc_stop_all                         stops everything svc_start started
#   http_code URL [OUT]                  the status code (000 when no answer)
#   http_get URL                         the body of a 2xx answer, else fails
#   metric_value TEXT NAME               a sample's value from Prometheus text
#   now_secs                             the time, in seconds with decimals
#   show_log LOG [LINES]                 the end of a log, indented, on stderr

SVC_PIDS=()
SVC_NAMES=()

svc_start() {
  local name=$1 log=$2 dir=$3
  shift 3
  local envs=()
  while [[ $# -gt 0 && $1 != -- ]]; do
    envs+=("$1")
    shift
  done
  shift
  mkdir -p "$dir"
  (cd "$dir" && exec env "${envs[@]}" "$@") >>"$log" 2>&1 &
  SVC_PID=$!
  SVC_PIDS+=("$SVC_PID")
  SVC_NAMES+=("$name")
}

svc_running() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  # A child that exited but was not reaped yet is a zombie: not running.
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [[ $state != Z ]]
}

svc_listen_addr() {
  local name=$1 pid=$2 log=$3 pattern=$4 secs=${5:-60} deadline addr
  deadline=$(($(date +%s) + secs))
  SVC_ADDR=""
  while :; do
    addr=$(sed -n "s#.*$pattern http://\([0-9.:]*\).*#\1#p" "$log" | head -n 1)
    if [[ -n $addr ]]; then
      SVC_ADDR=$addr
      return 0
    fi
    if ! svc_running "$pid"; then
      echo "$name exited during start-up; the end of $log:" >&2
      show_log "$log"
      return 1
    fi
    if [[ $(date +%s) -ge $deadline ]]; then
      echo "$name did not log its address within ${secs}s; the end of $log:" >&2
      show_log "$log"
      return 1
    fi
    sleep 0.05
  done
}

svc_stop() {
  local name=$1 pid=$2 secs=$3 start status=0
  start=$(now_secs)
  kill -TERM "$pid" 2>/dev/null || true
  while svc_running "$pid"; do
    if awk -v s="$start" -v n="$(now_secs)" -v l="$secs" 'BEGIN { exit !(n - s > l) }'; then
      SVC_STATUS=timeout
      SVC_SECS=$(awk -v s="$start" -v n="$(now_secs)" 'BEGIN { printf "%.2f", n - s }')
      echo "$name (pid $pid) still runs ${secs}s after SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.02
  done
  wait "$pid" 2>/dev/null || status=$?
  SVC_STATUS=$status
  SVC_SECS=$(awk -v s="$start" -v n="$(now_secs)" 'BEGIN { printf "%.2f", n - s }')
}

svc_kill() {
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

svc_stop_all() {
  local i pid
  for i in "${!SVC_PIDS[@]}"; do
    pid=${SVC_PIDS[$i]}
    if svc_running "$pid"; then
      kill -CONT "$pid" 2>/dev/null || true
      svc_stop "${SVC_NAMES[$i]}" "$pid" 15 >/dev/null 2>&1 || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  SVC_PIDS=()
  SVC_NAMES=()
}

http_code() {
  curl -sS -o "${2:-/dev/null}" -w '%{http_code}' --max-time 5 "$1" 2>/dev/null || true
}

http_get() {
  curl -fsS --max-time 10 "$1"
}

metric_value() {
  awk -v name="$2" '$1 == name { print $2; found = 1; exit } END { exit !found }' <<<"$1"
}

now_secs() {
  echo "${EPOCHREALTIME/,/.}"
}

show_log() {
  local log=$1 lines=${2:-25}
  if [[ -f $log ]]; then
    echo "  --- last $lines lines of $log" >&2
    tail -n "$lines" "$log" | sed 's/^/  | /' >&2
  fi
}

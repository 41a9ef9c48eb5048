# shellcheck shell=bash
# Sourced helper: find or start the PostgreSQL server that tests, drills and
# local runs use. It defines functions only and changes no shell options.
#
#   pg_ensure_server NAME [URL]
#       Exports PG_ADMIN_URL: a URL to a maintenance database on a server where
#       the caller may create and drop databases. In order of preference:
#         1. URL, when given and not empty (the caller's TEST_DATABASE_URL or
#            the server of its DATABASE_URL); it must answer within
#            PG_WAIT_SECS (30) seconds;
#         2. a server at 127.0.0.1:5432 that lets user postgres in without a
#            password;
#         3. a throwaway cluster, as pg_start_throwaway NAME.
#       PG_FORCE_THROWAWAY=1 skips 1 and 2.
#
#   pg_start_throwaway NAME
#       Always starts a fresh throwaway cluster under target/pg-NAME/ on a free
#       port: trust auth, listen_addresses=127.0.0.1, its socket directory
#       inside it, fsync off (commits stay synchronous, so a killed server
#       keeps every acknowledged commit). Installs Debian's `postgresql`
#       package when initdb is missing. Exports PG_ADMIN_URL, PG_THROWAWAY_DIR,
#       PG_THROWAWAY_DATA, PG_THROWAWAY_LOG and PG_THROWAWAY_PORT. A cluster of
#       the same NAME left behind by an earlier run that was killed is stopped
#       and removed first; one whose run still lives is never touched (this
#       run's cluster is then under target/pg-NAME.<pid>/).
#   pg_throwaway_stop_server [MODE]   stop it, keep its data (MODE: smart,
#                                     fast (default) or immediate, a crash)
#   pg_throwaway_start_server         start it again, same port and data
#   pg_throwaway_restart_server [MODE]
#   pg_stop_throwaway                 stop it and remove it; does nothing when
#                                     none was started, never fails. Callers
#                                     install it as an EXIT trap.
#
#   pg_start_standby NAME
#       Starts a streaming standby of the throwaway cluster under
#       target/pg-NAME/ on a free port: pg_basebackup -R (asynchronous
#       replication, through a replication slot) as the cluster's owner, then
#       waits until it streams. Exports PG_STANDBY_DIR, PG_STANDBY_DATA,
#       PG_STANDBY_LOG and PG_STANDBY_PORT. A standby of the same NAME left
#       behind by a killed run is stopped and removed first.
#   pg_standby_stop_streaming         the standby stops receiving WAL;
#                                     returns once its WAL receiver is
#                                     gone. From then on it lags, as
#                                     asynchronous replication may.
#   pg_promote_standby                promote it; returns once it accepts
#                                     writes
#   pg_stop_standby                   stop it (immediately: its data goes
#                                     anyway) and remove it; does nothing
#                                     when none was started, never fails
#
#   pg_is_up URL                      true when URL accepts `select 1`;
#                                     psql's last error is in PG_LAST_ERROR
#   pg_url_with_db URL DB             URL with its database replaced by DB
#   pg_url_db URL                     the database part of URL
#   pg_redact_url URL                 URL with its password masked, for logs
#   pg_url_without_password URL      URL with no password (psql then asks
#                                     for it, or reads PGPASSWORD/~/.pgpass)
#   pg_shell_quote TEXT               TEXT single-quoted for a shell
#   pg_create_database ADMIN_URL DB   create DB unless it exists
#   pg_drop_database ADMIN_URL DB     end DB's sessions and drop it, if it
#                                     exists
#
# initdb refuses to run as root, so as root the cluster belongs to the
# `postgres` user (created when missing); as anyone else it belongs to the
# caller.

PG_REPO_ROOT=${PG_REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PG_LOCAL_URL=postgres://postgres@127.0.0.1:5432/postgres

pg__log() {
  echo "pg: $*" >&2
}

# Puts the newest /usr/lib/postgresql/N/bin on PATH when initdb or pg_ctl is
# not already there: Debian keeps the server programs off PATH.
pg__add_bin_path() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  local bin
  bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [[ -x $bin/initdb ]]; then
    PATH=$bin:$PATH
    export PATH
  fi
}

# Makes initdb, pg_ctl and psql available, installing them when missing.
pg_ensure_binaries() {
  pg__add_bin_path
  if ! command -v initdb >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    pg__log "PostgreSQL programs not found; installing Debian's postgresql package"
    # shellcheck source=scripts/lib/apt.sh
    source "$PG_REPO_ROOT/scripts/lib/apt.sh"
    apt_install postgresql postgresql-client || {
      pg__log "could not install postgresql; install it, or set a database URL"
      return 1
    }
    pg__add_bin_path
  fi
  command -v initdb >/dev/null 2>&1 || {
    pg__log "initdb still not found after installing postgresql"
    return 1
  }
}

# Runs a command as the owner of throwaway clusters, from / so that a working
# directory the postgres user cannot enter does not matter.
pg__as_owner() {
  if [[ $EUID -ne 0 ]]; then
    (cd / && "$@")
    return
  fi
  if ! id -u postgres >/dev/null 2>&1; then
    pg__log "creating system user postgres to own the throwaway cluster"
    useradd --system --user-group --home-dir /var/lib/postgresql \
      --no-create-home --shell /bin/sh postgres || return 1
  fi
  if command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")")
  fi
}

pg__port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg__free_port() {
  local port _
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 30000))
    if ! pg__port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  pg__log "no free port found"
  return 1
}

# Stops whatever cluster runs in a throwaway directory and removes it.
pg__discard_dir() {
  local dir=$1 data elsewhere="" pid
  [[ -d $dir ]] || return 0
  data=$dir/data
  if [[ -f $dir/elsewhere ]]; then
    elsewhere=$(cat "$dir/elsewhere")
    data=$elsewhere/data
  fi
  if [[ -f $data/postmaster.pid ]]; then
    pg__as_owner pg_ctl -D "$data" -s -w -t 30 -m fast stop >/dev/null 2>&1 ||
      pg__as_owner pg_ctl -D "$data" -s -w -t 10 -m immediate stop >/dev/null 2>&1 || true
    if [[ -f $data/postmaster.pid ]]; then
      pid=$(head -n 1 "$data/postmaster.pid")
      if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]]; then
        pg__log "killing postmaster $pid that would not stop"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  fi
  if [[ -n $elsewhere ]]; then
    rm -rf "$elsewhere"
  fi
  rm -rf "$dir"
}

# "PID STARTTIME" of a process (the start time tells a reused pid apart).
pg__process_id() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # Past the command name, which may hold spaces, the start time is field 20.
  echo "$1 $(awk '{print $20}' <<<"${stat##*) }")"
}

# True when the run that created throwaway directory DIR still lives and is
# not this one. A directory without an owner file (from an older pg.sh)
# counts as in use while its postmaster is alive.
pg__dir_in_use_elsewhere() {
  local dir=$1 owner pid data=$1/data
  if [[ -f $dir/owner ]]; then
    owner=$(cat "$dir/owner")
    [[ $owner != "$(pg__process_id $$)" ]] || return 1
    [[ $(pg__process_id "${owner%% *}" 2>/dev/null) == "$owner" ]]
    return
  fi
  [[ -f $dir/elsewhere ]] && data=$(cat "$dir/elsewhere")/data
  pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]]
}

# Removes the clusters under BASE and BASE.<pid> that runs which are gone
# left behind, then makes this run's directory: BASE, or BASE.<pid> when
# another live run holds BASE. Prints it; the owner file inside names this
# run, so that no other run removes it while this one lives.
pg__claim_dir() {
  local base=$1 dir
  for dir in "$base" "$base".[0-9]*; do
    [[ -d $dir ]] || continue
    if pg__dir_in_use_elsewhere "$dir"; then
      pg__log "$dir belongs to a run that still lives; leaving it alone"
    else
      pg__discard_dir "$dir"
    fi
  done
  dir=$base
  [[ ! -d $dir ]] || dir=$base.$$
  mkdir -p "$dir" || return 1
  pg__process_id $$ >"$dir/owner" || return 1
  echo "$dir"
}

# Makes this run's directory for a cluster, target/pg-NAME/ (or
# target/pg-NAME.<pid> while another live run holds that one; see
# pg__claim_dir), and sets PG__DIR to it and PG__DATA to where the
# cluster's data directory goes (not created yet; its parent belongs to the
# cluster's owner).
pg__make_dir() {
  local name=$1 dir data
  dir=$(pg__claim_dir "$PG_REPO_ROOT/target/pg-$name") || return 1
  data=$dir/data
  if [[ $EUID -eq 0 ]]; then
    pg__as_owner true || return 1
    chown postgres: "$dir" || return 1
    if ! pg__as_owner test -w "$dir"; then
      # A parent directory (often /root) is closed to the postgres user: keep
      # the cluster in /tmp and leave a pointer to it for cleanup.
      local other
      other=$(mktemp -d "/tmp/pg-$name.XXXXXX") || return 1
      chown postgres: "$other" || return 1
      chown root: "$dir"
      echo "$other" >"$dir/elsewhere"
      data=$other/data
      pg__log "postgres cannot reach $dir; the cluster lives in $other"
    fi
  fi
  PG__DIR=$dir PG__DATA=$data
}

# The socket directory for a cluster whose data lives in DATA: beside it,
# or empty (TCP only) when the path would pass the ~107 bytes a Unix
# socket's path may have.
pg__socket_dir() {
  local sock
  sock=$(dirname "$1")/run
  if [[ $((${#sock} + 20)) -gt 100 ]]; then
    sock=""
  fi
  echo "$sock"
}

pg_start_throwaway() {
  local name=${1:-default} dir data sock port log attempt
  pg_ensure_binaries || return 1
  pg__make_dir "$name" || return 1
  dir=$PG__DIR data=$PG__DATA
  log=$(dirname "$data")/postgres.log
  sock=$(pg__socket_dir "$data")
  pg__log "initdb $data"
  pg__as_owner initdb -D "$data" -U postgres --auth=trust --no-locale -E UTF8 \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    pg__log "initdb failed"
    return 1
  }
  if [[ -n $sock ]]; then
    pg__as_owner mkdir -p "$sock" || return 1
  fi
  for attempt in 1 2 3; do
    port=$(pg__free_port) || return 1
    # shellcheck disable=SC2016 # $1 is for the inner sh
    pg__as_owner sh -c 'cat >>"$1"' sh "$data/postgresql.conf" <<EOF || return 1

# throwaway cluster for tests (attempt $attempt). fsync=off only risks data
# when the machine itself crashes; synchronous_commit stays on because drills
# kill the server and count on every acknowledged commit.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 200
fsync = off
full_page_writes = off
EOF
    export PG_THROWAWAY_DIR=$dir PG_THROWAWAY_DATA=$data PG_THROWAWAY_LOG=$log
    export PG_THROWAWAY_PORT=$port
    if pg_throwaway_start_server; then
      export PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
      pg__log "throwaway cluster up at 127.0.0.1:$port (data $data, log $log)"
      return 0
    fi
    pg__log "start on port $port failed (attempt $attempt)"
  done
  return 1
}

pg_throwaway_start_server() {
  [[ -n ${PG_THROWAWAY_DATA:-} ]] || {
    pg__log "no throwaway cluster was started"
    return 1
  }
  if ! pg__as_owner pg_ctl -D "$PG_THROWAWAY_DATA" -l "$PG_THROWAWAY_LOG" -s -w -t 60 start; then
    tail -n 20 "$PG_THROWAWAY_LOG" >&2 || true
    return 1
  fi
}

pg_throwaway_stop_server() {
  local mode=${1:-fast}
  [[ -n ${PG_THROWAWAY_DATA:-} ]] || {
    pg__log "no throwaway cluster was started"
    return 1
  }
  pg__as_owner pg_ctl -D "$PG_THROWAWAY_DATA" -s -w -t 60 -m "$mode" stop
}

pg_throwaway_restart_server() {
  pg_throwaway_stop_server "${1:-fast}" && pg_throwaway_start_server
}

pg_stop_throwaway() {
  if [[ -n ${PG_THROWAWAY_DIR:-} ]]; then
    pg__log "stopping and removing throwaway cluster $PG_THROWAWAY_DIR"
    pg__discard_dir "$PG_THROWAWAY_DIR" || true
    unset PG_THROWAWAY_DIR PG_THROWAWAY_DATA PG_THROWAWAY_LOG PG_THROWAWAY_PORT
  fi
  return 0
}

pg_start_standby() {
  local name=${1:-standby} data log sock port attempt slot
  [[ -n ${PG_THROWAWAY_PORT:-} ]] || {
    pg__log "no throwaway cluster was started to stand by for"
    return 1
  }
  pg__make_dir "$name" || return 1
  data=$PG__DATA
  log=$(dirname "$data")/postgres.log
  sock=$(pg__socket_dir "$data")
  # Set before anything can fail, so that pg_stop_standby removes it all.
  export PG_STANDBY_DIR=$PG__DIR PG_STANDBY_DATA=$data PG_STANDBY_LOG=$log
  # A slot keeps on the primary every WAL segment the standby has not
  # received yet, however far behind it falls.
  slot=${name//[^a-zA-Z0-9_]/_}
  slot=${slot,,}
  pg__log "pg_basebackup -R of 127.0.0.1:$PG_THROWAWAY_PORT into $data"
  pg__as_owner pg_basebackup -h 127.0.0.1 -p "$PG_THROWAWAY_PORT" -U postgres -w \
    -D "$data" -R -X stream -c fast --create-slot --slot="$slot" \
    >"$PG_STANDBY_DIR/basebackup.log" 2>&1 || {
    cat "$PG_STANDBY_DIR/basebackup.log" >&2
    pg__log "pg_basebackup failed"
    return 1
  }
  if [[ -n $sock ]]; then
    pg__as_owner mkdir -p "$sock" || return 1
  fi
  for attempt in 1 2 3; do
    port=$(pg__free_port) || return 1
    # The primary's settings came with the backup; these come after them,
    # so they win.
    # shellcheck disable=SC2016 # $1 is for the inner sh
    pg__as_owner sh -c 'cat >>"$1"' sh "$data/postgresql.conf" <<EOF || return 1

# streaming standby of 127.0.0.1:$PG_THROWAWAY_PORT (attempt $attempt)
port = $port
unix_socket_directories = '$sock'
EOF
    export PG_STANDBY_PORT=$port
    if pg__as_owner pg_ctl -D "$data" -l "$log" -s -w -t 60 start; then
      pg__wait_streaming "postgres://postgres@127.0.0.1:$port/postgres" || return 1
      pg__log "standby up at 127.0.0.1:$port, streaming from 127.0.0.1:$PG_THROWAWAY_PORT (data $data, log $log)"
      return 0
    fi
    tail -n 20 "$log" >&2 || true
    pg__log "standby start on port $port failed (attempt $attempt)"
  done
  return 1
}

# Waits up to 30 s until the standby at URL receives WAL from its primary.
pg__wait_streaming() {
  local url=$1 tries=0 state
  while :; do
    state=$(psql "$url" -w -X -q -t -A -c 'SELECT status FROM pg_stat_wal_receiver' 2>/dev/null) || true
    [[ $state == streaming ]] && return 0
    if [[ $tries -ge 300 ]]; then
      pg__log "the standby at $url does not stream after 30s (WAL receiver: ${state:-none}); see $PG_STANDBY_LOG"
      return 1
    fi
    sleep 0.1
    tries=$((tries + 1))
  done
}

pg_standby_stop_streaming() {
  local url tries=0 state
  [[ -n ${PG_STANDBY_PORT:-} ]] || {
    pg__log "no standby was started"
    return 1
  }
  url="postgres://postgres@127.0.0.1:$PG_STANDBY_PORT/postgres"
  # Without primary_conninfo the WAL receiver stops (a reload is enough).
  psql "$url" -w -X -q -v ON_ERROR_STOP=1 -c "ALTER SYSTEM SET primary_conninfo = ''" \
    -c 'SELECT pg_reload_conf()' >/dev/null || return 1
  while :; do
    state=$(psql "$url" -w -X -q -t -A -c 'SELECT count(*) FROM pg_stat_wal_receiver' 2>/dev/null) || true
    [[ $state == 0 ]] && return 0
    if [[ $tries -ge 300 ]]; then
      pg__log "the standby at $url still receives WAL 30s after primary_conninfo was emptied; see $PG_STANDBY_LOG"
      return 1
    fi
    sleep 0.1
    tries=$((tries + 1))
  done
}

pg_promote_standby() {
  [[ -n ${PG_STANDBY_DATA:-} ]] || {
    pg__log "no standby was started"
    return 1
  }
  pg__as_owner pg_ctl -D "$PG_STANDBY_DATA" -s -w -t 60 promote
}

pg_stop_standby() {
  if [[ -n ${PG_STANDBY_DIR:-} ]]; then
    pg__log "stopping and removing standby $PG_STANDBY_DIR"
    # No shutdown checkpoint to wait for: the data is removed next.
    pg__as_owner pg_ctl -D "$PG_STANDBY_DATA" -s -w -t 30 -m immediate stop >/dev/null 2>&1 || true
    pg__discard_dir "$PG_STANDBY_DIR" || true
    unset PG_STANDBY_DIR PG_STANDBY_DATA PG_STANDBY_LOG PG_STANDBY_PORT
  fi
  return 0
}

pg_is_up() {
  local out
  if out=$(PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-3} psql "$1" -w -X -q -t -A -c 'select 1' 2>&1 >/dev/null); then
    PG_LAST_ERROR=""
    return 0
  fi
  PG_LAST_ERROR=$(head -n 3 <<<"$out" | tr '\n\t' '  ' | sed 's/  */ /g; s/ *$//')
  return 1
}

# True when psql's error means the server answered and refused: waiting
# will not change a wrong role, password, database or pg_hba.conf rule.
pg__refused() {
  grep -qiE 'does not exist|password authentication failed|no pg_hba\.conf entry|authentication failed|permission denied|no password supplied|certificate|SSL' <<<"$1"
}

# Masks the password of every URL in the text, up to the authority's last
# `@` (so a password with an unencoded `@` is masked whole).
pg_redact_url() {
  sed -E 's#(://[^:/@[:space:]]*):[^/[:space:]]*@#\1:***@#g' <<<"$1"
}

pg_url_without_password() {
  sed -E 's#(://[^:/@[:space:]]*):[^/[:space:]]*@#\1@#' <<<"$1"
}

pg_shell_quote() {
  local quote="'" escaped="'\\''"
  printf "'%s'" "${1//$quote/$escaped}"
}

pg_url_with_db() {
  local re='^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$'
  if [[ $1 =~ $re ]]; then
    echo "${BASH_REMATCH[1]}/$2${BASH_REMATCH[4]}"
  else
    pg__log "not a postgres:// URL: $(pg_redact_url "$1")"
    return 1
  fi
}

pg_url_db() {
  local re='^postgres(ql)?://[^/?]*/([^?]+)'
  if [[ $1 =~ $re ]]; then
    echo "${BASH_REMATCH[2]}"
  else
    return 1
  fi
}

pg_create_database() {
  local admin=$1 db=$2
  psql "$admin" -w -X -q -t -A -v ON_ERROR_STOP=1 -v db="$db" >/dev/null <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
}

pg_drop_database() {
  local admin=$1 db=$2
  psql "$admin" -w -X -q -v ON_ERROR_STOP=1 -v db="$db" >/dev/null 2>&1 <<'SQL'
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :'db';
SELECT format('DROP DATABASE IF EXISTS %I', :'db') \gexec
SQL
}

pg_ensure_server() {
  local name=${1:-default} url=${2:-} waited=0 wait=${PG_WAIT_SECS:-30}
  if [[ ${PG_FORCE_THROWAWAY:-0} == 1 ]]; then
    pg__log "PG_FORCE_THROWAWAY=1: not looking for a running server"
    pg_start_throwaway "$name"
    return
  fi
  if [[ -n $url ]]; then
    if command -v psql >/dev/null 2>&1; then
      until pg_is_up "$url"; do
        if pg__refused "$PG_LAST_ERROR"; then
          pg__log "$(pg_redact_url "$url") refuses the connection: $(pg_redact_url "$PG_LAST_ERROR")"
          return 1
        fi
        if [[ $waited -ge $wait ]]; then
          pg__log "$(pg_redact_url "$url") does not answer after ${wait}s: $(pg_redact_url "$PG_LAST_ERROR")"
          return 1
        fi
        sleep 1
        waited=$((waited + 1))
      done
    fi
    export PG_ADMIN_URL=$url
    pg__log "using the given server: $(pg_redact_url "$url")"
    return 0
  fi
  if ! command -v psql >/dev/null 2>&1; then
    pg_ensure_binaries || return 1
  fi
  if pg_is_up "$PG_LOCAL_URL"; then
    export PG_ADMIN_URL=$PG_LOCAL_URL
    pg__log "using the server that answers at 127.0.0.1:5432"
    return 0
  fi
  pg__log "no server answers at 127.0.0.1:5432 as user postgres"
  pg_start_throwaway "$name"
}

# shellcheck shell=bash disable=SC2034 # OPS_* are results for the caller
# Sourced helper of scripts/api-check.sh and scripts/browser-check.sh: a
# Python virtualenv with pinned tools under target/, and a database of the
# caller's own that is dropped on exit. Needs pg.sh and svc.sh sourced first.
#
#   ops_venv
#       Creates target/ops-venv when missing and installs the pinned
#       packages into it (once); sets OPS_PY to its python.
#   ops_database NAME
#       Creates database NAME_<time>_<pid> on $PG_ADMIN_URL; sets OPS_DB and
#       OPS_DB_URL. ops_cleanup drops it.
#   ops_cleanup
#       Stops the services svc_start started and drops the database.

OPS_VENV_PACKAGES=("schemathesis==4.32.5" "websocket-client==1.9.2")
OPS_DB=""

ops_venv() {
  local venv=target/ops-venv stamp
  stamp="$venv/.installed-$(printf '%s ' "${OPS_VENV_PACKAGES[@]}" | md5sum | cut -c1-12)"
  if [[ ! -e $stamp ]]; then
    echo "ops: installing ${OPS_VENV_PACKAGES[*]} into $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt_install python3-venv && python3 -m venv "$venv" || return 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${OPS_VENV_PACKAGES[@]}" || return 1
    touch "$stamp"
  fi
  OPS_PY=$PWD/$venv/bin/python
}

ops_database() {
  OPS_DB=$1_$(date +%s)_$$
  pg_create_database "$PG_ADMIN_URL" "$OPS_DB" || return 1
  OPS_DB_URL=$(pg_url_with_db "$PG_ADMIN_URL" "$OPS_DB")
}

# shellcheck disable=SC2317 # reached through the caller's EXIT trap
ops_cleanup() {
  svc_stop_all
  if [[ -n $OPS_DB && -z ${PG_THROWAWAY_DIR:-} ]]; then
    pg_drop_database "$PG_ADMIN_URL" "$OPS_DB" ||
      echo "ops: could not drop database $OPS_DB" >&2
  fi
  OPS_DB=""
}

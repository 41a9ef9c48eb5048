# shellcheck shell=bash
# Sourced helper: install a missing tool from Debian's (or Ubuntu's) packages.
#
#   apt_install PKG...
#       Installs the packages with apt-get, non-interactively, and returns
#       non-zero when that is impossible (no apt-get, not root and no
#       password-less sudo, no network). `apt-get update` runs at most once
#       per run: APT_UPDATED=1 is exported after it, so scripts started from
#       this one skip it.
#
# Packages such as postgresql and prometheus start a daemon of their own when
# installed. The scripts start exactly the servers they need, on ports they
# choose, so a temporary policy-rc.d keeps those daemons from starting.
# Nothing here changes shell options of the caller.

apt_install() {
  local sudo=() policy=/usr/sbin/policy-rc.d made_policy=0 rc=0 log
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt: apt-get not found; install $* by hand" >&2
    return 1
  fi
  if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "apt: not root and no password-less sudo; install $* by hand" >&2
      return 1
    fi
  fi
  if [[ ! -e $policy ]]; then
    if printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null &&
      "${sudo[@]}" chmod 755 "$policy"; then
      made_policy=1
    fi
  fi
  if [[ ${APT_UPDATED:-0} != 1 ]]; then
    echo "apt: apt-get update" >&2
    if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
      export APT_UPDATED=1
    else
      rc=1
    fi
  fi
  if [[ $rc -eq 0 ]]; then
    echo "apt: apt-get install $*" >&2
    log=$(mktemp)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
      apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
      tail -n 30 "$log" >&2
    fi
    rm -f "$log"
  fi
  if [[ $made_policy -eq 1 ]]; then
    "${sudo[@]}" rm -f "$policy"
  fi
  return "$rc"
}

#!/usr/bin/env bash
# Usage: scripts/image-check.sh — builds both Docker images for real, starts them against PostgreSQL and waits for the target's /readyz.
set -euo pipefail

# Uses the Docker engine that answers, else starts one of its own (Debian's
# docker.io, installed when missing) with its data under target/image-check/.
# With no image registry to pull from, the base images the Dockerfiles name
# are made here when missing: debian:bookworm-slim from Debian's packages
# (debootstrap), rust:<version>-bookworm from the same plus this machine's
# Rust toolchain; both trust this machine's own certificate authorities.
# The containers run with the host's network against the PostgreSQL that
# scripts/lib/pg.sh finds or starts. Builds are cached in the engine: a
# second run builds nothing that did not change.
#
# A step this machine cannot run (not root, no apt, no engine starts) prints
# one line `skipped: <step>: <why>` and the script exits 0; a build or a
# container that fails exits 1. Environment: TEST_DATABASE_URL,
# PG_FORCE_THROWAWAY=1 (as for scripts/test.sh), IMAGE_CHECK_READY_SECS
# (how long the containers may take to become ready, default 60),
# IMAGE_CHECK_MIRROR (Debian mirror, default http://deb.debian.org/debian).

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh

# A throwaway cluster of the calling script is not this script's to stop.
unset PG_THROWAWAY_DIR PG_THROWAWAY_DATA PG_THROWAWAY_LOG PG_THROWAWAY_PORT

work=$repo/target/image-check
ready_secs=${IMAGE_CHECK_READY_SECS:-60}
source_image=profile-sync/source_service
target_image=profile-sync/target_service
docker_cmd=() dockerd_pid="" containers=() db="" started=$SECONDS

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local status=$? name
  trap - INT TERM HUP
  for name in "${containers[@]}"; do
    "${docker_cmd[@]}" rm -f "$name" >/dev/null 2>&1 || true
  done
  if [[ -n $db && -z ${PG_THROWAWAY_DIR:-} ]]; then
    pg_drop_database "$PG_ADMIN_URL" "$db" ||
      echo "image-check: could not drop database $db" >&2
  fi
  pg_stop_throwaway
  stop_dockerd
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

skip() {
  echo "skipped: $1: $2"
  exit 0
}

fail() {
  echo "image-check: FAIL: $*" >&2
  exit 1
}

# shellcheck disable=SC2317 # reached through cleanup
stop_dockerd() {
  local waited=0
  [[ -n $dockerd_pid ]] || return 0
  kill -TERM "$dockerd_pid" 2>/dev/null || true
  while kill -0 "$dockerd_pid" 2>/dev/null && [[ $waited -lt 300 ]]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL "$dockerd_pid" 2>/dev/null || true
  wait "$dockerd_pid" 2>/dev/null || true
  dockerd_pid=""
  # dockerd leaves its default network namespace mounted under exec-root.
  if grep -qF " $work/engine/exec/netns/default " /proc/mounts 2>/dev/null; then
    umount "$work/engine/exec/netns/default" 2>/dev/null || true
  fi
}

# A docker client that builds with BuildKit: one with the buildx plugin, or
# one older than 23 (whose classic `docker build` has BuildKit built in
# behind DOCKER_BUILDKIT=1). Sets docker_bin.
pick_client() {
  local candidate major
  for candidate in "$(command -v docker 2>/dev/null || true)" /usr/bin/docker; do
    [[ -x $candidate ]] || continue
    if "$candidate" buildx version >/dev/null 2>&1; then
      docker_bin=$candidate
      return 0
    fi
    major=$("$candidate" --version | sed -nE 's/^Docker version ([0-9]+)\..*/\1/p')
    if [[ -n $major && $major -lt 23 ]]; then
      docker_bin=$candidate
      return 0
    fi
  done
  return 1
}

# Starts dockerd with its socket and data under target/image-check/, with
# overlay2 and, when that does not start, the slower vfs driver. No bridge
# and no iptables rules: the containers use the host's network.
start_dockerd() {
  local driver log sock=$work/engine/docker.sock waited
  mkdir -p "$work/engine"
  for driver in overlay2 vfs; do
    log=$work/engine/dockerd-$driver.log
    setsid dockerd --iptables=false --ip-masq=false --bridge=none \
      --storage-driver="$driver" --host="unix://$sock" \
      --data-root="$work/engine/data-$driver" --exec-root="$work/engine/exec" \
      --pidfile="$work/engine/dockerd.pid" >"$log" 2>&1 &
    dockerd_pid=$!
    docker_cmd=("$docker_bin" -H "unix://$sock")
    for waited in $(seq 1 60); do
      if "${docker_cmd[@]}" info >/dev/null 2>&1; then
        echo "dockerd started (pid $dockerd_pid, storage driver $driver, after ${waited}x0.5s)"
        return 0
      fi
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.5
    done
    echo "dockerd with $driver did not start: $(grep -m 1 -iE 'level=(error|fatal)' "$log" || tail -n 1 "$log")"
    stop_dockerd
  done
  return 1
}

ensure_engine() {
  if ! pick_client || ! command -v dockerd >/dev/null 2>&1; then
    [[ $EUID -eq 0 ]] || skip "docker engine" "none runs, and starting one needs root"
    apt_install docker.io containerd >/dev/null ||
      skip "docker engine" "Debian's docker.io could not be installed"
    pick_client || skip "docker engine" "no docker client with BuildKit found"
  fi
  if "$docker_bin" info >/dev/null 2>&1; then
    docker_cmd=("$docker_bin")
    echo "using the running Docker engine ($("$docker_bin" info --format '{{.ServerVersion}}'))"
    return 0
  fi
  [[ $EUID -eq 0 ]] || skip "docker engine" "none runs, and starting one needs root"
  start_dockerd || skip "docker engine" "dockerd starts with neither overlay2 nor vfs here (see $work/engine/)"
}

image_present() {
  "${docker_cmd[@]}" image inspect "$1" >/dev/null 2>&1
}

# Debian bookworm, minimal, plus the packages given, in target/image-check/
# (kept, so that a second run downloads nothing). Prints the directory.
make_rootfs() {
  local name=$1 include=$2 dir=$work/rootfs-$1 mirror=${IMAGE_CHECK_MIRROR:-http://deb.debian.org/debian}
  if [[ -f $dir.done ]]; then
    echo "$dir"
    return 0
  fi
  rm -rf "$dir"
  mkdir -p "$work/debs"
  echo "debootstrap bookworm into $dir (${include:-minbase only})" >&2
  if ! debootstrap --variant=minbase ${include:+--include="$include"} \
    --cache-dir="$work/debs" bookworm "$dir" "$mirror" >"$work/debootstrap-$name.log" 2>&1; then
    tail -n 5 "$work/debootstrap-$name.log" >&2
    return 1
  fi
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  touch "$dir.done"
  echo "$dir"
}

# The machine's Rust toolchain into a rootfs, laid out as in the official
# rust images: toolchains under /usr/local/rustup, commands on PATH through
# /usr/local/cargo/bin, the registry in CARGO_HOME=/usr/local/cargo.
add_toolchain() {
  local dir=$1 sysroot name tool
  sysroot=$(rustc --print sysroot)
  name=$(basename "$sysroot")
  mkdir -p "$dir/usr/local/rustup/toolchains/$name" "$dir/usr/local/cargo/bin"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$dir/usr/local/rustup/toolchains/$name" -xf -
  for tool in cargo rustc rustdoc; do
    ln -sfn "../../rustup/toolchains/$name/bin/$tool" "$dir/usr/local/cargo/bin/$tool"
  done
}

# This machine's own certificate authorities (those under
# /usr/local/share/ca-certificates, such as an intercepting proxy's) into a
# rootfs, so that what is built in it trusts what this machine trusts:
# cargo's downloads from crates.io among them. Debian's ca-certificates adds
# them to the bundle it makes; a rootfs that has it gets this machine's
# bundle as well.
add_local_roots() {
  local dir=$1
  compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null || return 0
  mkdir -p "$dir/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
  if [[ -d $dir/etc/ssl/certs && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  fi
}

import_rootfs() {
  local dir=$1 tag=$2
  shift 2
  tar --numeric-owner -C "$dir" -cf - . | "${docker_cmd[@]}" import "$@" - "$tag" >/dev/null
}

# rust:VERSION-bookworm fits when this machine's rustc has VERSION as its
# prefix (rust:1-bookworm: any 1.x).
rust_tag_fits() {
  local want=$1 have
  have=$(rustc --version | awk '{print $2}')
  [[ $have == "$want" || $have == "$want".* ]]
}

make_base_image() {
  local tag=$1 dir version
  case $tag in
    debian:bookworm-slim)
      dir=$(make_rootfs slim "") || skip "base image $tag" "debootstrap failed (see $work/debootstrap-slim.log)"
      add_local_roots "$dir"
      import_rootfs "$dir" "$tag" --change 'CMD ["bash"]'
      ;;
    rust:*-bookworm)
      version=${tag#rust:}
      version=${version%-bookworm}
      command -v rustc >/dev/null 2>&1 || skip "base image $tag" "no Rust toolchain on this machine to put in it"
      rust_tag_fits "$version" ||
        fail "the Dockerfiles ask for $tag, but this machine has $(rustc --version); make them agree"
      dir=$(make_rootfs rust ca-certificates,gcc,libc6-dev,binutils) ||
        skip "base image $tag" "debootstrap failed (see $work/debootstrap-rust.log)"
      add_toolchain "$dir"
      add_local_roots "$dir"
      import_rootfs "$dir" "$tag" \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]'
      ;;
    *)
      fail "the Dockerfiles name the base image $tag, which this script cannot make from Debian's packages; teach make_base_image how"
      ;;
  esac
  echo "made base image $tag"
}

ensure_base_images() {
  local tag
  if ! command -v debootstrap >/dev/null 2>&1 && [[ $EUID -eq 0 ]]; then
    apt_install debootstrap >/dev/null || skip "base images" "Debian's debootstrap could not be installed"
  fi
  local tags
  tags=$(sed -nE 's/^FROM[[:space:]]+([^[:space:]]+).*/\1/p' source_service/Dockerfile target_service/Dockerfile | sort -u)
  while read -r tag; do
    if image_present "$tag"; then
      echo "base image $tag is present"
    else
      [[ $EUID -eq 0 ]] || skip "base image $tag" "it is missing, and debootstrap needs root to make it"
      make_base_image "$tag"
    fi
  done <<<"$tags"
}

build_image() {
  local dockerfile=$1 tag=$2 log=$work/build-${2##*/}.log from=$SECONDS
  echo "building $tag from $dockerfile (log $log)"
  if ! DOCKER_BUILDKIT=1 "${docker_cmd[@]}" build --network host --progress plain \
    -f "$dockerfile" -t "$tag" . >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "docker build -f $dockerfile failed"
  fi
  echo "built $tag in $((SECONDS - from))s ($("${docker_cmd[@]}" image inspect --format '{{.Size}}' "$tag") bytes)"
}

http_code() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# run_container NAME IMAGE VAR=VALUE...: detached, on the host's network.
run_container() {
  local name=$1 image=$2 args=()
  shift 2
  for pair in "$@"; do
    args+=(-e "$pair")
  done
  containers+=("$name")
  "${docker_cmd[@]}" run -d --name "$name" --network host "${args[@]}" "$image" >/dev/null
}

container_running() {
  [[ $("${docker_cmd[@]}" inspect --format '{{.State.Running}}' "$1" 2>/dev/null) == true ]]
}

show_container_log() {
  echo "  --- last lines of container $1" >&2
  "${docker_cmd[@]}" logs --tail 20 "$1" 2>&1 | sed 's/^/  | /' >&2
}

# Waits until URL answers 200 and the container's HEALTHCHECK says healthy.
wait_healthy() {
  local name=$1 url=$2 deadline=$((SECONDS + ready_secs)) code="" health=""
  while :; do
    container_running "$name" || {
      show_container_log "$name"
      fail "container $name exited during start-up"
    }
    code=$(http_code "$url")
    health=$("${docker_cmd[@]}" inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || true)
    if [[ $code == 200 && $health == healthy ]]; then
      echo "ok: $url answers 200 and container $name is healthy"
      return 0
    fi
    if [[ $SECONDS -ge $deadline ]]; then
      show_container_log "$name"
      fail "$url answered ${code:-nothing} and $name was ${health:-without health} after ${ready_secs}s"
    fi
    sleep 0.5
  done
}

run_images() {
  local source_port target_port db_url synced=0 deadline
  pg_ensure_server image-check "${TEST_DATABASE_URL:-}"
  db=image_check_$$
  pg_create_database "$PG_ADMIN_URL" "$db"
  db_url=$(pg_url_with_db "$PG_ADMIN_URL" "$db")
  source_port=$(pg__free_port)
  target_port=$(pg__free_port)
  run_container "profile-sync-check-source-$$" "$source_image" \
    "SOURCE_ADDR=127.0.0.1:$source_port" SOURCE_PRELOAD=200
  wait_healthy "profile-sync-check-source-$$" "http://127.0.0.1:$source_port/healthz"
  run_container "profile-sync-check-target-$$" "$target_image" \
    "DATABASE_URL=$db_url" "METRICS_ADDR=127.0.0.1:$target_port" SYNC_INTERVAL=1 \
    "SOURCE_SERVICE_URL=http://127.0.0.1:$source_port/users/changes"
  wait_healthy "profile-sync-check-target-$$" "http://127.0.0.1:$target_port/readyz"
  deadline=$((SECONDS + ready_secs))
  until [[ $synced -gt 0 ]]; do
    synced=$(psql "$db_url" -w -X -q -t -A -c 'SELECT count(*) FROM users' 2>/dev/null || echo 0)
    if [[ $synced -eq 0 && $SECONDS -ge $deadline ]]; then
      show_container_log "profile-sync-check-target-$$"
      fail "no row reached the users table within ${ready_secs}s"
    fi
    [[ $synced -gt 0 ]] || sleep 0.5
  done
  echo "ok: the target's container wrote $synced rows to users"
}

command -v apt-get >/dev/null 2>&1 || command -v dockerd >/dev/null 2>&1 ||
  skip "image check" "no apt-get to install Docker and debootstrap with"
mkdir -p "$work"
ensure_engine
ensure_base_images
build_image source_service/Dockerfile "$source_image"
build_image target_service/Dockerfile "$target_image"
run_images
echo "image check passed in $((SECONDS - started))s"

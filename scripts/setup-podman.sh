#!/usr/bin/env bash
# Makes image tasks runnable on this machine: installs podman (rootful, runc), sets what
# herd needs in containers.conf, and builds the tiny test image
# localhost/busybox:test from busybox-static (there is no image registry here).
# Idempotent; needs root. An existing containers.conf is kept: only what herd needs is
# added to it. Usage: scripts/setup-podman.sh [--config-only]
# (HERD_CONTAINERS_CONF names another config file, for tests.)
set -euo pipefail
conf="${HERD_CONTAINERS_CONF:-/etc/containers/containers.conf}"

# Sets KEY = VALUE in [SECTION] of $conf, unless KEY is set there already.
ensure() {
  local section=$1 key=$2 value=$3
  mkdir -p "$(dirname "$conf")"
  touch "$conf"
  if ! grep -q "^\[$section\]" "$conf"; then
    printf '\n[%s]\n%s = %s\n' "$section" "$key" "$value" >> "$conf"
  elif ! awk -v s="[$section]" -v k="$key" '
      $0 == s { inside = 1; next }
      /^\[/ { inside = 0 }
      inside && $1 == k { found = 1 }
      END { exit !found }' "$conf"; then
    sed -i "/^\[$section\]/a $key = $value" "$conf"
  fi
}
ensure containers default_ulimits '[]'
ensure engine runtime '"runc"'
[ "${1:-}" = "--config-only" ] && exit 0

export DEBIAN_FRONTEND=noninteractive
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || [ ! -x /bin/busybox ]; then
  apt-get update -qq
  apt-get install -y -qq podman runc busybox-static >/dev/null
fi
if ! podman image exists localhost/busybox:test; then
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  mkdir -p "$rootfs/bin"
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  for tool in sh echo sleep cat ls true false; do ln -s busybox "$rootfs/bin/$tool"; done
  tar -C "$rootfs" -cf "$rootfs.tar" .
  podman import "$rootfs.tar" localhost/busybox:test >/dev/null
  rm -f "$rootfs.tar"
fi
podman run --rm --cpus 1 --memory 64m localhost/busybox:test sh -c 'echo podman works'

#!/usr/bin/env bash
# Makes image tasks runnable on this machine: installs podman (rootful, runc), writes the
# containers.conf herd's DESIGN.md gives, and builds the tiny test image
# localhost/busybox:test from busybox-static (there is no image registry here).
# Idempotent; needs root. Usage: scripts/setup-podman.sh
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || [ ! -x /bin/busybox ]; then
  apt-get update -qq
  apt-get install -y -qq podman runc busybox-static >/dev/null
fi
mkdir -p /etc/containers
if ! grep -q 'runtime = "runc"' /etc/containers/containers.conf 2>/dev/null; then
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
CONF
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

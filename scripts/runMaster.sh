#!/usr/bin/env bash
# Builds herd (release) when needed and starts herd-master. Arguments pass through, e.g.
#   scripts/runMaster.sh --local-worker
#   scripts/runMaster.sh --listen 0.0.0.0:50051 --heartbeat-timeout 10s
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin herd-master --bin herd-worker --bin herdctl
exec "$target/release/herd-master" "$@"

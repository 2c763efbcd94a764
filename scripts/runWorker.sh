#!/usr/bin/env bash
# Builds herd (release) when needed and starts herd-worker. Arguments pass through, e.g.
#   scripts/runWorker.sh --master http://10.0.0.5:50051 --name gpu-box-1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
# Say what is happening: the first build takes a few minutes on a small machine.
if [ ! -x "$target/release/herd-worker" ]; then
  echo "herd: building the release binaries (the first build takes a few minutes; later starts only rebuild what changed)..." >&2
  cargo build --release --manifest-path "$root/Cargo.toml" --bin herd-worker
else
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin herd-worker
fi
exec "$target/release/herd-worker" "$@"

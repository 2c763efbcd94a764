#!/usr/bin/env bash
# Builds herd (release) when needed and starts herd-worker. Arguments pass through, e.g.
#   scripts/runWorker.sh --master http://10.0.0.5:50051 --name gpu-box-1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
# Say what is happening: the first build takes a few minutes on a small machine, and a
# rebuild after a change a minute or two; cargo shows its progress.
echo "herd: building the release binaries if anything changed (the first build takes a few minutes)..." >&2
cargo build --release --manifest-path "$root/Cargo.toml" --bin herd-worker
exec "$target/release/herd-worker" "$@"

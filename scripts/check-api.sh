#!/usr/bin/env bash
# The HTTP API against its own OpenAPI document: schemathesis (from PyPI, in a venv under
# target/) sends every operation requests the document allows and requests it forbids,
# with every check on: a request the document allows must not be refused for its input,
# one it forbids must be refused, answers and event streams must match their schemas. The
# master runs with no worker attached, so no fuzzed command ever runs. Used by CI.
#
#   scripts/check-api.sh             the fixed seed CI uses
#   scripts/check-api.sh --seed N    another one (any schemathesis flag may follow)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=target/schemathesis
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  echo "check-api: installing schemathesis $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$version"
fi
cargo build --quiet --bin herd-master

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc=$(free_port)
http=$(free_port)
data=$(mktemp -d)
token="check-api-token-$RANDOM$RANDOM"
HERD_TOKEN="$token" HERD_JOIN_TOKEN="check-api-join-$RANDOM$RANDOM" XDG_STATE_HOME="$data/state" \
  target/debug/herd-master --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
  --data-dir "$data/data" --no-repl >"$data/master.log" 2>&1 &
master=$!
trap 'kill "$master" 2>/dev/null; wait "$master" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break
  sleep 0.1
done

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--seed 137579936217682418783406087068077877112)
fi
"$venv/bin/schemathesis" run "http://127.0.0.1:$http/api/v1/openapi.json" \
  --checks all --max-examples 30 -H "Authorization: Bearer $token" --no-color "${args[@]}"

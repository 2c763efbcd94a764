#!/usr/bin/env bash
# CI: builds herd's Debian package, checks what it holds, installs it on this machine,
# and checks the installed programs, units, man pages and monitoring files:
#   - `dpkg-deb -c` lists the programs, units, configs, man pages and completions;
#   - `dpkg -i` installs it; `herd-master --version` runs from /usr/bin; the `herd` user
#     exists and may read /etc/herd/master.toml, which others may not;
#   - `systemd-analyze verify` passes on the installed units;
#   - the installed default config files are read (`--print-config` names them);
#   - `promtool check rules` / `test rules` on docs/monitoring, and `promtool check
#     metrics` on a live master's /metrics.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need() { command -v "$1" >/dev/null; }
if ! need systemd-analyze || ! need promtool || ! need man || ! need curl; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    systemd prometheus man-db curl >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version 3.8.0 --quiet
fi

cargo build --release --locked --bin herd-master --bin herd-worker --bin herdctl --bin herd-assets
target/release/herd-assets target/assets >/dev/null
deb="$(cargo deb --no-build --output target/debian 2>/dev/null | tail -1)"
version="$(target/release/herd-master --version | awk '{print $2}')"
case "$deb" in
  */herd_"${version}"_amd64.deb | */herd_"${version}"_arm64.deb) ;;
  *) echo "unexpected package file: $deb" >&2; exit 1 ;;
esac

contents="$(dpkg-deb -c "$deb")"
for path in ./usr/bin/herd-master ./usr/bin/herd-worker ./usr/bin/herdctl \
    ./lib/systemd/system/herd-master.service ./lib/systemd/system/herd-worker.service \
    ./etc/herd/master.toml ./etc/herd/worker.toml \
    ./usr/share/man/man1/herd-master.1 ./usr/share/man/man1/herd-worker.1 \
    ./usr/share/man/man1/herdctl.1 ./usr/share/bash-completion/completions/herdctl \
    ./usr/share/zsh/vendor-completions/_herdctl \
    ./usr/share/fish/vendor_completions.d/herdctl.fish \
    ./usr/share/doc/herd/monitoring/herd.rules.yml; do
  if ! grep -q " ${path}\(\.gz\)\?$" <<<"$contents"; then
    echo "$deb lacks $path; it holds:" >&2
    echo "$contents" >&2
    exit 1
  fi
done

DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null
/usr/bin/herd-master --version
/usr/bin/herd-worker --version
getent passwd herd >/dev/null
[ "$(stat -c '%U:%G %a' /etc/herd/master.toml)" = "root:herd 640" ]
[ "$(stat -c '%a' /etc/herd/worker.toml)" = "600" ]
su -s /bin/sh herd -c 'cat /etc/herd/master.toml' >/dev/null
systemd-analyze verify /lib/systemd/system/herd-master.service \
  /lib/systemd/system/herd-worker.service
man -w herd-master >/dev/null
# The installed default file is read (an empty one: every line is a comment).
/usr/bin/herd-master --print-config | grep -q '^# config file: /etc/herd/master.toml$'

promtool check rules docs/monitoring/herd.rules.yml
(cd docs/monitoring && promtool test rules herd.rules.test.yml)
data="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
/usr/bin/herd-master --listen 127.0.0.1:0 --http-listen off --no-repl --data-dir "$data" \
  --metrics-listen "127.0.0.1:$port" >"$data/log" 2>&1 &
master=$!
trap 'kill "$master" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/metrics" >"$data/metrics" && break
  sleep 0.1
done
promtool check metrics <"$data/metrics"
echo "package: $deb installed and checked"

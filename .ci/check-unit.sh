#!/usr/bin/env bash
# Checks the shipped systemd unit with systemd-analyze verify. The unit runs
# /usr/local/bin/xfer (where `cargo install --root /usr/local` puts it); the
# check points it at this checkout's release build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null; then
  apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
cargo build --release --locked -q
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s|/usr/local/bin/xfer|$PWD/target/release/xfer|" contrib/xfer-recv.service \
  > "$unit_dir/xfer-recv.service"
systemd-analyze verify "$unit_dir/xfer-recv.service"
echo "contrib/xfer-recv.service: systemd-analyze verify passed"

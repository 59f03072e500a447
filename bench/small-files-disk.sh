#!/usr/bin/env bash
# Many small files onto a real disk: xfer (encrypted) against the rsync
# daemon (alone, and followed by `sync` so that its files are as durable
# as xfer's), and optionally against another xfer build, alternating, with
# `sync` before each run, medians printed by the caller's eye.
#
#   bash bench/small-files-disk.sh                      # 10,000 x 4 KiB to /var/tmp, 5 rounds
#   bash bench/small-files-disk.sh --before OLD_BINARY  # also time another build
#   bash bench/small-files-disk.sh --files 2000 --rounds 3 --dir /some/disk
#
# Prints one line a round with each tool's seconds. Release build; needs
# rsync and python3; cleans up what it starts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
NEW="$here/target/release/xfer"
OLD=""
N=10000
ROUNDS=5
PARENT=/var/tmp
while [ $# -gt 0 ]; do
  case "$1" in
    --before) OLD=$2; shift 2 ;;
    --files) N=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --dir) PARENT=$2; shift 2 ;;
    *) echo "small-files-disk.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
(cd "$here" && cargo build --release --locked -q)
W=$(mktemp -d "$PARENT/xfer-small-files.XXXXXX")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/src/many" "$W/dst"
python3 - "$W/src/many" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(100):
    os.makedirs(os.path.join(root, f"d{d}"), exist_ok=True)
for i in range(n):
    with open(os.path.join(root, f"d{i % 100}", f"f{i}"), "wb") as f:
        f.write(os.urandom(4096))
PY
"$NEW" keygen --out "$W/key" >/dev/null 2>&1
source "$here/bench/ports.sh"
cat > "$W/rsyncd.conf" <<C
use chroot = no
pid file = $W/rsyncd.pid
[dst]
  path = $W/dst
  read only = no
  uid = root
  gid = root
C
rport=$(free_port)
rsync --daemon --no-detach --address=127.0.0.1 --port="$rport" --config="$W/rsyncd.conf" & pids+=($!)
wait_port "$rport"
# Each run writes into a directory of its own, and nothing is deleted until
# the end: on a journal-less ext4 (this VM's /var/tmp) the inode allocator
# skips every inode freed in the last 5 seconds (300 if not yet written
# back), one by one, so a run straight after deleting the last run's 10,000
# files spent most of its time in `recently_deleted` (perf), whichever tool
# it was.
fresh() { local d; d=$(mktemp -d "$W/dst/run.XXXXXX"); sync; echo "$d"; }
one_xfer() { # $1 = binary; prints seconds
  local into; into=$(fresh)
  local port; port=$(free_port)
  XFER_KEY_FILE=$W/key "$1" recv --port "$port" --bind 127.0.0.1 --dir "$into" --quiet & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(date +%s.%N)
  XFER_KEY_FILE=$W/key "$1" send "$W/src/many" "127.0.0.1:$port" --quiet
  wait "$r"
  [ "$(find "$into/many" -type f | wc -l)" = "$N" ] || { echo "small-files-disk: xfer left the wrong number of files" >&2; exit 1; }
  echo "$(date +%s.%N) - $t0" | bc -l
}
# $1 = "sync" to time rsync and then a `sync`: the rsync daemon makes
# nothing durable, and its writeback happens after it has finished; with
# the `sync` its files are as durable as xfer's when it reports success.
one_rsync() {
  local into; into=$(fresh)
  local t0; t0=$(date +%s.%N)
  rsync -a --whole-file "$W/src/many" "rsync://127.0.0.1:$rport/dst/$(basename "$into")/"
  [ "${1:-}" = sync ] && sync
  [ "$(find "$into/many" -type f | wc -l)" = "$N" ] || { echo "small-files-disk: rsync left the wrong number of files" >&2; exit 1; }
  echo "$(date +%s.%N) - $t0" | bc -l
}
echo "$N files of 4 KiB in 100 directories to $PARENT ($(df -T "$PARENT" | awk 'NR==2 {print $2}')), seconds:"
for round in $(seq 1 "$ROUNDS"); do
  line="round $round:"
  [ -n "$OLD" ] && line="$line before $(one_xfer "$OLD")"
  line="$line xfer $(one_xfer "$NEW") rsync $(one_rsync) rsync+sync $(one_rsync sync)"
  echo "$line"
done

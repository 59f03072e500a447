#!/usr/bin/env bash
# Where each side's cycles and system calls go for one 1 GiB transfer over
# loopback to /dev/shm: `perf record` on the sender and the receiver
# (encrypted, then --insecure), a `perf report` of each side's top symbols,
# and `strace -c -f` counts of the data path's system calls. The counts of
# copies in docs/PERFORMANCE.md ("Copies") are read from these.
#
#   bash bench/profile.sh [SIZE_MIB]      (default 1024)
#
# Needs perf (linux-perf) and strace; prints to stdout, keeps the raw data in
# a temporary directory it names at the end.
set -euo pipefail
SIZE_MIB=${1:-1024}
cd "$(dirname "$0")/.."
command -v perf >/dev/null || apt-get install -y -qq linux-perf >/dev/null
command -v strace >/dev/null || apt-get install -y -qq strace >/dev/null
command -v ss >/dev/null || apt-get install -y -qq iproute2 >/dev/null
cargo build --release --quiet
XFER=$PWD/target/release/xfer
work=$(mktemp -d /var/tmp/xfer-profile.XXXXXX)
dst=$(mktemp -d /dev/shm/xfer-profile.XXXXXX)
trap 'rm -rf "$dst"' EXIT
"$XFER" keygen --out "$work/key" >/dev/null
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$work/data.bin"
cat "$work/data.bin" > /dev/null

source bench/ports.sh   # (the working directory is the repository now)

# $1 = label, $2 = wrapper for each side ("perf" or "strace"), $3.. = extra flags
once() {
  local label=$1 tool=$2; shift 2
  local port; port=$(free_port)
  local wrap_r wrap_s
  if [ "$tool" = perf ]; then
    wrap_r=(perf record -q -g -o "$work/$label.recv.data" --)
    wrap_s=(perf record -q -g -o "$work/$label.send.data" --)
  else
    wrap_r=(strace -c -f -o "$work/$label.recv.strace")
    wrap_s=(strace -c -f -o "$work/$label.send.strace")
  fi
  rm -f "$dst/data.bin"
  # On this VM, tmpfs pages freed a few seconds ago go back to the host,
  # and the first writes into them cost several times what later ones do:
  # touch as many pages as the transfer will need just before it, so each
  # recorded run finds them backed alike.
  head -c "$((SIZE_MIB * 1024 * 1024 + 64 * 1024 * 1024))" /dev/zero > "$dst/pretouch"
  rm -f "$dst/pretouch"
  "${wrap_r[@]}" "$XFER" recv --port "$port" --bind 127.0.0.1 --dir "$dst" --quiet "$@" &
  local r=$!
  wait_port "$port"
  "${wrap_s[@]}" "$XFER" send "$work/data.bin" "127.0.0.1:$port" --quiet "$@"
  wait "$r"
  cmp "$work/data.bin" "$dst/data.bin"
}

# CPU milliseconds of one side, by where they went: perf's samples grouped
# by symbol (the period of each sample is its CPU time).
buckets() { # $1 = perf data file
  perf report -q -i "$1" --no-children --sort sym -F period,sym -g none --stdio 2>/dev/null |
    awk '
      { ns = $1; sym = $3 }
      sym ~ /sha256/                                  { b["SHA-256"] += ns; next }
      sym ~ /aes_gcm|aesni|gcm_/                      { b["AES-256-GCM"] += ns; next }
      sym ~ /memmove|memcpy/                          { b["user-space copies (memcpy)"] += ns; next }
      sym ~ /copy_to_iter|copy_from_iter|copy_folio|copy_user|copy_page_to_iter|copy_page_from_iter/ { b["kernel copies (read/write/send/recv)"] += ns; next }
      $2 == "[k]"                                     { b["rest of the kernel"] += ns; next }
                                                      { b["rest of user space"] += ns }
      END {
        order = "SHA-256|AES-256-GCM|user-space copies (memcpy)|kernel copies (read/write/send/recv)|rest of the kernel|rest of user space"
        n = split(order, k, "|"); t = 0
        for (i = 1; i <= n; i++) t += b[k[i]]
        for (i = 1; i <= n; i++) printf "| %s | %.0f |\n", k[i], b[k[i]] / 1e6
        printf "| total | %.0f |\n", t / 1e6
      }'
}

for mode in ${MODES:-insecure encrypted}; do
  if [ $mode = encrypted ]; then flags=(); export XFER_KEY_FILE=$work/key; else flags=(--insecure); unset XFER_KEY_FILE; fi
  once "$mode" perf "${flags[@]}"
  once "$mode" strace "${flags[@]}"
  for side in send recv; do
    echo "## $mode, $side: CPU ms by where it went (perf samples)"
    echo "| where | CPU ms |"
    echo "|---|---:|"
    buckets "$work/$mode.$side.data"
    echo
    echo "## $mode, $side: top symbols (self, % of samples)"
    perf report -q -i "$work/$mode.$side.data" --no-children --sort symbol --percent-limit 2 --stdio -g none 2>/dev/null \
      | sed 's/^ *//; s/ *-* *-* *$//' | grep -v '^$' | head -12
    echo
    echo "## $mode, $side: system calls on the data path (strace -c -f)"
    awk 'NR<=2 || /read|write|sendto|recvfrom|writev|readv|splice|fsync|syncfs/' "$work/$mode.$side.strace" | head -14
    echo
  done
done
echo "raw data: $work"

#!/usr/bin/env bash
# Compare xfer with the tools people use today, on loopback, in one run.
#
#   bash bench/compare.sh                 # 1 GiB, 3 rounds, destination on tmpfs
#   bash bench/compare.sh --disk /var/tmp # destination on a disk directory
#   bash bench/compare.sh --smoke         # 16 MiB, 1 round: checks the script works
#
# xfer runs twice: encrypted (the default, with a key file) and with
# --insecure (plaintext). Peers: socat (raw, unverified), nc + sha256sum by
# hand, an rsync daemon
# (--whole-file), scp to a private sshd on 127.0.0.1. Commands alternate
# within each round; the table reports medians. It also records peak RSS of
# the xfer sender and receiver for the 1 GiB file and a 5 GiB sparse file.
# Installs missing peers from Debian packages (needs root for that and for
# sshd). Cleans up every process and file it starts.
set -euo pipefail

SIZE_MIB=1024
ROUNDS=3
DEST_PARENT=/dev/shm
SPARSE_GIB=5
SMALL_FILES=10000
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --disk) DEST_PARENT=$2; shift 2 ;;
    --smoke) SMOKE=1; SIZE_MIB=16; ROUNDS=1; SPARSE_GIB=1; SMALL_FILES=200; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'compare: %s\n' "$*" >&2; }

# --- peers -----------------------------------------------------------------
need=()
command -v socat >/dev/null || need+=(socat)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v scp >/dev/null || need+=(openssh-client)
[ -x /usr/bin/time ] || need+=(time)
command -v sha256sum >/dev/null || need+=(coreutils)
command -v ss >/dev/null || need+=(iproute2)
command -v bc >/dev/null || need+=(bc)
command -v strace >/dev/null || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building xfer (release)"
(cd "$here" && cargo build --release --locked -q)
XFER="$here/target/release/xfer"

# --- scratch space and cleanup -----------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/xfer-compare.XXXXXX")
dst=$(mktemp -d "$DEST_PARENT/xfer-compare-dst.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$dst"
}
trap cleanup EXIT INT TERM

source "$here/bench/ports.sh"
now() { date +%s.%N; }

# Both ends authenticate with one key file, as a script would; the
# plaintext runs say --insecure on both ends instead.
"$XFER" keygen --out "$work/key"
export XFER_KEY_FILE="$work/key"
plain() { env -u XFER_KEY_FILE "$XFER" "$@" --insecure; }

src="$work/data.bin"
log "generating ${SIZE_MIB} MiB of random data"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$src"
cat "$src" > /dev/null   # into the page cache
bytes=$(stat -c %s "$src")
want=$(sha256sum "$src" | cut -d' ' -f1)

check() { # the destination file must be identical
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "compare: $2 produced a different file" >&2; exit 1; }
}

# --- one run of each tool; each prints its seconds ----------------------------
# Each side runs under /usr/bin/time, which leaves its user + system CPU
# seconds (its waited-for children included) in $work/cpu.TOOL.SIDE, one
# line a run: CPU per GiB is the figure that holds still on a shared VM.
cpu() { # $1 = tool, $2 = side (send or recv), then the command
  local tool=$1 side=$2; shift 2
  /usr/bin/time -f '%U %S' -a -o "$work/cpu.$tool.$side" "$@"
}
run_xfer() { xfer_once xfer; }
run_xfer_plain() { xfer_once xfer_plain --insecure; }
xfer_once() { # $1 = tool name, $2 = --insecure for plaintext on both ends
  local tool=$1 how=(env "XFER_KEY_FILE=$XFER_KEY_FILE" "$XFER") extra=()
  if [ "${2:-}" = --insecure ]; then how=(env -u XFER_KEY_FILE "$XFER"); extra=(--insecure); fi
  rm -f "$dst/data.bin"
  local port; port=$(free_port)
  cpu "$tool" recv "${how[@]}" recv --port "$port" --bind 127.0.0.1 --dir "$dst" --quiet "${extra[@]}" & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(now)
  cpu "$tool" send "${how[@]}" send "$src" "127.0.0.1:$port" --quiet "${extra[@]}"
  wait "$r"
  local t1; t1=$(now)
  check "$dst/data.bin" "$tool"
  echo "$t1 - $t0" | bc -l
}

run_socat() {
  rm -f "$dst/out"
  local port; port=$(free_port)
  cpu socat recv socat -u -b 1048576 "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" "OPEN:$dst/out,creat,trunc" & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(now)
  cpu socat send socat -u -b 1048576 "OPEN:$src" "TCP:127.0.0.1:$port"
  wait "$r"
  local t1; t1=$(now)
  check "$dst/out" socat
  echo "$t1 - $t0" | bc -l
}

run_nc() { # by hand: hash, send, receive, hash again, compare
  rm -f "$dst/out"
  local port; port=$(free_port)
  cpu nc recv bash -c 'nc -l 127.0.0.1 "$1" > "$2/out" && sha256sum "$2/out" | cut -d" " -f1 > "$3/rx.sum"' _ "$port" "$dst" "$work" & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(now)
  cpu nc send bash -c 'sha256sum "$1" | cut -d" " -f1 > "$2/tx.sum" && nc -N 127.0.0.1 "$3" < "$1"' _ "$src" "$work" "$port"
  wait "$r"
  cmp -s "$work/tx.sum" "$work/rx.sum" || { echo "compare: nc digests differ" >&2; exit 1; }
  local t1; t1=$(now)
  check "$dst/out" nc
  echo "$t1 - $t0" | bc -l
}

rsync_port=""
start_rsyncd() {
  rsync_port=$(free_port)
  cat > "$work/rsyncd.conf" <<EOF
use chroot = no
pid file = $work/rsyncd.pid
[dst]
  path = $dst
  read only = no
  uid = root
  gid = root
EOF
  rsync --daemon --no-detach --address=127.0.0.1 --port="$rsync_port" --config="$work/rsyncd.conf" & pids+=($!)
  wait_port "$rsync_port"
}
run_rsync() { # a daemon of its own, so its CPU (its forked child's) is this run's
  rm -f "$dst/data.bin"
  local port; port=$(free_port)
  sed "s/^pid file = .*/pid file = ${work//\//\\/}\/rsyncd1.pid/" "$work/rsyncd.conf" > "$work/rsyncd1.conf"
  cpu rsync recv rsync --daemon --no-detach --address=127.0.0.1 --port="$port" --config="$work/rsyncd1.conf" & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(now)
  cpu rsync send rsync --whole-file "$src" "rsync://127.0.0.1:$port/dst/"
  local t1; t1=$(now)
  kill -TERM "$(cat "$work/rsyncd1.pid")" 2>/dev/null || true
  wait "$r" || true
  check "$dst/data.bin" rsync
  echo "$t1 - $t0" | bc -l
}

ssh_port=""
start_sshd() {
  ssh_port=$(free_port)
  mkdir -p /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
  cp "$work/client_key.pub" "$work/authorized_keys"
  chmod 600 "$work/authorized_keys"
  cat > "$work/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $work/sshd.pid
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -D -f "$work/sshd_config" & pids+=($!)
  wait_port "$ssh_port"
}
run_scp() { # an sshd of its own, so its CPU (and its session's) is this run's
  rm -f "$dst/out"
  local port; port=$(free_port)
  sed -e "s/^Port .*/Port $port/" -e "s/^PidFile .*/PidFile ${work//\//\\/}\/sshd1.pid/" "$work/sshd_config" > "$work/sshd1_config"
  cpu scp recv /usr/sbin/sshd -D -f "$work/sshd1_config" & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(now)
  cpu scp send scp -q -i "$work/client_key" -P "$port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$src" "root@127.0.0.1:$dst/out"
  local t1; t1=$(now)
  # The daemon itself, not the shell around it (which would run our own
  # cleanup trap): /usr/bin/time then reports and returns.
  kill -TERM "$(cat "$work/sshd1.pid")" 2>/dev/null || true
  wait "$r" || true
  check "$dst/out" scp
  echo "$t1 - $t0" | bc -l
}

start_rsyncd
start_sshd

tools=(xfer xfer_plain socat nc rsync scp)
declare -A times
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  for t in "${tools[@]}"; do
    # Each tool starts with nothing of the last one's left to write back:
    # on a disk, a tool that does not fsync (rsync, socat, scp) leaves a
    # GiB of dirty pages that would slow whoever runs next.
    sync
    s=$("run_$t")
    times[$t]="${times[$t]:-} $s"
    log "  $t: $s s"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# --- many small files: xfer against the rsync daemon -----------------------------
tree="$work/many"
log "generating $SMALL_FILES files of 4 KiB in 100 directories"
for d in $(seq 0 99); do mkdir -p "$tree/d$d"; done
python3 - "$tree" "$SMALL_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(root, f"d{i % 100}", f"f{i}"), "wb") as f:
        f.write(os.urandom(4096))
PY
tree_sum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); }
tree_want=$(tree_sum "$tree")
run_xfer_tree() { xfer_tree_once "$XFER" xfer; }
run_xfer_plain_tree() { xfer_tree_once plain "xfer --insecure"; }
# Each run writes into a fresh directory, and the trees are only removed
# after the last round: on a journal-less ext4 (`--disk` on this VM's
# /var/tmp) creating files right after deleting thousands makes the inode
# allocator skip every recently freed inode one by one, whichever tool runs
# (docs/PERFORMANCE.md, "Small files on a real disk").
fresh_tree_dir() { mktemp -d "$dst/trees.XXXXXX"; }
xfer_tree_once() { # $1 = command (the binary, or plain), $2 = name for messages
  local into; into=$(fresh_tree_dir)
  local port; port=$(free_port)
  "$1" recv --port "$port" --bind 127.0.0.1 --dir "$into" --quiet & local r=$!
  pids+=("$r"); wait_port "$port"
  local t0; t0=$(now)
  "$1" send "$tree" "127.0.0.1:$port" --quiet
  wait "$r"
  local t1; t1=$(now)
  [ "$(tree_sum "$into/many")" = "$tree_want" ] || { echo "compare: $2 tree differs" >&2; exit 1; }
  echo "$t1 - $t0" | bc -l
}
run_rsync_tree() {
  local into; into=$(fresh_tree_dir)
  local t0; t0=$(now)
  rsync -a --whole-file "$tree" "rsync://127.0.0.1:$rsync_port/dst/$(basename "$into")/"
  local t1; t1=$(now)
  [ "$(tree_sum "$into/many")" = "$tree_want" ] || { echo "compare: rsync tree differs" >&2; exit 1; }
  echo "$t1 - $t0" | bc -l
}
declare -A tree_times
for round in $(seq 1 "$ROUNDS"); do
  for t in xfer xfer_plain rsync; do
    sync
    s=$("run_${t}_tree")
    tree_times[$t]="${tree_times[$t]:-} $s"
    log "  $SMALL_FILES small files, $t: $s s"
  done
done
rm -rf "$dst"/trees.*

# --- --compress: when it pays ------------------------------------------------------
# A text-heavy tree (Rust sources from cargo's registry: what built xfer is
# on every machine that runs this) and an incompressible file, each with and
# without --compress, on loopback and on links slowed with --bwlimit. The
# sender's JSON summary says how many bytes the compressed blocks took.
comp_tree="$work/sources"
mkdir -p "$comp_tree"
comp_files=$([ "$SMOKE" = 1 ] && echo 200 || echo 3000)
python3 - "$comp_tree" "$comp_files" "${CARGO_HOME:-$HOME/.cargo}/registry/src" "$here/src" <<'PY'
import hashlib, os, shutil, sys
out, n, roots = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
found = sorted(os.path.join(d, f) for root in roots for d, _, fs in os.walk(root)
               for f in fs if f.endswith(".rs") and os.path.getsize(os.path.join(d, f)) < 200_000)
for path in found[:n]:
    shutil.copy(path, os.path.join(out, hashlib.sha256(path.encode()).hexdigest()[:16] + ".rs"))
PY
comp_tree_bytes=$(du -sb "$comp_tree" | cut -f1)
comp_rand="$work/comp-random.bin"
comp_rand_mib=64; [ "$SMOKE" = 1 ] && comp_rand_mib=4
head -c $((comp_rand_mib * 1048576)) /dev/urandom > "$comp_rand"
comp_rand_bytes=$(stat -c %s "$comp_rand")
comp_once() { # $1 = path, $2 = bwlimit (0: none), $3 = yes/no compress; prints "seconds wire_bytes"
  rm -rf "$dst/sources" "$dst/comp-random.bin"
  local port; port=$(free_port)
  env "XFER_KEY_FILE=$XFER_KEY_FILE" "$XFER" recv --port "$port" --bind 127.0.0.1 --dir "$dst" --quiet & local r=$!
  pids+=("$r"); wait_port "$port"
  local extra=(); [ "$3" = yes ] && extra=(--compress)
  local t0; t0=$(now)
  env "XFER_KEY_FILE=$XFER_KEY_FILE" "$XFER" send "$1" "127.0.0.1:$port" --quiet --json --bwlimit "$2" "${extra[@]}" > "$work/comp.json"
  wait "$r"
  local t1; t1=$(now)
  local wire; wire=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "summary" in l][-1]["wire_bytes"])' "$work/comp.json")
  echo "$(echo "$t1 - $t0" | bc -l) $wire"
}
declare -A comp_times comp_wire
comp_links=(0 100MB 10MB)
[ "$SMOKE" = 1 ] && comp_links=(0 10MB)
for round in $(seq 1 "$ROUNDS"); do
  for data in tree random; do
    path=$comp_tree; [ $data = random ] && path=$comp_rand
    for link in "${comp_links[@]}"; do
      for z in no yes; do
        read -r secs wire <<<"$(comp_once "$path" "$link" "$z")"
        comp_times[$data.$link.$z]="${comp_times[$data.$link.$z]:-} $secs"
        comp_wire[$data.$link.$z]=$wire
        log "  --compress=$z, $data, --bwlimit $link: $secs s, $wire bytes on the wire"
      done
    done
  done
done
rm -rf "$dst/sources" "$dst/comp-random.bin"

# --- peak RSS ----------------------------------------------------------------
rss_run() { # $1 = file to send; prints "sender_kib receiver_kib"
  rm -f "$dst/$(basename "$1")"
  local port; port=$(free_port)
  /usr/bin/time -f %M -o "$work/rss.recv" "$XFER" recv --port "$port" --bind 127.0.0.1 --dir "$dst" --quiet & local r=$!
  pids+=("$r"); wait_port "$port"
  /usr/bin/time -f %M -o "$work/rss.send" "$XFER" send "$1" "127.0.0.1:$port" --quiet
  wait "$r"
  rm -f "$dst/$(basename "$1")"
  echo "$(tail -1 "$work/rss.send") $(tail -1 "$work/rss.recv")"
}
log "peak RSS, ${SIZE_MIB} MiB file"
read -r rss_s1 rss_r1 < <(rss_run "$src")
sparse="$work/sparse.img"
truncate -s "${SPARSE_GIB}G" "$sparse"
log "peak RSS, ${SPARSE_GIB} GiB sparse file"
read -r rss_s5 rss_r5 < <(rss_run "$sparse")

# --- time to first byte ----------------------------------------------------------
ttfb_run() { # $1 = file; prints ms from the sender's exec to its first data write (64 KiB or more)
  local port; port=$(free_port)
  "$XFER" recv --port "$port" --bind 127.0.0.1 --dir "$dst" --quiet & local r=$!
  pids+=("$r"); wait_port "$port"
  strace -f -tt -e trace=execve,sendto,write -o "$work/ttfb.trace" "$XFER" send "$1" "127.0.0.1:$port" --quiet
  wait "$r"
  rm -f "$dst/$(basename "$1")"
  awk 'NR==1 {split($2,a,":"); s=a[1]*3600+a[2]*60+a[3]}
       / = [0-9]+$/ && $NF+0 >= 65536 {split($2,a,":"); t=a[1]*3600+a[2]*60+a[3]; printf "%.1f\n", (t-s)*1000; exit}' "$work/ttfb.trace"
}
log "time to first byte"
ttfb_small=$(ttfb_run "$src")
ttfb_sparse=$(ttfb_run "$sparse")

# --- the floor: one SHA-256 of the data, alone (xfer hashes once per side) ------
# Through OpenSSL (Python's hashlib), which uses SHA-NI as xfer's sha2 does;
# coreutils' sha256sum here does not, and would put the floor 7x too high.
for _ in $(seq 1 "$ROUNDS"); do
  cpu sha256 send python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)' "$src"
done

# --- report --------------------------------------------------------------------
xfer_med=$(echo "${times[xfer]}" | median)
plain_med=$(echo "${times[xfer_plain]}" | median)
echo
echo "| tool | verified, protected | median s | MB/s | encrypted xfer speed ÷ tool speed | plaintext xfer speed ÷ tool speed |"
echo "|---|---|---:|---:|---:|---:|"
for t in "${tools[@]}"; do
  med=$(echo "${times[$t]}" | median)
  case $t in
    xfer) v="SHA-256 end to end; AES-256-GCM, SPAKE2 key" ;;
    xfer_plain) v="SHA-256 end to end; plaintext (--insecure)" ;;
    socat) v="no" ;; nc) v="sha256sum both ends" ;;
    rsync) v="rsync checksum; plaintext daemon" ;; scp) v="SSH MAC; encrypted" ;;
  esac
  name=$t; [ "$t" = xfer_plain ] && name="xfer --insecure"
  printf '| %s | %s | %.3f | %.0f | %.2f | %.2f |\n' "$name" "$v" "$med" \
    "$(echo "$bytes / $med / 1000000" | bc -l)" "$(echo "$med / $xfer_med" | bc -l)" "$(echo "$med / $plain_med" | bc -l)"
done
echo
# CPU seconds per GiB, medians over the rounds (user + system, each side's
# process and the children it waited for).
gib=$(echo "$bytes / 1073741824" | bc -l)
cpu_med() { # $1 = tool, $2 = side: median CPU s per GiB
  grep -E '^[0-9.]+ [0-9.]+$' "$work/cpu.$1.$2" | awk '{print $1 + $2}' | tr '\n' ' ' | median |
    awk -v g="$gib" '{printf "%.3f", $1 / g}'
}
sha=$(cpu_med sha256 send)
floor=$(echo "$(cpu_med socat send) + $(cpu_med socat recv) + 2 * $sha" | bc -l)
echo "| tool | sender CPU s/GiB | receiver CPU s/GiB | total | total ÷ floor |"
echo "|---|---:|---:|---:|---:|"
for t in "${tools[@]}"; do
  cs=$(cpu_med "$t" send); cr=$(cpu_med "$t" recv)
  name=$t; [ "$t" = xfer_plain ] && name="xfer --insecure"
  printf '| %s | %.3f | %.3f | %.3f | %.2f |\n' "$name" "$cs" "$cr" "$(echo "$cs + $cr" | bc -l)" "$(echo "($cs + $cr) / $floor" | bc -l)"
done
printf '| floor: socat (both sides) + 2 × SHA-256 (OpenSSL alone: %.3f) | | | %.3f | 1.00 |\n' "$sha" "$floor"
echo
xfer_tree=$(echo "${tree_times[xfer]}" | median)
plain_tree=$(echo "${tree_times[xfer_plain]}" | median)
rsync_tree=$(echo "${tree_times[rsync]}" | median)
echo "| $SMALL_FILES files of 4 KiB in 100 directories | median s | files/s | tool time ÷ encrypted xfer time |"
echo "|---|---:|---:|---:|"
printf '| xfer | %.3f | %.0f | 1.00 |\n' "$xfer_tree" "$(echo "$SMALL_FILES / $xfer_tree" | bc -l)"
printf '| xfer --insecure | %.3f | %.0f | %.2f |\n' "$plain_tree" "$(echo "$SMALL_FILES / $plain_tree" | bc -l)" "$(echo "$plain_tree / $xfer_tree" | bc -l)"
printf '| rsync daemon | %.3f | %.0f | %.2f |\n' "$rsync_tree" "$(echo "$SMALL_FILES / $rsync_tree" | bc -l)" "$(echo "$rsync_tree / $xfer_tree" | bc -l)"
echo
echo "| --compress (encrypted) | link | without: median s | with: median s | with ÷ without | wire bytes with ÷ without | pays? |"
echo "|---|---|---:|---:|---:|---:|---|"
for data in tree random; do
  for link in "${comp_links[@]}"; do
    off=$(echo "${comp_times[$data.$link.no]}" | median); on=$(echo "${comp_times[$data.$link.yes]}" | median)
    ratio=$(echo "$on / $off" | bc -l)
    wratio=$(echo "${comp_wire[$data.$link.yes]} / ${comp_wire[$data.$link.no]}" | bc -l)
    what="$(echo "$comp_tree_bytes / 1048576" | bc) MiB of Rust sources ($comp_files files)"
    [ $data = random ] && what="$(echo "$comp_rand_bytes / 1048576" | bc) MiB random (incompressible)"
    name=$link; [ "$link" = 0 ] && name="loopback, unlimited"
    pays=no; [ "$(echo "$ratio < 0.95" | bc -l)" = 1 ] && pays=yes
    [ "$(echo "$ratio <= 1.05 && $ratio >= 0.95" | bc -l)" = 1 ] && pays="even"
    printf '| %s | %s | %.3f | %.3f | %.2f | %.3f | %s |\n' "$what" "$name" "$off" "$on" "$ratio" "$wratio" "$pays"
  done
done
echo
echo "| xfer peak RSS | sender | receiver |"
echo "|---|---:|---:|"
printf '| %s MiB file | %.1f MiB | %.1f MiB |\n' "$SIZE_MIB" "$(echo "$rss_s1/1024" | bc -l)" "$(echo "$rss_r1/1024" | bc -l)"
printf '| %s GiB sparse file | %.1f MiB | %.1f MiB |\n' "$SPARSE_GIB" "$(echo "$rss_s5/1024" | bc -l)" "$(echo "$rss_r5/1024" | bc -l)"
echo
echo "| xfer time to first data byte (sender exec to first socket write of 64 KiB or more, under strace) | ms |"
echo "|---|---:|"
echo "| ${SIZE_MIB} MiB file | $ttfb_small |"
echo "| ${SPARSE_GIB} GiB sparse file | $ttfb_sparse |"
echo
echo "Data: ${SIZE_MIB} MiB random, from the page cache, to $DEST_PARENT; $ROUNDS round(s), tools alternating; medians."
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), SHA-NI: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)."
[ "$SMOKE" = 1 ] && echo "(smoke mode: sizes too small for the figures to mean anything)"
exit 0

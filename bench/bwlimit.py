#!/usr/bin/env python3
"""How well --bwlimit keeps to its rate, measured on the wire.

    python3 bench/bwlimit.py            # 20 MB at 5MB/s, 3 rounds (about a minute)
    python3 bench/bwlimit.py --smoke    # 2 MB at 1MB/s, 1 round: checks the script works

A relay on 127.0.0.1 stands between `xfer send` and `xfer recv` and stamps
every chunk of bytes it forwards from the sender, so the figures are the
wire's own: how long the transfer took, and the most bytes any one-second
window carried (sliding in 10 ms steps), against the rate. Cases:

  sender      --bwlimit on the sender (encrypted, the default)
  receiver    --bwlimit on the receiver only (it reads slower; TCP holds the sender back)
  plaintext   --bwlimit on the sender, --insecure
  resume      the first connection is cut at half the file; the retry
              resumes, so only the other half crosses the wire and is paced
  compress    --bwlimit and --compress on the sender: random data does not
              compress, goes as stored blocks, and is paced like the rest

Expected: 20 MB at 5MB/s takes 4.0 s (2.0 s of paced data after the resume),
and no window carries more than 1.5 x the rate. Prints a table; exits 1 if a
criterion fails (in --smoke mode only if a transfer fails: times on a busy
machine mean nothing there). Release build; standard library only.
"""

import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XFER = os.environ.get("BENCH_XFER", str(ROOT / "target" / "release" / "xfer"))


class Relay:
    """One connection (or more, one after another) relayed, sender bytes
    stamped; `cut_at` ends the first connection after that many bytes."""

    def __init__(self, upstream, cut_at=None):
        self.upstream = upstream
        self.cut_at = cut_at
        self.stamps = []  # (monotonic time, bytes) of every chunk, every connection
        self.per_conn = []  # bytes forwarded per connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        for n in range(4):
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            # Small relay buffers, so what the relay has taken is what the
            # receiver has taken (not megabytes parked in our socket).
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            self.per_conn.append(0)
            cut = self.cut_at if n == 0 else None
            back = threading.Thread(target=self._pump, args=(server, client, None, None), daemon=True)
            back.start()
            self._pump(client, server, n, cut)

    def _pump(self, src, dst, conn, cut):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if conn is not None:
                    if cut is not None and self.per_conn[conn] + len(data) >= cut:
                        data = data[: cut - self.per_conn[conn]]
                        dst.sendall(data)
                        self.per_conn[conn] += len(data)
                        self.stamps.append((time.monotonic(), len(data)))
                        break
                    self.stamps.append((time.monotonic(), len(data)))
                    self.per_conn[conn] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def worst_window(self, since=None):
        """The most bytes any one-second window carried (10 ms steps)."""
        stamps = [s for s in self.stamps if since is None or s[0] >= since]
        if not stamps:
            return 0
        t0, t1 = stamps[0][0], stamps[-1][0]
        best, j, inside = 0, 0, 0
        # Two pointers over the stamps, windows starting at each stamp.
        for i, (t, _) in enumerate(stamps):
            while j < len(stamps) and stamps[j][0] < t + 1.0:
                inside += stamps[j][1]
                j += 1
            best = max(best, inside)
            inside -= stamps[i][1]
        del t0, t1
        return best


def receiver(key, dest, extra):
    cmd = [XFER, "recv", "--port", "0", "--json", "--dir", str(dest), *extra]
    if "--insecure" not in extra:
        cmd += ["--key-file", str(key)]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if '"listening"' in line:
            import json

            return p, json.loads(line)["port"]
    raise SystemExit("bwlimit.py: the receiver did not start")


def one(case, key, src, size, rate, work):
    dest = work / f"dest-{case}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    insecure = ["--insecure"] if case == "plaintext" else []
    recv_extra = insecure + (["--bwlimit", str(rate)] if case == "receiver" else [])
    send_extra = [] if case == "receiver" else ["--bwlimit", str(rate)]
    if case == "compress":
        send_extra.append("--compress")
    rcv, port = receiver(key, dest, recv_extra + (["--keep-running"] if case == "resume" else []))
    relay = Relay(port, cut_at=size // 2 if case == "resume" else None)
    cmd = [XFER, "send", str(src), f"127.0.0.1:{relay.port}", "-q", *insecure, *send_extra]
    cmd += ["--retries", "1" if case == "resume" else "0"]
    if not insecure:
        cmd += ["--key-file", str(key)]
    started = time.monotonic()
    code = subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=120).returncode
    seconds = time.monotonic() - started
    if case == "resume":
        rcv.terminate()
    try:
        rcv.wait(30)
    except subprocess.TimeoutExpired:
        rcv.kill()
    ok = code == 0 and hashlib.sha256((dest / src.name).read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    # The paced time: from the first byte to the last of the connection
    # that carried the data (after a cut, the retry's).
    last = relay.per_conn[-1] if relay.per_conn else 0
    stamps = relay.stamps
    if case == "resume" and len(relay.per_conn) > 1:
        # The retry's stamps are the last per_conn[-1] bytes.
        total, k = 0, len(stamps)
        while k > 0 and total < last:
            k -= 1
            total += stamps[k][1]
        stamps = stamps[k:]
    paced = stamps[-1][0] - stamps[0][0] if len(stamps) > 1 else 0.0
    since = stamps[0][0] if stamps else None
    return {
        "ok": ok,
        "seconds": seconds,
        "paced": paced,
        "wire": last,
        "worst": relay.worst_window(since),
    }


def main():
    smoke = "--smoke" in sys.argv
    size = 2_000_000 if smoke else 20_000_000
    rate = 1_000_000 if smoke else 5_000_000
    rounds = 1 if smoke else 3
    work = Path(tempfile.mkdtemp(prefix="xfer-bwlimit-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        key = work / "key"
        subprocess.run([XFER, "keygen", "--out", str(key)], check=True, capture_output=True)
        src = work / "random.bin"
        src.write_bytes(os.urandom(size))
        cases = ["sender", "receiver", "plaintext", "resume", "compress"]
        results = {c: [] for c in cases}
        for _ in range(rounds):
            for c in cases:  # alternating, round by round
                results[c].append(one(c, key, src, size, rate, work))
        mb = size / 1e6
        print(f"\n--bwlimit {rate / 1e6:g}MB/s, {mb:g} MB of random data, {rounds} round(s), medians\n")
        print("| case | all verified | wall s | paced s (first to last data byte) | expected s | wire MB | worst 1 s window / rate |")
        print("|---|---|---:|---:|---:|---:|---:|")
        failed = False
        for c in cases:
            rs = results[c]
            ok = all(r["ok"] for r in rs)
            wire = statistics.median(r["wire"] for r in rs)
            expect = wire / rate
            paced = statistics.median(r["paced"] for r in rs)
            worst = max(r["worst"] for r in rs) / rate
            print(
                f"| {c} | {'yes' if ok else 'NO'} | {statistics.median(r['seconds'] for r in rs):.2f} "
                f"| {paced:.2f} | {expect:.2f} | {wire / 1e6:.1f} | {worst:.2f} |"
            )
            failed |= not ok
            if not smoke and (abs(paced - expect) > 0.1 * expect or worst > 1.5):
                failed = True
        print()
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fault-injection and stress harness for xfer. Run it through `stress/run`,
which installs what it needs and builds the release binary first.

Every scenario drives the real `target/release/xfer` binaries over loopback
or over network namespaces it creates itself, checks exit codes on both
sides and the bytes under every final name, and prints one table at the
end. `--ci` runs the reduced counts CI uses. Stdlib only.
"""

import argparse
import hashlib
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XFER = str(ROOT / "target" / "release" / "xfer")
BADLINK = str(ROOT / "stress" / "badlink.py")
MIB = 1 << 20
CHUNK = 1 << 20  # src/pipeline.rs CHUNK_SIZE
RECORD = 64 << 10  # src/secure.rs RECORD_MAX
PARTIAL = re.compile(r"^\.xfer-[0-9a-f]+(-[0-9a-f]+)?\.partial$")

# Exit codes, as README.md documents them.
OK, NETWORK, INTEGRITY, REFUSED, LOCAL, TIMEOUT, AUTH, INTERRUPTED = 0, 3, 4, 5, 6, 7, 9, 130


class Check(Exception):
    """A scenario's promise was broken; the message says which and how."""


def check(cond, message):
    if not cond:
        raise Check(message)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_random(path, size, rng):
    """A file of `size` bytes that no other run shares."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            f.write(rng.randbytes(n))
            left -= n


class Pool:
    """Random content for many files without generating each afresh: each
    file is a slice of one random buffer, from a random place, with its own
    first 16 bytes so no two files are alike."""

    def __init__(self, size, rng):
        data = rng.randbytes(size)
        self.data = memoryview(data + data)
        self.size = size
        self.rng = rng

    def write(self, path, size):
        start = self.rng.randrange(self.size)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            head = self.rng.randbytes(min(16, size))
            f.write(head)
            digest.update(head)
            rest = self.data[start : start + size - len(head)]
            f.write(rest)
            digest.update(rest)
        return digest.hexdigest()


def listing(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def only_partials(names, allowed=()):
    """Everything in a destination is either expected or xfer's resume state."""
    return [n for n in names if n not in allowed and not PARTIAL.match(n)]


def proc_status(pid):
    """VmRSS, VmHWM (KiB), Threads and open fds of a live process."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return out


class Env:
    """Where a run keeps its files, and the flags every xfer gets."""

    def __init__(self, work, mode="encrypted"):
        self.work = Path(work)
        self.key = self.work / "key"
        if not self.key.exists():
            subprocess.run([XFER, "keygen", "--out", str(self.key)], check=True, capture_output=True)
        self.mode = mode

    def security(self):
        return ["--insecure"] if self.mode == "plain" else ["--key-file", str(self.key)]

    def dir(self, name, clean=True):
        d = self.work / name
        if clean and d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        return d


class Receiver:
    """`xfer recv --json`, its events read as they come; knows its port."""

    def __init__(self, env, args, prefix=(), stdout=subprocess.PIPE, port=0, cwd=None):
        self.events = []
        self.stderr = []
        self.cond = threading.Condition()
        cmd = [*prefix, XFER, "recv", "--port", str(port), "--json", *env.security(), *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd
        )
        self.pid = self.proc.pid
        events = self.proc.stderr if stdout is not subprocess.PIPE else self.proc.stdout
        threading.Thread(target=self._read, args=(events, True), daemon=True).start()
        if events is not self.proc.stderr:
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()
        listening = self.wait_event("listening", 15)
        check(listening, f"receiver did not start listening: {self.err()}")
        self.port = listening["port"]

    def _read(self, stream, events):
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                if events and line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except json.JSONDecodeError:
                        self.stderr.append(line)
                else:
                    self.stderr.append(line)
                self.cond.notify_all()

    def wait_event(self, name, timeout, count=1):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if e.get("event") == name]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not found:
                    if self.proc.poll() is not None:
                        # The process is gone; give the reader a moment to finish.
                        self.cond.wait(0.2)
                        found = [e for e in self.events if e.get("event") == name]
                        return found[count - 1] if len(found) >= count else None
                    return None
                self.cond.wait(min(left, 0.2))

    def summaries(self):
        with self.cond:
            return [e for e in self.events if e.get("event") == "summary"]

    def err(self):
        with self.cond:
            return " | ".join(self.stderr[-5:])

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Check(f"receiver still running after {timeout} s: {self.err()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def send(env, paths, port, args=(), timeout=120, host="127.0.0.1", prefix=(), stdin=None):
    """`xfer send`; returns (exit code, stderr)."""
    cmd = [*prefix, XFER, "send", *map(str, paths), f"{host}:{port}", *env.security(), "-q", *args]
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise Check(f"sender still running after {timeout} s: {e.stderr!r}")
    return p.returncode, p.stderr.decode(errors="replace").strip()


def rerun(env, src, final, want, what, recv_args=None, rcv=None, alone=True):
    """The same transfer again, untouched (to a new receiver with
    `recv_args`, or to `rcv`): both sides exit 0 and `final` holds the
    source's bytes; with `alone`, nothing else is left beside it."""
    rcv = rcv or Receiver(env, recv_args)
    code, err = send(env, [src], rcv.port, ["--retries", "0"])
    r_code = rcv.wait(60)
    check((code, r_code) == (OK, OK), f"{what}: exit codes {code}, {r_code}: {err} | {rcv.err()}")
    check(sha256(final) == want, f"{what}: the file differs from the source")
    if alone:
        check(listing(final.parent) == [final.name], f"after the {what}: {listing(final.parent)}")


class Proxy:
    """A TCP relay on 127.0.0.1 in front of a receiver. Counts the bytes the
    sender sends; can flip one of them, or call `at_offset` once just before
    forwarding byte `trigger_at`."""

    def __init__(self, upstream_port, flip_at=None, trigger_at=None, at_offset=None, rng=None):
        self.upstream = upstream_port
        self.flip_at = flip_at
        self.trigger_at = trigger_at
        self.at_offset = at_offset
        self.rng = rng or random.Random(0)
        self.forwarded = 0
        self.flipped = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        self.listener.close()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src, dst, from_sender):
        buf = bytearray(256 << 10)
        view = memoryview(buf)
        failed = False
        try:
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                if not from_sender:
                    dst.sendall(view[:n])
                    continue
                start = self.forwarded
                if self.flip_at is not None and start <= self.flip_at < start + n:
                    i = self.flip_at - start
                    mask = self.rng.randrange(1, 256)
                    buf[i] ^= mask
                    self.flipped = (self.flip_at, mask)
                if self.trigger_at is not None and start <= self.trigger_at < start + n:
                    cut = self.trigger_at - start
                    dst.sendall(view[:cut])
                    self.forwarded += cut
                    self.trigger_at = None
                    self.at_offset()
                    dst.sendall(view[cut:n])
                    self.forwarded += n - cut
                    continue
                dst.sendall(view[:n])
                self.forwarded += n
        except OSError:
            failed = True
        finally:
            if failed:
                # One end is gone (reset, killed): the other must find out
                # as it would without us in between, so close both for real
                # rather than leave it writing into a socket nobody reads.
                for s in (src, dst):
                    try:
                        # Closed with a reset, as a dead process's socket is.
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    except OSError:
                        pass
            else:
                # A clean end of one direction travels on as such.
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self):
        try:
            self.listener.close()
        except OSError:
            pass


class Scenario:
    """Counts runs and the exit codes seen, keeps the first few failures."""

    def __init__(self, name):
        self.name = name
        self.runs = 0
        self.passed = 0
        self.failures = []
        self.codes = {}
        self.figures = {}
        self.started = time.monotonic()
        self.seconds = None

    def done(self):
        self.seconds = round(time.monotonic() - self.started, 1)
        return self

    def saw(self, side, code):
        key = f"{side} {code}"
        self.codes[key] = self.codes.get(key, 0) + 1

    def run(self, label, fn):
        self.runs += 1
        try:
            fn()
            self.passed += 1
        except Check as e:
            self.failures.append(f"{label}: {e}")
            log(f"FAIL {self.name} {label}: {e}")

    def row(self):
        codes = ", ".join(f"{k}×{v}" for k, v in sorted(self.codes.items()))
        return {
            "scenario": self.name,
            "runs": self.runs,
            "passed": self.passed,
            "seconds": self.seconds,
            "exit codes": codes,
            "figures": self.figures,
            "failures": self.failures[:10],
        }


# ---------------------------------------------------------------- 1. kills


def scenario_kills(work, rng, runs):
    """SIGKILL and SIGTERM at random byte offsets of a 256 MiB transfer,
    alternately to the sender and the receiver, half of the time over an
    existing file that --overwrite would replace."""
    sc = Scenario("kill at random offsets")
    env = Env(work)
    size = 256 * MIB
    src = env.work / "kill-256MiB.bin"
    write_random(src, size, rng)
    want = sha256(src)
    old = b"the previous content, which a failed transfer must leave alone\n" * 1000
    kept_bytes = []
    completed = []  # sender killed after its last byte was on its way

    def one(i, sig, victim, existing):
        dest = env.dir("kill-dest")
        final = dest / src.name
        recv_args = ["--dir", str(dest), "--idle-timeout", "10s"]
        if existing:
            final.write_bytes(old)
            recv_args.append("--overwrite")
        offset = rng.randrange(1, size)
        rcv = Receiver(env, recv_args)
        holder = {}

        def fire():
            os.kill(holder["pid"] if victim == "sender" else rcv.pid, sig)

        proxy = Proxy(rcv.port, trigger_at=offset, at_offset=fire)
        sender = subprocess.Popen(
            [XFER, "send", str(src), f"127.0.0.1:{proxy.port}", "--retries", "0", "-q", *env.security()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        holder["pid"] = sender.pid
        try:
            s_code = sender.wait(120)
        except subprocess.TimeoutExpired:
            sender.kill()
            raise Check("sender did not finish within 120 s")
        r_code = rcv.wait(60)
        proxy.close()
        s_err = sender.stderr.read().decode(errors="replace").strip()
        sc.saw("sender", s_code)
        sc.saw("receiver", r_code)
        killed = -sig if sig == signal.SIGKILL else INTERRUPTED
        other = NETWORK
        want_s, want_r = (killed, other) if victim == "sender" else (other, killed)
        if victim == "sender" and r_code == OK:
            # The offset is counted where the proxy forwards, behind the
            # sender: a sender killed after it had handed its last byte to
            # the kernel leaves a whole file in flight, which the receiver
            # verifies and keeps. Only identical bytes may arrive so.
            check(sha256(final) == want, "a killed sender's file arrived with different bytes")
            check(listing(dest) == [final.name], f"left behind: {listing(dest)}")
            completed.append(offset)
            return
        check(
            (s_code, r_code) == (want_s, want_r),
            f"{sig.name} to the {victim} at byte {offset}: exit codes sender {s_code}, receiver "
            f"{r_code}, expected {want_s}, {want_r} ({s_err} | {rcv.err()})",
        )
        names = listing(dest)
        if existing:
            check(final.read_bytes() == old, "the existing file was changed by a failed transfer")
            check(not only_partials(names, {final.name}), f"left behind: {names}")
        else:
            check(not only_partials(names), f"left behind: {names}")
        partials = [n for n in names if PARTIAL.match(n)]
        kept = sum(os.path.getsize(dest / n) for n in partials)
        kept_bytes.append(kept)
        # Run it again, untouched: it must resume (or start over) and verify.
        rerun(env, src, final, want, "re-run", recv_args)

    for i in range(runs * 2):
        sig = (signal.SIGKILL, signal.SIGTERM)[i % 2]
        victim = ("sender", "receiver")[(i // 2) % 2]
        existing = (i // 4) % 2 == 1
        started = time.monotonic()
        sc.run(f"run {i} {sig.name} {victim}", lambda: one(i, sig, victim, existing))
        if os.environ.get("STRESS_VERBOSE"):
            log(f"kills: run {i} {sig.name} {victim} took {time.monotonic() - started:.1f} s")
        if i % 10 == 9:
            log(f"kills: {i + 1}/{runs * 2}, {sc.passed} passed")
    src.unlink()
    resumed = [k for k in kept_bytes if k]
    sc.figures = {
        "file": "256 MiB",
        "SIGKILL runs": runs,
        "SIGTERM runs": runs,
        "runs that left resume state": len(resumed),
        "sender killed after its last write (receiver verified the whole file)": len(completed),
        "median bytes kept for resume": f"{statistics.median(resumed) / MIB:.0f} MiB" if resumed else "0",
    }
    return sc


# ---------------------------------------------------------- 2. corruption


def scenario_corruption(work, rng, runs, mode):
    """One byte flipped at a random offset of what the sender sends: three
    runs in four anywhere in the stream, one in four within its first 128
    bytes, where the preamble, handshake, OFFER and START travel."""
    sc = Scenario(f"flipped byte, {mode}")
    env = Env(work, mode)
    size = 8 * MIB
    src = env.work / f"flip-{mode}.bin"
    write_random(src, size, rng)
    want_sha = sha256(src)
    places = {"header": 0, "data": 0}
    def allowed(offset):
        """The documented outcomes of a flip at `offset` (docs/RELIABILITY.md)."""
        if mode == "plain":
            if offset == 7:
                return {OK}  # the preamble's reserved byte, ignored by design
            if offset < 8:
                return {NETWORK, AUTH}  # not xfer, other version, other transport
            if offset >= 128:
                return {INTEGRITY}  # file data: the SHA-256 differs
        elif offset >= 128:
            # A ciphertext or tag byte fails to open (4); a record length
            # made larger than the record waits for bytes the sender never
            # sends (7) or exceeds the record limit (3).
            return {INTEGRITY, NETWORK, TIMEOUT}
        # The handshake and the first frames: a changed key or transport
        # fails authentication (9); a frame header, a protocol error (3); a
        # name or size the receiver must refuse, 5 (6 for the receiver if
        # the size will not fit its disk); OFFER fields, 4; a length made
        # larger, the idle timeout (7).
        return {NETWORK, AUTH, INTEGRITY, REFUSED, LOCAL, TIMEOUT}

    def one(i, header):
        dest = env.dir(f"flip-dest-{mode}")
        offset = rng.randrange(0, 128) if header else rng.randrange(0, size)
        places["header" if header else "data"] += 1
        rcv = Receiver(env, ["--dir", str(dest), "--idle-timeout", "5s", "--connect-timeout", "5s"])
        proxy = Proxy(rcv.port, flip_at=offset, rng=rng)
        code, err = send(
            env, [src], proxy.port, ["--retries", "0", "--idle-timeout", "5s"], timeout=60
        )
        proxy.close()
        sc.saw("sender", code)
        check(proxy.flipped, f"the stream ended before byte {offset}")
        try:
            r_code = rcv.proc.wait(10)
        except subprocess.TimeoutExpired:
            # A receiver waiting for its one sender does not give up on a
            # connection that failed to authenticate (a stranger, a wrong
            # guess): it says so and keeps listening, as documented.
            r_code = None
            check(
                mode == "encrypted" and "still waiting for the sender" in rcv.err(),
                f"flip at byte {offset}: the receiver neither finished nor kept waiting: {rcv.err()}",
            )
        sc.saw("receiver", "still waiting" if r_code is None else r_code)
        want = allowed(offset)
        check(
            code in want and (r_code is None or r_code in want),
            f"flip at byte {offset}: exit codes sender {code}, receiver {r_code} ({err} | {rcv.err()})",
        )
        if code == OK:
            check(sha256(dest / src.name) == want_sha, "a flip in the reserved byte changed the file")
            return
        check(not only_partials(listing(dest)), f"a file appeared: {listing(dest)}")
        # Whatever the failed run kept must not poison the next one. (A
        # changed name or time leaves its own partial file behind.)
        waiting = rcv if r_code is None else None
        rerun(env, src, dest / src.name, want_sha, "clean re-run", ["--dir", str(dest)], waiting, alone=False)

    for i in range(runs):
        header = i % 4 == 3
        sc.run(f"run {i}", lambda: one(i, header))
    src.unlink()
    sc.figures = {"file": "8 MiB", "flips in the first 128 bytes": places["header"], "flips anywhere": places["data"]}
    return sc


# ---------------------------------------------------------- 3. bad network


class Namespaces:
    """sender ns — veth — bridge ns (badlink.py) — veth — receiver ns."""

    def __init__(self, tag, impair):
        self.s, self.m, self.r = f"{tag}s", f"{tag}m", f"{tag}r"
        self.made = []
        self.bridge = None
        try:
            for ns in (self.s, self.m, self.r):
                self.ip("netns", "add", ns)
                self.made.append(ns)
            self.ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
            self.ip("link", "add", f"{tag}c", "type", "veth", "peer", "name", f"{tag}d")
            for dev, ns in ((f"{tag}a", self.s), (f"{tag}b", self.m), (f"{tag}c", self.m), (f"{tag}d", self.r)):
                self.ip("link", "set", dev, "netns", ns)
                self.ip("-n", ns, "link", "set", dev, "up")
                subprocess.run(
                    ["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "rx", "off",
                     "tso", "off", "gso", "off", "gro", "off"],
                    check=True, capture_output=True,
                )
            self.ip("-n", self.s, "addr", "add", "10.201.0.1/24", "dev", f"{tag}a")
            self.ip("-n", self.r, "addr", "add", "10.201.0.2/24", "dev", f"{tag}d")
            for ns in (self.s, self.r):
                self.ip("-n", ns, "link", "set", "lo", "up")
            self.bridge = subprocess.Popen(
                ["ip", "netns", "exec", self.m, sys.executable, BADLINK, f"{tag}b", f"{tag}c", *impair],
                stdout=subprocess.PIPE,
            )
            time.sleep(0.3)
            check(self.bridge.poll() is None, "badlink.py did not start")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def exec(self, ns):
        return ["ip", "netns", "exec", ns]

    def close(self):
        counts = None
        if self.bridge and self.bridge.poll() is None:
            self.bridge.terminate()
            out, _ = self.bridge.communicate(timeout=10)
            try:
                counts = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                counts = None
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        return counts


def scenario_badnet(work, rng, transfers, parallel):
    sc = Scenario("bad network (namespaces)")
    env = Env(work)
    impair = ["--loss", "5", "--delay-ms", "50", "--jitter-ms", "10", "--reorder", "25",
              "--duplicate", "2", "--seed", str(rng.randrange(1 << 30))]
    nets = Namespaces(f"xf{os.getpid() % 10000}", impair)
    dest = env.dir("badnet-dest")
    srcdir = env.dir("badnet-src")
    pool = Pool(32 * MIB, rng)
    durations = []
    retries = []
    lock = threading.Lock()
    rcv = None
    try:
        rcv = Receiver(env, ["--dir", str(dest), "--keep-running", "--bind", "10.201.0.2"],
                       prefix=nets.exec(nets.r))

        def one(i):
            name = f"net-{i:03}.bin"
            with lock:
                want = pool.write(srcdir / name, 16 * MIB)
            started = time.monotonic()
            code, err = send(env, [srcdir / name], rcv.port, ["--retries", "5"],
                             timeout=900, host="10.201.0.2", prefix=nets.exec(nets.s))
            with lock:
                durations.append(time.monotonic() - started)
                retries.append(err.count("retrying"))
                sc.saw("sender", code)
            check(code == OK, f"transfer {i}: exit code {code}: {err}")
            check(sha256(dest / name) == want, f"transfer {i}: received bytes differ")
            os.unlink(dest / name)
            os.unlink(srcdir / name)

        with ThreadPoolExecutor(parallel) as pool_:
            futures = [pool_.submit(sc.run, f"transfer {i}", lambda i=i: one(i)) for i in range(transfers)]
            for n, f in enumerate(futures):
                f.result()
                if n % 10 == 9:
                    log(f"bad network: {n + 1}/{transfers}")
        check(not only_partials(listing(dest)), f"left behind: {listing(dest)}")
    finally:
        if rcv:
            rcv.stop()
        counts = nets.close()
    sc.figures = {
        "link": "5% loss, 50±10 ms, 25% reordered, 2% duplicated, each way (RTT ≈ 100 ms)",
        "transfers": f"{transfers} × 16 MiB, {parallel} at a time",
        "seconds per transfer (min/median/max)": f"{min(durations):.0f}/{statistics.median(durations):.0f}/{max(durations):.0f}"
        if durations else "-",
        "transfers that needed a retry": sum(1 for r in retries if r),
        "frames seen/dropped/duplicated/sent early": (
            f"{counts['frames']}/{counts['dropped']}/{counts['duplicated']}/{counts['reordered']}" if counts else "-"
        ),
    }
    return sc


# ------------------------------------------------------------------ 4. load


def scenario_load(work, rng, idle, real):
    """Idle and trickling connections hold what they can; real senders with
    retries must all get through, and the receiver must stay bounded."""
    sc = Scenario("load: idle clients + concurrent transfers")
    env = Env(work)
    dest = env.dir("load-dest")
    srcdir = env.dir("load-src")
    pool = Pool(32 * MIB, rng)
    deadline = 5  # --connect-timeout: the whole handshake must fit in it
    rcv = Receiver(env, ["--dir", str(dest), "--keep-running", "--connect-timeout", f"{deadline}s"])
    peak = {"VmRSS": 0, "Threads": 0, "fds": 0}
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            st = proc_status(rcv.pid)
            if st:
                for k in peak:
                    peak[k] = max(peak[k], st[k])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = proc_status(rcv.pid)
    held = []  # seconds each idle client was kept before the receiver closed it

    def idler(i):
        s = socket.create_connection(("127.0.0.1", rcv.port))
        s.settimeout(deadline + 10)
        started = time.monotonic()
        trickle = i % 2 == 1
        try:
            if trickle:
                # A byte every 200 ms of something that looks like a start.
                for b in b"XFER" + bytes(60):
                    s.sendall(bytes([b]))
                    s.settimeout(0.2)
                    try:
                        if s.recv(4096) == b"":
                            break
                    except socket.timeout:
                        pass
                    if time.monotonic() - started > deadline + 10:
                        break
                s.settimeout(deadline + 10)
            while s.recv(4096):
                pass
        except OSError:
            pass
        held.append(time.monotonic() - started)
        s.close()

    idlers = [threading.Thread(target=idler, args=(i,), daemon=True) for i in range(idle)]
    for t in idlers:
        t.start()
    time.sleep(0.5)
    results = []

    def real_one(i):
        name = f"load-{i:03}.bin"
        want = pool.write(srcdir / name, 8 * MIB)
        code, err = send(env, [srcdir / name], rcv.port, ["--retries", "8"], timeout=300)
        sc.saw("sender", code)
        results.append(code)
        check(code == OK, f"real transfer {i}: exit code {code}: {err}")
        check(sha256(dest / name) == want, f"real transfer {i}: bytes differ")

    with ThreadPoolExecutor(real) as ex:
        for f in [ex.submit(sc.run, f"real {i}", lambda i=i: real_one(i)) for i in range(real)]:
            f.result()
    for t in idlers:
        t.join(deadline + 15)
    sc.runs += 1
    try:
        check(len(held) == idle, f"{idle - len(held)} idle clients were never dropped")
        check(max(held) <= deadline + 2, f"an idle client was held {max(held):.1f} s, deadline {deadline} s")
        sc.passed += 1
    except Check as e:
        sc.failures.append(f"idle clients: {e}")
    time.sleep(0.5)
    after = proc_status(rcv.pid)
    sampling.set()
    sampler.join()
    rcv.stop()
    sc.figures = {
        "clients": f"{idle} idle or trickling, {real} real × 8 MiB (--retries 8)",
        "receiver limits": "defaults: --max-connections 64, --max-handshakes 16, --connect-timeout 5s",
        "idle clients dropped (max held)": f"{len(held)}/{idle} ({max(held) if held else 0:.1f} s)",
        "receiver peak RSS": f"{peak['VmRSS'] / 1024:.1f} MiB",
        "receiver peak threads": peak["Threads"],
        "receiver fds before/peak/after": f"{before['fds']}/{peak['fds']}/{after['fds'] if after else '-'}",
    }
    return sc


# ------------------------------------------------------------- 5. disk full


def scenario_diskfull(work, rng):
    """The destination is an 8 MiB tmpfs, mounted in a mount namespace of
    the receiver's own (unshare -m), so the host sees nothing of it."""
    sc = Scenario("disk full (8 MiB tmpfs)")
    env = Env(work)
    mount = env.dir("full")
    srcdir = env.dir("full-src")
    script = f'mount -t tmpfs -o size=8m xfer-full "{mount}" && exec "$0" "$@"'
    rcv = Receiver(
        env,
        ["--dir", str(mount), "--keep-running"],
        prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script],
    )
    # The receiver's view of its tmpfs, through its own root.
    inside = Path(f"/proc/{rcv.pid}/root") / str(mount).lstrip("/")

    def session(n):
        ev = rcv.wait_event("summary", 30, count=n)
        check(ev, f"no summary for session {n}: {rcv.err()}")
        return ev

    sessions = 0

    def leftovers(allowed=()):
        return [n for n in listing(inside) if n not in allowed]

    def too_big(streamed):
        # A file is refused up front (its size is known); a stream fills
        # the disk as it goes. Either way: refused by the receiver (5) for
        # the sender, a full disk, a local file failure (6), for the
        # receiver, and nothing left.
        nonlocal sessions
        if streamed:
            paths, args, data = ["-"], ["--name", "stream.bin"], rng.randbytes(16 * MIB)
        else:
            write_random(srcdir / "big.bin", 16 * MIB, rng)
            paths, args, data = [srcdir / "big.bin"], ["--retries", "0"], None
        code, err = send(env, paths, rcv.port, args, stdin=data)
        sessions += 1
        ev = session(sessions)
        sc.saw("sender", code)
        sc.saw("receiver", ev.get("exit_code"))
        check(code == REFUSED, f"16 MiB into 8 MiB: sender exit {code}: {err}")
        check(ev.get("exit_code") == LOCAL, f"receiver session: {ev}")
        check(not leftovers(), f"left behind: {leftovers()}")

    def race():
        # Two 5 MiB files at once: each fits alone, so both are accepted,
        # and the disk fills while both are being written.
        nonlocal sessions
        wants = {}
        for n in ("a.bin", "b.bin"):
            write_random(srcdir / n, 5 * MIB, rng)
            wants[n] = sha256(srcdir / n)
        with ThreadPoolExecutor(2) as ex:
            outs = list(ex.map(lambda n: send(env, [srcdir / n], rcv.port, ["--retries", "0"]), wants))
        sessions += 2
        session(sessions)
        codes = sorted(c for c, _ in outs)
        for c in codes:
            sc.saw("sender", c)
        r_codes = sorted(e.get("exit_code") for e in rcv.summaries()[-2:])
        for c in r_codes:
            sc.saw("receiver", c)
        check(codes in ([OK, REFUSED], [REFUSED, REFUSED]), f"two 5 MiB files: exit codes {outs}")
        check(
            r_codes == sorted(LOCAL if c else OK for c in codes),
            f"two 5 MiB files: receiver sessions {r_codes} for sender codes {codes}",
        )
        kept = leftovers()
        for n in kept:
            check(n in wants, f"left behind: {kept}")
            check(sha256(inside / n) == wants[n], f"{n} kept with different bytes")
        check(len(kept) == codes.count(OK), f"{kept} for exit codes {codes}")
        for n in kept:
            os.unlink(inside / n)

    def still_serving():
        nonlocal sessions
        write_random(srcdir / "small.bin", MIB, rng)
        code, err = send(env, [srcdir / "small.bin"], rcv.port, ["--retries", "0"])
        sessions += 1
        sc.saw("sender", code)
        check(code == OK, f"after the disk filled, a 1 MiB file: exit {code}: {err}")
        check(sha256(inside / "small.bin") == sha256(srcdir / "small.bin"), "1 MiB file differs")
        check(leftovers() == ["small.bin"], f"left behind: {leftovers()}")

    try:
        sc.run("file larger than the disk", lambda: too_big(False))
        sc.run("stream larger than the disk", lambda: too_big(True))
        sc.run("two files that fill the disk together", race)
        sc.run("still serving afterwards", still_serving)
    finally:
        rcv.stop()
    sc.figures = {"receiver still serving": "yes" if sc.passed == sc.runs else "see failures"}
    return sc


# ------------------------------------------------------ 6. pipes and signals


def pty_run(argv, until, timeout=60):
    """Runs argv on a new terminal; once `until()` is true, types Ctrl-C.
    Returns (exit code, what the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    shown = bytearray()
    sent = False
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        if not sent and until():
            os.write(fd, b"\x03")
            sent = True
        try:
            r, _, _ = select.select([fd], [], [], 0.02)
            if r:
                chunk = os.read(fd, 4096)
                if chunk:
                    shown += chunk
        except OSError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
        raise Check(f"{argv[1]} at a terminal did not finish within {timeout} s")
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            shown += chunk
    except OSError:
        pass
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def scenario_signals(work, rng):
    sc = Scenario("broken pipes and signals")
    env = Env(work)
    srcdir = env.dir("sig-src")
    src = srcdir / "sig.bin"
    write_random(src, 256 * MIB, rng)
    want = sha256(src)

    def head():
        # xfer recv --stdout | head -c 10
        cwd = env.dir("sig-head")
        headp = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        rcv = Receiver(env, ["--stdout"], stdout=headp.stdin, cwd=cwd)
        headp.stdin.close()
        code, err = send(env, [src], rcv.port, ["--retries", "0"])
        r_code = rcv.wait(30)
        got = headp.stdout.read()
        headp.wait()
        sc.saw("sender", code)
        sc.saw("receiver", r_code)
        check(got == src.read_bytes()[:10], "head did not get the first 10 bytes")
        check((code, r_code) == (REFUSED, LOCAL), f"recv --stdout | head -c 10: exit codes {code}, {r_code}: {err} | {rcv.err()}")
        check(listing(cwd) == [], f"left behind: {listing(cwd)}")

    def sigpipe():
        # SIGPIPE sent to both sides mid-transfer is ignored (xfer handles
        # EPIPE as an error instead); the transfer completes.
        dest = env.dir("sig-pipe")
        rcv = Receiver(env, ["--dir", str(dest)])
        holder = {}

        def fire():
            os.kill(holder["pid"], signal.SIGPIPE)
            os.kill(rcv.pid, signal.SIGPIPE)

        proxy = Proxy(rcv.port, trigger_at=64 * MIB, at_offset=fire)
        p = subprocess.Popen([XFER, "send", str(src), f"127.0.0.1:{proxy.port}", "--retries", "0", "--json",
                              *env.security()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        holder["pid"] = p.pid
        # And the sender's own stdout is a pipe whose reader goes away early.
        p.stdout.read(1)
        p.stdout.close()
        code = p.wait(120)
        r_code = rcv.wait(60)
        sc.saw("sender", code)
        sc.saw("receiver", r_code)
        check((code, r_code) == (OK, OK), f"SIGPIPE: exit codes {code}, {r_code}: {p.stderr.read()!r}")
        check(sha256(dest / src.name) == want, "bytes differ")

    def ctrl_c(side):
        dest = env.dir(f"sig-ctrlc-{side}")
        proxy_box = {}
        if side == "sender":
            rcv = Receiver(env, ["--dir", str(dest)])
            proxy = Proxy(rcv.port, trigger_at=rng.randrange(16 * MIB, 200 * MIB), at_offset=lambda: None)
            argv = [XFER, "send", str(src), f"127.0.0.1:{proxy.port}", "--retries", "0", *env.security()]
            code, shown = pty_run(argv, lambda: proxy.trigger_at is None)
            r_code = rcv.wait(60)
            s_code = code
        else:
            port = free_port()
            argv = [XFER, "recv", "--port", str(port), "--dir", str(dest), *env.security()]
            result = {}

            def sender():
                time.sleep(0.5)
                proxy = Proxy(port, trigger_at=rng.randrange(16 * MIB, 200 * MIB), at_offset=lambda: None)
                proxy_box["p"] = proxy
                result["out"] = send(env, [src], proxy.port, ["--retries", "0"])

            t = threading.Thread(target=sender)
            t.start()
            code, shown = pty_run(argv, lambda: "p" in proxy_box and proxy_box["p"].trigger_at is None)
            t.join(120)
            r_code = code
            s_code = result["out"][0]
        sc.saw("sender", s_code)
        sc.saw("receiver", r_code)
        want_codes = (INTERRUPTED, NETWORK) if side == "sender" else (NETWORK, INTERRUPTED)
        check((s_code, r_code) == want_codes, f"Ctrl-C on the {side}: exit codes {s_code}, {r_code}; terminal: {shown[-300:]!r}")
        check("interrupted" in shown, f"the terminal did not say 'interrupted': {shown[-300:]!r}")
        check(not only_partials(listing(dest)), f"left behind: {listing(dest)}")
        rerun(env, src, dest / src.name, want, "re-run after Ctrl-C", ["--dir", str(dest)])

    sc.run("recv --stdout | head -c 10", head)
    sc.run("SIGPIPE to both sides, sender stdout closed", sigpipe)
    sc.run("Ctrl-C at the sender's terminal", lambda: ctrl_c("sender"))
    sc.run("Ctrl-C at the receiver's terminal", lambda: ctrl_c("receiver"))
    src.unlink()
    return sc


def free_port():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- 7. soak


def soak_sizes(count, rng):
    """Edge sizes first, then a mix: exact multiples of the 1 MiB chunk and
    64 KiB record, uniform sizes, and log-uniform small ones."""
    edges = [0, 1, RECORD - 1, RECORD, RECORD + 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 64 * MIB - 1, 64 * MIB]
    sizes = edges[:count]
    while len(sizes) < count:
        kind = len(sizes) % 4
        if kind == 0:
            sizes.append(rng.randrange(0, 65) * CHUNK)
        elif kind == 1:
            sizes.append(rng.randrange(0, 1025) * RECORD)
        elif kind == 2:
            sizes.append(rng.randrange(0, 64 * MIB + 1))
        else:
            sizes.append(int(2 ** rng.uniform(0, 26)))
    return sizes


def scenario_soak(work, rng, count):
    sc = Scenario("soak: back-to-back transfers")
    env = Env(work)
    dest = env.dir("soak-dest")
    srcdir = env.dir("soak-src")
    pool = Pool(64 * MIB, rng)
    rcv = Receiver(env, ["--dir", str(dest), "--keep-running"])
    samples = []
    total = 0
    sizes = soak_sizes(count, rng)

    def one(i, size):
        name = f"soak-{i:04}.bin"
        want = pool.write(srcdir / name, size)
        code, err = send(env, [srcdir / name], rcv.port, ["--retries", "0"])
        sc.saw("sender", code)
        check(code == OK, f"transfer {i} ({size} bytes): exit code {code}: {err}")
        check(sha256(dest / name) == want, f"transfer {i} ({size} bytes): bytes differ")
        os.unlink(dest / name)
        os.unlink(srcdir / name)

    try:
        for i, size in enumerate(sizes):
            sc.run(f"transfer {i} ({size} B)", lambda: one(i, size))
            total += size
            st = proc_status(rcv.pid)
            check(st, "the receiver died")
            samples.append(st)
            if i % 100 == 99:
                log(f"soak: {i + 1}/{count}, receiver RSS {st['VmRSS'] / 1024:.1f} MiB, fds {st['fds']}, threads {st['Threads']}")
        sc.runs += 1
        quarter = max(1, len(samples) // 4)
        first, last = samples[:quarter], samples[-quarter:]
        first_rss = max(s["VmRSS"] for s in first)
        last_rss = max(s["VmRSS"] for s in last)
        first_fds = max(s["fds"] for s in first)
        last_fds = max(s["fds"] for s in last)
        try:
            check(last_fds <= first_fds, f"receiver fds grew: {first_fds} → {last_fds}")
            check(last_rss <= first_rss + 1024, f"receiver RSS grew: {first_rss} → {last_rss} KiB")
            check(listing(dest) == [], f"left behind: {listing(dest)}")
            sc.passed += 1
        except Check as e:
            sc.failures.append(f"growth: {e}")
        sc.figures = {
            "transfers": f"{count}, {total / (1 << 30):.1f} GiB in all",
            "sizes": "0 B to 64 MiB, edges and multiples of 64 KiB and 1 MiB",
            "receiver RSS, first/last quarter peak": f"{first_rss / 1024:.1f} / {last_rss / 1024:.1f} MiB",
            "receiver fds, first/last quarter peak": f"{first_fds} / {last_fds}",
            "receiver threads at the end": samples[-1]["Threads"],
        }
    finally:
        rcv.stop()
    return sc


# -------------------------------------------------------------------- main


SCENARIOS = ["kills", "corruption", "badnet", "load", "diskfull", "signals", "soak"]
NEEDS_ROOT = {"badnet", "diskfull"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ci", action="store_true", help="reduced counts, for CI")
    p.add_argument("--only", action="append", choices=SCENARIOS, help="run just these scenarios")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()

    counts = (
        dict(kills=5, flips=10, net=10, net_parallel=10, idle=64, real=16, soak=50)
        if args.ci
        else dict(kills=100, flips=100, net=100, net_parallel=10, idle=256, real=64, soak=1000)
    )
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    chosen = args.only or SCENARIOS
    if NEEDS_ROOT & set(chosen) and os.geteuid() != 0:
        sys.exit(
            "stress: the bad-network and disk-full scenarios need root (network namespaces, "
            "mounts); run as root or pick others with --only"
        )
    check(os.access(XFER, os.X_OK), f"{XFER} missing: run `cargo build --release` (stress/run does)")
    base = "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 2 << 30 else None
    work = tempfile.mkdtemp(prefix="xfer-stress-", dir=base)
    log(f"seed {seed}, work in {work}, {'CI' if args.ci else 'full'} mode")
    results = []
    try:
        for name in chosen:
            log(f"== {name}")
            if name == "kills":
                sc = [scenario_kills(work, rng, counts["kills"]).done()]
            elif name == "corruption":
                sc = [scenario_corruption(work, rng, counts["flips"], m).done() for m in ("plain", "encrypted")]
            elif name == "badnet":
                sc = [scenario_badnet(work, rng, counts["net"], counts["net_parallel"]).done()]
            elif name == "load":
                sc = [scenario_load(work, rng, counts["idle"], counts["real"]).done()]
            elif name == "diskfull":
                sc = [scenario_diskfull(work, rng).done()]
            elif name == "signals":
                sc = [scenario_signals(work, rng).done()]
            else:
                sc = [scenario_soak(work, rng, counts["soak"]).done()]
            for s in sc:
                results.append(s.row())
                log(f"{s.name}: {s.passed}/{s.runs} passed in {s.row()['seconds']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nxfer stress, {'CI' if args.ci else 'full'} mode, seed {seed}\n")
    print("| scenario | runs | passed | seconds | exit codes seen |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scenario']} | {r['runs']} | {r['passed']} | {r['seconds']} | {r['exit codes']} |")
    for r in results:
        if r["figures"]:
            print(f"\n{r['scenario']}:")
            for k, v in r["figures"].items():
                print(f"- {k}: {v}")
        for f in r["failures"]:
            print(f"- FAILED {f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": seed, "ci": args.ci, "results": results}, indent=2))
    failed = sum(r["runs"] - r["passed"] for r in results)
    if failed:
        print(f"\nstress: {failed} run(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Check as e:
        sys.exit(f"stress: {e}")

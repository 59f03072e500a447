#!/usr/bin/env python3
"""A bad network link in user space: netem's loss, delay, jitter, reordering
and duplication, applied to every Ethernet frame between two interfaces.

Why not `tc qdisc ... netem`? Some kernels are built without traffic control
(CONFIG_NET_SCHED unset: "Specified qdisc kind is unknown"), this CI's among
them. This bridge does the same job from a network namespace of its own:
it reads each frame from one interface with an AF_PACKET socket, decides its
fate, and writes it to the other interface. TCP on both ends sees real loss,
delay, reordering and duplicates.

    badlink.py IF_A IF_B --loss 5 --delay-ms 50 --jitter-ms 10 \
        --reorder 25 --duplicate 1 --seed 7

Runs until SIGTERM; then prints one JSON line of counts on stdout.
The interfaces must carry no offloads (ethtool -K IF tx off tso off gso off
gro off), or frames would arrive larger than the MTU with checksums unset.
"""

import argparse
import heapq
import json
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main():
    p = argparse.ArgumentParser()
    p.add_argument("if_a")
    p.add_argument("if_b")
    p.add_argument("--loss", type=float, default=0.0, help="percent dropped")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument(
        "--reorder",
        type=float,
        default=0.0,
        help="percent sent at once, ahead of delayed frames (netem's reorder)",
    )
    p.add_argument("--duplicate", type=float, default=0.0, help="percent sent twice")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    rng = random.Random(args.seed)
    socks = {}
    for name in (args.if_a, args.if_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setblocking(False)
        socks[name] = s
    a, b = socks[args.if_a], socks[args.if_b]
    other = {a.fileno(): b, b.fileno(): a}
    counts = {"frames": 0, "dropped": 0, "duplicated": 0, "reordered": 0, "sent": 0}

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    queue = []  # (due, seq, socket, frame)
    seq = 0

    def send(sock, frame):
        try:
            sock.send(frame)
            counts["sent"] += 1
        except OSError:
            # A full device queue drops the frame, as a real link would.
            counts["dropped"] += 1

    while not stop:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, sock, frame = heapq.heappop(queue)
            send(sock, frame)
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        try:
            ready, _, _ = select.select([a, b], [], [], timeout)
        except InterruptedError:
            continue
        for s in ready:
            for _ in range(64):
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own transmission, seen on the way out
                counts["frames"] += 1
                out = other[s.fileno()]
                if rng.random() * 100 < args.loss:
                    counts["dropped"] += 1
                    continue
                copies = 1
                if rng.random() * 100 < args.duplicate:
                    copies = 2
                    counts["duplicated"] += 1
                for _ in range(copies):
                    if rng.random() * 100 < args.reorder:
                        counts["reordered"] += 1
                        send(out, frame)
                        continue
                    delay = args.delay_ms + rng.uniform(-args.jitter_ms, args.jitter_ms)
                    seq += 1
                    heapq.heappush(
                        queue, (time.monotonic() + max(0.0, delay) / 1000, seq, out, frame)
                    )
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Sourced by the benchmark scripts: a free loopback port, and waiting for a
# listener on one.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # wait until something listens on port $1 (bounded: 10 s); without
  # connecting, since a probe would use up a one-shot listener
  for _ in $(seq 1 200); do
    [ -n "$(ss -Hltn "sport = :$1")" ] && return 0
    sleep 0.05
  done
  echo "$(basename "$0"): nothing listens on port $1" >&2; return 1
}

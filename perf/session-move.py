#!/usr/bin/env python3
"""How long a CONNECT resuming a session (MQTT 3.1.1, clean session 0) takes when the session
is on the same node, against when it must come from another cluster node.

    perf/session-move.py PORT_A PORT_B [--count N] [--rounds R]

PORT_A and PORT_B are two shardmq nodes of one cluster (see scripts/bench-cluster.sh for a
way to start them). "same node" reconnects one client id to A; "alternating nodes" reconnects
another id to A, B, A, ... so every CONNECT moves the session. Prints CONNECT -> CONNACK
percentiles and how many CONNACKs said Session Present. Plain sockets, no dependencies.
"""
import argparse
import socket
import statistics
import time


def connect(port, client_id):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x00\x00\x1e" + len(cid).to_bytes(2, "big") + cid
    start = time.perf_counter()
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = s.recv(4)
    elapsed = time.perf_counter() - start
    if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
        raise SystemExit(f"port {port}: CONNECT refused or no CONNACK: {ack!r}")
    s.sendall(b"\xe0\x00")
    s.close()
    return elapsed * 1e3, ack[2] & 1


def run(ports, count, client_id):
    times, present = [], 0
    for i in range(count + 1):
        ms, p = connect(ports[i % len(ports)], client_id)
        if i > 0:  # the first CONNECT creates the session
            times.append(ms)
            present += p
        time.sleep(0.02)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)], present


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port_a", type=int)
    ap.add_argument("port_b", type=int)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    for r in range(1, a.rounds + 1):
        for name, ports in (("same node", [a.port_a]), ("alternating nodes", [a.port_a, a.port_b])):
            p50, p90, present = run(ports, a.count, f"session-move-{len(ports)}-{time.time_ns()}")
            print(f"round {r}: {name}: CONNECT->CONNACK p50 {p50:.3f} ms, p90 {p90:.3f} ms, "
                  f"session present {present}/{a.count}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An independent STOMP client against ferromq.

stomp.py connects with STOMP 1.2, sends 100 persistent messages (each with a receipt, all
awaited), consumes them with client-individual acks, checks that every one arrived exactly once,
and checks that the acknowledged messages are gone. Exit code 0 on success.

Usage: stomp_py_roundtrip.py HOST PORT
"""

import sys

import stomp
from stomp_py_common import Listener, fail

N = 100
QUEUE = "/queue/stomp-py"


def connect(host, port):
    conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1)
    listener = Listener()
    conn.set_listener("test", listener)
    conn.connect(wait=True, headers={"client-id": "stomp-py"})
    return conn, listener


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    conn, listener = connect(host, port)

    bodies = [f"stomp.py message {i}" for i in range(N)]
    for i, body in enumerate(bodies):
        conn.send(QUEUE, body, headers={"persistent": "true", "receipt": f"send-{i}"})
    listener.wait(
        lambda: all(f"send-{i}" in listener.receipts for i in range(N)),
        f"{N} send receipts",
    )

    conn.subscribe(QUEUE, id="sub-1", ack="client-individual")
    listener.wait(lambda: len(listener.messages) >= N, f"{N} messages")
    got = [m.body for m in listener.messages]
    if sorted(got) != sorted(bodies) or len(set(got)) != N:
        fail(f"received {len(got)} messages, not the {N} sent: {got[:5]}...")
    for m in listener.messages:
        if m.headers.get("subscription") != "sub-1":
            fail(f"MESSAGE without subscription:sub-1: {m.headers}")
        if m.headers.get("destination") != QUEUE:
            fail(f"MESSAGE destination: {m.headers}")
        if "ack" not in m.headers:
            fail(f"STOMP 1.2 MESSAGE without an ack header: {m.headers}")
    for i, m in enumerate(listener.messages):
        conn.ack(m.headers["ack"], receipt=f"ack-{i}")
    listener.wait(
        lambda: all(f"ack-{i}" in listener.receipts for i in range(N)),
        f"{N} ack receipts",
    )
    conn.disconnect(receipt="bye")

    # Acknowledged: a new consumer finds only what is sent next.
    conn, listener = connect(host, port)
    conn.subscribe(QUEUE, id="sub-2", ack="auto")
    conn.send(QUEUE, "sentinel", headers={"receipt": "sentinel"})
    listener.wait(lambda: len(listener.messages) >= 1, "the sentinel")
    first = listener.messages[0].body
    if first != "sentinel":
        fail(f"acknowledged message delivered again: {first!r}")
    conn.disconnect(receipt="bye")
    print(f"ok: {N} messages sent, received and acknowledged with stomp.py")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""ActiveMQ's per-connection temporary queues, as stomp.py sees them.

Two stomp.py clients each subscribe to `/temp-queue/replies` and send two requests to
`/queue/requests` with `reply-to:/temp-queue/replies`. A third answers each request on its
`reply-to` (which must name another connection's queue: `/remote-temp-queue/ID:...`), in the
order a1, a2, b1, b2. Each client must get exactly its own two replies, on
`/temp-queue/replies`. Exit code 0 on success.

Usage: stomp_py_temp_queue.py HOST PORT
"""

import sys

import stomp
from stomp_py_common import TIMEOUT, Listener, fail


def connect(host, port):
    conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1)
    listener = Listener()
    conn.set_listener("test", listener)
    conn.connect(wait=True)
    return conn, listener


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    responder, requests = connect(host, port)
    responder.subscribe("/queue/requests", id="requests", receipt="sub")
    requests.wait(lambda: "sub" in requests.receipts, "the responder's SUBSCRIBE receipt")

    clients = {}
    for name in ["a", "b"]:
        conn, listener = connect(host, port)
        conn.subscribe("/temp-queue/replies", id="replies", receipt="sub")
        listener.wait(lambda: "sub" in listener.receipts, f"client {name}'s SUBSCRIBE receipt")
        for n in [1, 2]:
            conn.send(
                "/queue/requests",
                f"{name}{n}",
                headers={"reply-to": "/temp-queue/replies", "receipt": f"req-{n}"},
            )
            listener.wait(lambda: f"req-{n}" in listener.receipts, f"request {name}{n}'s receipt")
        clients[name] = (conn, listener)

    requests.wait(lambda: len(requests.messages) >= 4, "4 requests")
    reply_tos = set()
    for i, m in enumerate(requests.messages):
        reply_to = m.headers.get("reply-to", "")
        if not reply_to.startswith("/remote-temp-queue/ID:"):
            fail(f"request reply-to is not another connection's temporary queue: {m.headers}")
        reply_tos.add(reply_to)
        responder.send(reply_to, f"reply to {m.body}", headers={"receipt": f"reply-{i}"})
    if len(reply_tos) != 2:
        fail(f"expected one temporary queue per client: {reply_tos}")
    requests.wait(
        lambda: all(f"reply-{i}" in requests.receipts for i in range(4)), "reply receipts"
    )

    for name, (conn, listener) in clients.items():
        listener.wait(lambda: len(listener.messages) >= 2, f"client {name}'s replies")
        # Anything more would be another client's reply.
        listener.wait(lambda: len(listener.messages) > 2, "", timeout=0.5, fail_on_timeout=False)
        got = [m.body for m in listener.messages]
        if got != [f"reply to {name}1", f"reply to {name}2"]:
            fail(f"client {name} got {got}, not exactly its own replies")
        for m in listener.messages:
            if m.headers.get("destination") != "/temp-queue/replies":
                fail(f"reply destination: {m.headers}")
        conn.disconnect(receipt="bye")
    responder.disconnect(receipt="bye")
    print("ok: each stomp.py client got exactly its own replies on /temp-queue/replies")


if __name__ == "__main__":
    main()

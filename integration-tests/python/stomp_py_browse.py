#!/usr/bin/env python3
"""ActiveMQ's STOMP queue browser, as stomp.py sees it.

Three persistent messages are sent to `/queue/browsed`. A subscription with `browser:true`
must receive a copy of each, in order, then a MESSAGE with `browser:end`, `message-id:0` and
an empty body. A plain subscription then still receives all three: browsing consumed nothing.
Exit code 0 on success.

Usage: stomp_py_browse.py HOST PORT
"""

import sys

import stomp
from stomp_py_common import Listener, fail


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1)
    listener = Listener()
    conn.set_listener("test", listener)
    conn.connect(wait=True)
    for n in range(3):
        conn.send("/queue/browsed", f"m{n}", headers={"persistent": "true", "receipt": f"s{n}"})
    listener.wait(lambda: all(f"s{n}" in listener.receipts for n in range(3)), "send receipts")

    conn.subscribe("/queue/browsed", id="browser", headers={"browser": "true"})
    listener.wait(
        lambda: any(m.headers.get("browser") == "end" for m in listener.messages),
        "the browser:end MESSAGE",
    )
    *copies, end = listener.messages
    if [m.body for m in copies] != ["m0", "m1", "m2"]:
        fail(f"browsed {[m.body for m in copies]}, not the three messages in order")
    if end.headers.get("message-id") != "0" or end.body not in ("", b""):
        fail(f"the end marker: {end.headers} {end.body!r}")
    conn.unsubscribe(id="browser")

    listener.messages.clear()
    conn.subscribe("/queue/browsed", id="consumer", ack="client-individual")
    listener.wait(lambda: len(listener.messages) >= 3, "the three messages, still queued")
    for m in listener.messages:
        conn.ack(m.headers["ack"], receipt=f"ack-{m.body}")
    listener.wait(lambda: "ack-m2" in listener.receipts, "the last ACK's receipt")
    if [m.body for m in listener.messages] != ["m0", "m1", "m2"]:
        fail(f"consumed {[m.body for m in listener.messages]} after the browse")
    conn.disconnect(receipt="bye")
    print("ok: stomp.py browsed the queue (browser:end last) and then consumed all of it")


if __name__ == "__main__":
    main()

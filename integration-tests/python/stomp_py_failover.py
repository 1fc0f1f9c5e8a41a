#!/usr/bin/env python3
"""stomp.py against a ferromq cluster, given every node's host and port.

The script connects with stomp.py's own host list (`host_and_ports=[...]`, tried in order by
stomp.py), sends N receipted persistent messages, prints `CONFIRMED <body>` for each receipt,
prints `PHASE1` and waits for a line on stdin (the test kills the master meanwhile), then
reconnects (stomp.py again walks its list: a non-master answers ERROR and closes, and the
script calls connect again, as a stomp.py application does) and sends N more. Every send
carries a `message-id` of the form ID:<producer>:<sequence> and the header
`ferromq.dedupe:true`, which tells the broker that the id is the producer's own and never
reused (without it the broker ignores a SEND's `message-id`), so that a re-send after a lost
RECEIPT is stored once. Prints `DONE` and exits 0 on success.

Usage: stomp_py_failover.py HOST:PORT HOST:PORT HOST:PORT
"""

import random
import sys
import threading
import time

import stomp
from stomp.exception import ConnectFailedException, NotConnectedException

N = 50
QUEUE = "/queue/stomp-py-failover"
RECONNECT_TIMEOUT = 60.0
RECEIPT_TIMEOUT = 10.0
PRODUCER = "stomppy%016x" % random.getrandbits(64)
# The broker dedupes a SEND by its message-id only with this header (ferromq's
# src/protocol/stomp/mod.rs, DEDUPE_HEADER).
DEDUPE_HEADER = "ferromq.dedupe"


def say(line):
    print(line, flush=True)


def log(line):
    print(line, file=sys.stderr, flush=True)


def fail(why):
    log(f"FAIL: {why}")
    sys.exit(1)


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.receipts = set()
        self.errors = []
        self.disconnected = False

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame.headers.get("message"))
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def wait_receipt(self, receipt, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while receipt not in self.receipts:
                if self.disconnected:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True


def connect(hosts):
    """stomp.py with the whole host list, connect() repeated until CONNECTED."""
    deadline = time.monotonic() + RECONNECT_TIMEOUT
    attempts = 0
    while True:
        attempts += 1
        conn = stomp.Connection12(
            host_and_ports=hosts,
            reconnect_attempts_max=3,
            reconnect_sleep_initial=0.1,
            reconnect_sleep_increase=0.5,
            reconnect_sleep_max=1.0,
            heartbeats=(0, 0),
        )
        listener = Listener()
        conn.set_listener("test", listener)
        try:
            conn.connect(wait=True)
            host = conn.transport.current_host_and_port
            log(f"connected to {host} after {attempts} attempt(s)")
            return conn, listener, host
        except (ConnectFailedException, NotConnectedException, OSError) as e:
            # OSError, NotConnectedException: stomp.py wrote CONNECT on a socket the broker had
            # already closed.
            log(f"attempt {attempts}: connect failed ({e!r}); errors: {listener.errors}")
        try:
            conn.disconnect()
        except Exception:
            pass
        if time.monotonic() >= deadline:
            fail(
                f"no CONNECTED from any of {hosts} within {RECONNECT_TIMEOUT}s "
                f"({attempts} attempts; last errors: {listener.errors})"
            )
        time.sleep(0.2)


class Sender:
    def __init__(self, hosts):
        self.hosts = hosts
        self.sequence = 0
        self.conn, self.listener, self.host = connect(hosts)

    def send(self, body):
        self.sequence += 1
        message_id = f"ID:{PRODUCER}:{self.sequence}"
        receipt = f"r-{self.sequence}"
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while True:
            try:
                self.conn.send(
                    QUEUE,
                    body,
                    headers={
                        "persistent": "true",
                        "message-id": message_id,
                        DEDUPE_HEADER: "true",
                        "receipt": receipt,
                    },
                )
                if self.listener.wait_receipt(receipt, RECEIPT_TIMEOUT):
                    say(f"CONFIRMED {body}")
                    return
                log(f"no receipt for {body} from {self.host}; reconnecting")
            except (NotConnectedException, OSError) as e:
                log(f"sending {body}: {e!r}; reconnecting")
            if time.monotonic() >= deadline:
                fail(f"{body} not confirmed within {RECONNECT_TIMEOUT}s")
            try:
                self.conn.disconnect()
            except Exception:
                pass
            self.conn, self.listener, self.host = connect(self.hosts)


def main():
    hosts = []
    for arg in sys.argv[1:]:
        host, port = arg.rsplit(":", 1)
        hosts.append((host, int(port)))
    sender = Sender(hosts)
    first_host = sender.host
    for i in range(N):
        sender.send(f"py-1-{i}")
    say("PHASE1")
    if not sys.stdin.readline():
        fail("stdin closed before the go-ahead")
    for i in range(N):
        sender.send(f"py-2-{i}")
    log(f"first connected to {first_host}, last to {sender.host}")
    try:
        sender.conn.disconnect()
    except Exception:
        pass
    say("DONE")


if __name__ == "__main__":
    main()

"""What the stomp.py test scripts share: a listener that collects receipts, messages and
ERROR frames, and waits for a condition on them with a deadline (failing the script on an ERROR
frame or when the deadline passes)."""

import sys
import threading
import time

import stomp

TIMEOUT = 30.0


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.receipts = set()
        self.messages = []
        self.errors = []

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_message(self, frame):
        with self.cond:
            self.messages.append(frame)
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame)
            self.cond.notify_all()

    def wait(self, predicate, what, timeout=TIMEOUT, fail_on_timeout=True):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                if self.errors:
                    e = self.errors[0]
                    fail(f"ERROR frame while waiting for {what}: {e.headers} {e.body!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if fail_on_timeout:
                        fail(f"timed out after {timeout}s waiting for {what}")
                    return
                self.cond.wait(remaining)

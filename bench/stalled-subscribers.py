#!/usr/bin/env python3
"""What stalled topic subscribers cost a running broker: resident memory before and after.

Three STOMP subscribers on /topic/logs (ack auto, default prefetch) stop reading their sockets;
a producer sends COUNT non-persistent messages of SIZE bytes, then a receipted send; the broker's
resident size is read from /proc before and two seconds after.

    bench/stalled-subscribers.py PORT BROKER_PID [COUNT [SIZE]]   # defaults: 10000 10240
"""
import re
import socket
import sys
import time


def rss_mb(pid):
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) // 1024


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0")
    if b"CONNECTED" not in s.recv(4096):
        sys.exit("the broker did not answer CONNECT with CONNECTED")
    return s


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 10240
    print(f"resident before: {rss_mb(pid)} MB")
    stalled = []
    for i in range(3):
        s = connect(port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"SUBSCRIBE\nid:stalled{i}\ndestination:/topic/logs\nack:auto\n\n\0".encode())
        stalled.append(s)
    producer = connect(port)
    body = b"x" * size
    frame = b"SEND\ndestination:/topic/logs\ncontent-length:%d\n\n" % size + body + b"\0"
    for _ in range(count):
        producer.sendall(frame)
    producer.sendall(b"SEND\ndestination:/queue/stalled-done\nreceipt:done\n\nend\0")
    answer = b""
    while b"RECEIPT" not in answer:
        answer += producer.recv(4096)
    time.sleep(2)
    print(f"resident after {count} messages of {size} bytes: {rss_mb(pid)} MB")


if __name__ == "__main__":
    main()

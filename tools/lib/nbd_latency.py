#!/usr/bin/env python3
"""4 KiB random reads through an NBD export, one at a time: latency
percentiles. A minimal fixed-newstyle client (NBD_OPT_GO, simple replies),
so the figure is the server's and not a client library's.

    nbd_latency.py SOCKET SPAN_BYTES COUNT [SEED]
    nbd_latency.py --first SOCKET

Reads COUNT random 4 KiB blocks below SPAN_BYTES, in the first MiB of
every 2 MiB (where tools/bench-export.sh's disk holds data), twice: the
first pass warms the server's cache, the second is measured. Prints
"p50_us p99_us". With --first: waits for SOCKET, reads 4 KiB at 0, exits.
"""
import os
import random
import socket
import struct
import sys
import time


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise EOFError("server closed the connection")
        buf += part
    return bytes(buf)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    hello = recv_exact(s, 18)
    assert hello[:8] == b"NBDMAGIC", hello
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    data = struct.pack(">I", 0) + struct.pack(">H", 0)  # default export, no infos
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        _magic, _opt, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, length)
        if typ == 1:  # ACK
            return s
        if typ & (1 << 31):
            raise RuntimeError("NBD_OPT_GO refused: %#x" % typ)


def read(s, cookie, offset, length):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, cookie, offset, length))
    magic, err, got = struct.unpack(">IIQ", recv_exact(s, 16))
    assert magic == 0x67446698 and got == cookie, (magic, got)
    if err:
        raise RuntimeError("read at %d failed: errno %d" % (offset, err))
    return recv_exact(s, length)


def main():
    if sys.argv[1] == "--first":
        path = sys.argv[2]
        while not os.path.exists(path):
            time.sleep(0.001)
        read(connect(path), 1, 0, 4096)
        return
    path, span, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    mib = 1 << 20
    offsets = [
        rng.randrange(max(1, span // (2 * mib))) * 2 * mib + rng.randrange(256) * 4096
        for _ in range(count)
    ]
    s = connect(path)
    for i, off in enumerate(offsets):
        read(s, i, off, 4096)
    took = []
    for i, off in enumerate(offsets):
        t = time.perf_counter()
        read(s, i, off, 4096)
        took.append(time.perf_counter() - t)
    took.sort()
    p50 = took[len(took) // 2] * 1e6
    p99 = took[min(len(took) - 1, (len(took) * 99) // 100)] * 1e6
    print("%.0f %.0f" % (p50, p99))


if __name__ == "__main__":
    main()

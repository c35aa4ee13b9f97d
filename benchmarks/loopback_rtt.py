#!/usr/bin/python3
"""The floor under any loopback service on this machine: a 1-byte TCP echo between two
processes pinned to cpu 0 (echo) and cpu 1 (caller), back to back and paced 1 ms apart (the
echo sleeps between requests, as a server at a moderate rate does). Debian's /usr/bin/python3.

    /usr/bin/python3 benchmarks/loopback_rtt.py
"""
import os
import socket
import time

N = 5000
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1); port = srv.getsockname()[1]
pid = os.fork()
if pid == 0:
    os.sched_setaffinity(0, {0})
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d: break
        c.sendall(d)
    os._exit(0)
os.sched_setaffinity(0, {1})
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for mode in ("back-to-back", "paced 1 ms apart"):
    lat = []
    for i in range(N if mode == "back-to-back" else 2000):
        if mode != "back-to-back":
            t_end = time.perf_counter() + 0.001
            while time.perf_counter() < t_end: pass
        t = time.perf_counter(); s.sendall(b"x"); s.recv(64); lat.append(time.perf_counter() - t)
    lat.sort()
    print(f"loopback TCP round trip, {mode}: p50 {lat[len(lat)//2]*1e6:.0f} us, p99 {lat[int(len(lat)*.99)]*1e6:.0f} us, p99.9 {lat[int(len(lat)*.999)]*1e6:.0f} us")
s.close(); os.waitpid(pid, 0)

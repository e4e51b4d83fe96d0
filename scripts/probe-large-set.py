#!/usr/bin/env python3
# Issue 15's large-value probe: one client SETs a 100 MB value (written in
# 64 KiB pieces, as fast as the socket takes them) while another PINGs every
# 2 ms on its own connection; prints the SET's time and the PINGs' latency.
# Run it against kv (a node booted with kv 2.1.0) and a redis-server, in
# turn, to compare: scripts/probe-large-set.py PORT
import socket, sys, threading, time
port = int(sys.argv[1]); size = 100 << 20
lat = []; done = threading.Event()
def pinger():
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not done.is_set():
        t = time.perf_counter(); s.sendall(b"PING\r\n"); r = s.recv(100); lat.append(time.perf_counter() - t)
        assert r == b"+PONG\r\n", r
        time.sleep(0.002)
big = socket.create_connection(("127.0.0.1", port))
th = threading.Thread(target=pinger); th.start(); time.sleep(0.2); lat.clear()
chunk = b"x" * (1 << 16)
t0 = time.perf_counter()
big.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % size)
for _ in range(size >> 16): big.sendall(chunk)
big.sendall(b"\r\n"); r = big.recv(100); t1 = time.perf_counter()
done.set(); th.join()
assert r == b"+OK\r\n", r
big.sendall(b"DEL big\r\n"); big.recv(100)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
print(f"SET 100 MB {t1 - t0:.3f} s; PINGs meanwhile {len(lat)}: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {lat[-1]*1e3:.2f} ms")

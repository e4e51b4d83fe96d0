#!/usr/bin/env python3
# Issue 15's large-value probe: one client SETs a 100 MB value (written in
# 64 KiB pieces, as fast as the socket takes them) while PINGERS other
# clients (default 4) each PING back to back on their own connection; the
# SET is repeated ROUNDS times (default 5). Prints, per server, the SET's
# median time and the latency of every PING answered while a SET was being
# received: the sample count, p50, p99, p99.9 and max.
#
# Usage: scripts/probe-large-set.py [NAME=]PORT ...   e.g. kv=6380 redis=6379
# (servers in turn, the same run). scripts/compare-redis-probes.sh starts a
# kv node and a redis-server and runs it against both.
import os, socket, statistics, sys, threading, time

SIZE = int(os.environ.get("SIZE_MB", "100")) << 20
ROUNDS = int(os.environ.get("ROUNDS", "5"))
PINGERS = int(os.environ.get("PINGERS", "4"))


def probe(port):
    lat = []
    lock = threading.Lock()
    during = threading.Event()
    done = threading.Event()

    def pinger():
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine = []
        while not done.is_set():
            counted = during.is_set()
            t = time.perf_counter()
            s.sendall(b"PING\r\n")
            r = s.recv(100)
            elapsed = time.perf_counter() - t
            assert r == b"+PONG\r\n", r
            # Only PINGs sent and answered while the SET was under way.
            if counted and during.is_set():
                mine.append(elapsed)
            time.sleep(0.0002)
        with lock:
            lat.extend(mine)
        s.close()

    threads = [threading.Thread(target=pinger) for _ in range(PINGERS)]
    for th in threads:
        th.start()
    big = socket.create_connection(("127.0.0.1", port))
    chunk = b"x" * (1 << 16)
    times = []
    time.sleep(0.2)
    for _ in range(ROUNDS):
        during.set()
        t0 = time.perf_counter()
        big.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % SIZE)
        for _ in range(SIZE >> 16):
            big.sendall(chunk)
        big.sendall(b"\r\n")
        r = big.recv(100)
        times.append(time.perf_counter() - t0)
        during.clear()
        assert r == b"+OK\r\n", r
        big.sendall(b"DEL big\r\n")
        assert big.recv(100) == b":1\r\n"
        time.sleep(0.1)
    done.set()
    for th in threads:
        th.join()
    big.close()
    lat.sort()
    return times, lat


def q(lat, p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: probe-large-set.py [NAME=]PORT ...")
    print(f"{SIZE >> 20} MB SET x {ROUNDS}, {PINGERS} PING clients meanwhile")
    print(f"{'server':8} {'SET s (median)':>15} {'PINGs':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
    for arg in sys.argv[1:]:
        name, _, port = arg.rpartition("=")
        times, lat = probe(int(port))
        if not lat:
            print(f"{name or port:8} {statistics.median(times):15.3f} {0:7d}  (no PING answered during a SET)")
            continue
        print(f"{name or port:8} {statistics.median(times):15.3f} {len(lat):7d} {q(lat, 0.5):8.2f} "
              f"{q(lat, 0.99):8.2f} {q(lat, 0.999):9.2f} {lat[-1] * 1e3:8.2f}")


main()

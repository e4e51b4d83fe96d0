#!/usr/bin/env python3
# Issue 15's chunked-array probe: one request of 1,048,576 elements
# (EXISTS and 1,048,575 keys, 12.6 MB) written in 4 KiB pieces, each sent
# on its own (TCP_NODELAY), so the server sees many partial reads of one
# request. Measures the CPU time (user + system, every thread) the server
# process spends from the first byte to the reply, from /proc/PID/stat;
# ROUNDS times (default 3), median. A parser that parsed the request again
# from its start on every read would take minutes here.
#
# Usage: scripts/probe-chunked-array.py [NAME=]PORT:PID ...
#   e.g. kv=6380:1234 redis=6379:5678 (servers in turn, the same run).
# scripts/compare-redis-probes.sh starts both and runs it.
import os, socket, statistics, sys, time

ROUNDS = int(os.environ.get("ROUNDS", "3"))
ELEMENTS = 1 << 20
CHUNK = 4096
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after ")".
    return (int(fields[11]) + int(fields[12])) / TICK


def request():
    parts = [b"*%d\r\n$6\r\nEXISTS\r\n" % ELEMENTS]
    for i in range(ELEMENTS - 1):
        key = b"chunked:%d" % i
        parts.append(b"$%d\r\n%s\r\n" % (len(key), key))
    return b"".join(parts)


def probe(port, pid, payload):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        for at in range(0, len(payload), CHUNK):
            s.sendall(payload[at:at + CHUNK])
        reply = s.recv(100)
        wall.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds(pid) - c0)
        assert reply == b":0\r\n", reply
    s.close()
    return statistics.median(cpu), statistics.median(wall)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: probe-chunked-array.py [NAME=]PORT:PID ...")
    payload = request()
    print(f"EXISTS with {ELEMENTS - 1} keys ({ELEMENTS} elements, {len(payload) / 1e6:.1f} MB) "
          f"in {CHUNK}-byte writes; median of {ROUNDS}")
    print(f"{'server':8} {'CPU s':>8} {'wall s':>8}")
    results = {}
    for arg in sys.argv[1:]:
        name, _, spec = arg.rpartition("=")
        port, pid = (int(x) for x in spec.split(":"))
        results[name or str(port)] = probe(port, pid, payload)
        cpu, wall = results[name or str(port)]
        print(f"{name or port:8} {cpu:8.3f} {wall:8.3f}")
    if "kv" in results and "redis" in results and results["redis"][0] > 0:
        print(f"kv/redis CPU: {results['kv'][0] / results['redis'][0]:.2f}")


main()

#!/usr/bin/env python3
"""The measuring half of scripts/compare-redis.sh (which starts the servers).

Runs redis-benchmark against kv and Redis, one test (SET, GET or INCR) per
run, kv and Redis back to back for every figure of every round, who goes
first alternating between figures and between rounds, so that both servers
see the same minute of the machine. For each figure it prints the median
requests/s of each, the median of the rounds' kv/redis ratios, and a
distribution-free confidence interval for that median (order statistics of
the ratios, no assumption about their distribution). Then, for each client
setting, how busy the client kept its core and the CPU time per request of
the client and of each server.

Why one test per run and many short rounds: on this kind of machine (a VM
on a shared host) the same client against the same server varies by 10-15%
from one second to the next. A figure is only as good as the number of
pairs behind it, and the two runs of a pair are closest in time when each is
short.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

TESTS = ("SET", "GET", "INCR")
SETTINGS = ((20, 1), (20, 16), (50, 1), (50, 16))
CONFIDENCE = 0.95


def cpu_seconds(pid):
    """User + system CPU time of process `pid`, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        # The name field (2) has no spaces for either server.
        fields = stat.read().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run_benchmark(args, port, test, clients, pipeline):
    """One redis-benchmark run: (requests/s, wall s, client CPU s, requests)."""
    requests = args.requests * pipeline
    command = [
        "taskset", "-c", args.bench_cpus, "redis-benchmark", "-p", str(port),
        "-t", test.lower(), "-n", str(requests), "-c", str(clients),
        "-P", str(pipeline), "--csv",
    ]
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = child.stdout.read()
    # wait4 rather than child.wait(): it gives the client's own CPU time
    # (taskset execs redis-benchmark, so the pid is the benchmark's).
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if child.returncode != 0:
        sys.exit(f"compare-redis: redis-benchmark on port {port} exited with {child.returncode}")
    rows = [line.split(",") for line in output.splitlines() if line.startswith(f'"{test}"')]
    if not rows:
        sys.exit(f"compare-redis: redis-benchmark printed no {test} figure on port {port}: {output!r}")
    rps = float(rows[-1][1].strip('"'))
    return rps, wall, usage.ru_utime + usage.ru_stime, requests


def median_interval(values):
    """A confidence interval for the median of `values` from their order
    statistics: [x(k), x(n+1-k)] covers the median with probability
    1 - 2 P(Binomial(n, 1/2) < k). Returns (low, high, coverage) with the
    narrowest such interval covering at least CONFIDENCE, or the whole range
    when there are too few values for that."""
    ordered = sorted(values)
    n = len(ordered)

    def coverage(k):
        below = sum(math.comb(n, i) for i in range(k)) / 2**n
        return 1 - 2 * below

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= CONFIDENCE:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv-port", type=int, required=True)
    parser.add_argument("--kv-pid", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--redis-pid", type=int, required=True)
    parser.add_argument("--bench-cpus", required=True)
    parser.add_argument("--requests", type=int, required=True, help="per run at -P 1; 16 times as many at -P 16")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--raw", help="write every run to this JSON file")
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1:
        sys.exit("compare-redis: ROUNDS and REQUESTS must be at least 1")

    servers = {"kv": (args.kv_port, args.kv_pid), "redis": (args.redis_port, args.redis_pid)}
    runs = []
    for round_ in range(args.rounds):
        figure = 0
        for clients, pipeline in SETTINGS:
            for test in TESTS:
                order = ("kv", "redis") if (round_ + figure) % 2 == 0 else ("redis", "kv")
                figure += 1
                for server in order:
                    port, pid = servers[server]
                    server_cpu = cpu_seconds(pid)
                    rps, wall, client_cpu, requests = run_benchmark(args, port, test, clients, pipeline)
                    runs.append({
                        "round": round_ + 1, "server": server, "test": test, "clients": clients,
                        "pipeline": pipeline, "requests": requests, "rps": rps, "wall_s": wall,
                        "client_cpu_s": client_cpu, "server_cpu_s": cpu_seconds(pid) - server_cpu,
                    })
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr)
    if args.raw:
        with open(args.raw, "w") as raw:
            json.dump(runs, raw, indent=1)

    def select(server, clients, pipeline, test=None):
        return [
            r for r in runs
            if r["server"] == server and r["clients"] == clients and r["pipeline"] == pipeline
            and (test is None or r["test"] == test)
        ]

    coverage = median_interval([1.0] * args.rounds)[2]
    print(f"{'test':<5} {'-c':>3} {'-P':>3} {'kv req/s':>12} {'redis req/s':>12} {'kv/redis':>9}"
          f"   {100 * coverage:.1f}% interval")
    at_least_one = clear = 0
    for clients, pipeline in SETTINGS:
        for test in TESTS:
            kv = select("kv", clients, pipeline, test)
            redis = select("redis", clients, pipeline, test)
            # Pairs by round: a slow moment of the machine moves one pair.
            ratios = [k["rps"] / r["rps"] for k, r in zip(kv, redis)]
            ratio = statistics.median(ratios)
            low, high, _ = median_interval(ratios)
            at_least_one += ratio >= 1.0
            clear += low >= 1.0
            print(f"{test:<5} {clients:>3} {pipeline:>3} {statistics.median(r['rps'] for r in kv):>12,.0f}"
                  f" {statistics.median(r['rps'] for r in redis):>12,.0f} {ratio:>9.3f}   {low:.3f}-{high:.3f}")
    print(f"\n{at_least_one} of 12 figures at or above 1.000; {clear} with the whole interval at or above 1.000")

    print("\nper client setting, median of the runs (SET, GET and INCR together):")
    print("  client busy: the client's CPU time over the run's wall time (1.00: the client is the limit)")
    print("  CPU µs/request: user + system; the server's counts all its threads")
    print(f"{'-c':>3} {'-P':>3} {'client busy':>17} {'client µs/req':>17} {'server µs/req':>17}")
    print(f"{'':>7} {'kv':>8} {'redis':>8} {'kv':>8} {'redis':>8} {'kv':>8} {'redis':>8}")
    for clients, pipeline in SETTINGS:
        cells = []
        for measure in (
            lambda r: r["client_cpu_s"] / r["wall_s"],
            lambda r: r["client_cpu_s"] * 1e6 / r["requests"],
            lambda r: r["server_cpu_s"] * 1e6 / r["requests"],
        ):
            for server in ("kv", "redis"):
                cells.append(statistics.median(measure(r) for r in select(server, clients, pipeline)))
        print(f"{clients:>3} {pipeline:>3} " + " ".join(f"{c:>8.2f}" for c in cells))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Same-run comparison of kv 2.1.0 on a relive node with a stock redis-server:
# redis-benchmark SET, GET and INCR at -c 20 and -c 50, -P 1 and -P 16 (12
# figures). Every round runs each figure against kv and Redis back to back,
# one test per run, who goes first alternating, so both see the same moment
# of the machine. For each figure it prints the median requests/s of each,
# the median of the rounds' kv/redis ratios and a confidence interval for
# that median (from the ratios' order statistics); then, per client setting,
# how busy the client kept its core and the CPU time per request of the
# client and of each server (user + system, all threads; /proc/PID/stat and
# the client's rusage). The measuring is scripts/compare-redis.py.
#
# Requests per run: REQUESTS (default 100000) at -P 1 and 16 times that at
# -P 16, about a second either way here. Rounds: ROUNDS (default 11; with
# fewer than 6 the interval is the whole range of the ratios and covers the
# median less often than 95%). RAW=file.json keeps every run. About 6
# minutes with the defaults on the 2-core machine.
#
# Cores: on a machine with 2 cores or more, each server (the whole node, every
# thread of it, and redis-server) runs pinned to core 0 and redis-benchmark to
# core 1 (taskset), for both; with one core everything shares it. Override
# with SERVER_CPUS / BENCH_CPUS (taskset lists, e.g. "0-1").
#
# Needs redis-server and redis-benchmark (Debian: redis-server redis-tools),
# cargo, python3, taskset. Builds the relive binary (cargo build --release)
# and the kv 2.1.0 release (its module crates into target/examples, as the
# tests do). Everything it starts (the node, redis-server) and its temporary
# directory are removed on exit, however it exits.
#
# Usage: scripts/compare-redis.sh   (REQUESTS=100000 ROUNDS=11 RAW=)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
requests=${REQUESTS:-100000}
rounds=${ROUNDS:-11}

SCRIPT_NAME=compare-redis
EXTRA_TOOLS=redis-benchmark
# shellcheck source=scripts/redis-pair.sh
source "$root/scripts/redis-pair.sh"

echo "kv 2.1.0 on a relive node (port $kv_port) vs redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') (port $redis_port)" >&2
echo "servers on cpu $server_cpus, redis-benchmark on cpu $bench_cpus; -n $requests at -P 1, $((requests * 16)) at -P 16; $rounds rounds" >&2
python3 "$root/scripts/compare-redis.py" --kv-port "$kv_port" --kv-pid "$node_pid" \
  --redis-port "$redis_port" --redis-pid "$redis_pid" --bench-cpus "$bench_cpus" \
  --requests "$requests" --rounds "$rounds" ${RAW:+--raw "$RAW"}

#!/usr/bin/env bash
# Issue 15's hostile-client probes, kv 2.1.0 on a relive node and a stock
# redis-server in the same run: scripts/probe-large-set.py (a 100 MB SET,
# repeated, with PING clients beside it: the SET's time and every PING's
# latency while it is received, with the sample count) and
# scripts/probe-chunked-array.py (one 1,048,576-element request in 4 KiB
# writes: the server's CPU time).
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
# Usage: scripts/compare-redis-probes.sh   (ROUNDS, PINGERS, SIZE_MB: see the
# probes)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"

SCRIPT_NAME=compare-redis-probes
EXTRA_TOOLS=
# shellcheck source=scripts/redis-pair.sh
source "$root/scripts/redis-pair.sh"

echo "servers on cpu $server_cpus, probe clients on cpu $bench_cpus" >&2
taskset -c "$bench_cpus" python3 "$root/scripts/probe-large-set.py" kv="$kv_port" redis="$redis_port"
echo
taskset -c "$bench_cpus" python3 "$root/scripts/probe-chunked-array.py" kv="$kv_port:$node_pid" redis="$redis_port:$redis_pid"

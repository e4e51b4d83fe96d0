#!/usr/bin/env bash
# Issue 15's hostile-client probes, kv 2.1.0 on a relive node and a stock
# redis-server in the same run: scripts/probe-large-set.py (a 100 MB SET,
# repeated, with PING clients beside it: the SET's time and every PING's
# latency while it is received, with the sample count) and
# scripts/probe-chunked-array.py (one 1,048,576-element request in 4 KiB
# writes: the server's CPU time); then memory: each server's resident set
# (VmRSS, the whole process) after a FLUSHALL, after redis-benchmark -t set
# -n 1000000 -r 1000000 -d 100 -P 16 (a million SETs of 100-byte values
# over up to a million keys), and after FLUSHALL again.
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
EXTRA_TOOLS=redis-benchmark
# shellcheck source=scripts/redis-pair.sh
source "$root/scripts/redis-pair.sh"

echo "servers on cpu $server_cpus, probe clients on cpu $bench_cpus" >&2
taskset -c "$bench_cpus" python3 "$root/scripts/probe-large-set.py" kv="$kv_port" redis="$redis_port"
echo
taskset -c "$bench_cpus" python3 "$root/scripts/probe-chunked-array.py" kv="$kv_port:$node_pid" redis="$redis_port:$redis_pid"
echo

# The resident set of process $1 in MB.
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# The resident set of process $1 once it has not moved for a second (at most
# 15 s): an allocator may give memory back some time after a free (jemalloc
# decays dirty pages over seconds), so either server gets that time.
settled_rss_mb() {
  local last now steady=0
  last=$(rss_mb "$1")
  for _ in $(seq 30); do
    sleep 0.5
    now=$(rss_mb "$1")
    if [ "$now" = "$last" ]; then steady=$((steady + 1)); else steady=0; fi
    last=$now
    [ "$steady" -ge 2 ] && break
  done
  echo "$last"
}
echo "memory (VmRSS, MB): a million SETs of 100-byte values, then FLUSHALL"
printf '%-6s %8s %12s %8s %15s\n' server start "after SETs" keys "after FLUSHALL"
for server in kv redis; do
  port=$kv_port pid=$node_pid
  [ "$server" = redis ] && port=$redis_port pid=$redis_pid
  # What the probes above stored goes first: each server starts empty.
  redis-cli -p "$port" FLUSHALL >/dev/null
  start=$(settled_rss_mb "$pid")
  taskset -c "$bench_cpus" redis-benchmark -p "$port" -t set -n 1000000 -r 1000000 -d 100 -P 16 -q >/dev/null
  full=$(rss_mb "$pid")
  keys=$(redis-cli -p "$port" DBSIZE)
  redis-cli -p "$port" FLUSHALL >/dev/null
  after=$(settled_rss_mb "$pid")
  printf '%-6s %8s %12s %8s %15s\n' "$server" "$start" "$full" "$keys" "$after"
done

#!/usr/bin/env bash
# Same-run comparison of kv 2.1.0 on a relive node with a stock redis-server:
# redis-benchmark -t set,get,incr at -c 20 and -c 50, -P 1 and -P 16; each
# figure is the median of 3 runs, kv and Redis back to back within each round
# (who goes first alternating) so both see the same machine. Prints the
# median requests per second of each, and for the 12 figures the median of
# the rounds' kv/redis ratios; then the CPU time each server spent per request
# (user + system, all its threads, from /proc/PID/stat) for each of the four
# client settings.
#
# Requests: -n N (REQUESTS, default 200000) at -P 1 and 16 times N at -P 16,
# so that a test lasts about as long (2-3 s here) either way: at -P 16 a
# test of 200000 requests is over in 0.15 s and its figure is mostly noise.
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
# Usage: scripts/compare-redis.sh   (REQUESTS=200000 ROUNDS=3)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
requests=${REQUESTS:-200000}
rounds=${ROUNDS:-3}

SCRIPT_NAME=compare-redis
EXTRA_TOOLS=redis-benchmark
# shellcheck source=scripts/redis-pair.sh
source "$root/scripts/redis-pair.sh"

# The CPU time process $1 has used, in clock ticks (utime + stime of all its
# threads: fields 14 and 15 of /proc/PID/stat; the name field has no spaces
# for either server).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# rps of SET, GET and INCR with -c $3 -P $4 on port $1, then the server's
# (pid $2) CPU microseconds per request over the three: one run of all three
# tests, so one call per (server, clients, pipeline) and round.
run_bench() {
  local n=$((requests * $4)) before after
  before=$(cpu_ticks "$2")
  taskset -c "$bench_cpus" redis-benchmark -p "$1" -t set,get,incr -n "$n" -c "$3" -P "$4" --csv 2>/dev/null |
    python3 -c 'import csv, sys
rows = {r["test"]: r["rps"] for r in csv.DictReader(sys.stdin)}
print(" ".join(rows.get(t, "nan") for t in ("SET", "GET", "INCR")))'
  after=$(cpu_ticks "$2")
  python3 -c "print('%.3f' % (($after - $before) * 1e6 / $(getconf CLK_TCK) / (3 * $n)))"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# The median of the rounds' ratios $1[i] / $2[i] (each round's two runs
# back to back): a slow minute of the machine then moves one round's pair,
# not one server's median alone.
paired_ratio() {
  python3 -c 'import sys
kv, redis = (list(map(float, a.split())) for a in sys.argv[1:3])
ratios = sorted(k / r for k, r in zip(kv, redis) if r)
print("%.2f" % ratios[(len(ratios) - 1) // 2] if ratios else "n/a")' "$1" "$2"
}

echo "kv 2.1.0 on a relive node (port $kv_port) vs redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') (port $redis_port)" >&2
echo "servers on cpu $server_cpus, redis-benchmark on cpu $bench_cpus; -n $requests at -P 1, $((requests * 16)) at -P 16; median of $rounds" >&2
declare -A runs=()
for round in $(seq "$rounds"); do
  for clients in 20 50; do
    for pipeline in 1 16; do
      # Who goes first alternates by round, so neither always runs on
      # the machine the other just warmed.
      servers="kv redis"
      [ $((round % 2)) = 0 ] && servers="redis kv"
      for server in $servers; do
        port=$kv_port pid=$node_pid
        [ "$server" = redis ] && port=$redis_port pid=$redis_pid
        { read -r set get incr; read -r cpu; } < <(run_bench "$port" "$pid" "$clients" "$pipeline")
        runs[$server,$clients,$pipeline,CPU]+="$cpu "
        runs[$server,$clients,$pipeline,SET]+="$set "
        runs[$server,$clients,$pipeline,GET]+="$get "
        runs[$server,$clients,$pipeline,INCR]+="$incr "
      done
    done
  done
  echo "round $round of $rounds done" >&2
done

printf '%-5s %-4s %-4s %14s %14s %8s\n' test "-c" "-P" "kv req/s" "redis req/s" "kv/redis"
for clients in 20 50; do
  for pipeline in 1 16; do
    for test in SET GET INCR; do
      kv=$(echo "${runs[kv,$clients,$pipeline,$test]}" | median)
      redis=$(echo "${runs[redis,$clients,$pipeline,$test]}" | median)
      ratio=$(paired_ratio "${runs[kv,$clients,$pipeline,$test]}" "${runs[redis,$clients,$pipeline,$test]}")
      printf '%-5s %-4s %-4s %14s %14s %8s\n' "$test" "$clients" "$pipeline" "$kv" "$redis" "$ratio"
    done
  done
done

echo
echo "server CPU per request (microseconds, user + system, median of the rounds; SET, GET and INCR together)"
printf '%-4s %-4s %10s %10s %8s\n' "-c" "-P" "kv" "redis" "kv/redis"
for clients in 20 50; do
  for pipeline in 1 16; do
    kv=$(echo "${runs[kv,$clients,$pipeline,CPU]}" | median)
    redis=$(echo "${runs[redis,$clients,$pipeline,CPU]}" | median)
    ratio=$(paired_ratio "${runs[kv,$clients,$pipeline,CPU]}" "${runs[redis,$clients,$pipeline,CPU]}")
    printf '%-4s %-4s %10s %10s %8s\n' "$clients" "$pipeline" "$kv" "$redis" "$ratio"
  done
done

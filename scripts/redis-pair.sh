# Sourced by scripts/compare-redis.sh and scripts/compare-redis-probes.sh:
# builds relive and the kv 2.1.0 release, starts a node running it and a
# stock redis-server (both pinned to the server cores), and removes
# everything on exit, however the script exits. Sets: root, work, relive,
# server_cpus, bench_cpus, kv_port, node_pid, redis_port, redis_pid.
# Expects SCRIPT_NAME (for messages), EXTRA_TOOLS (other commands needed)
# and root.
#
# Cores: on a machine with 2 cores or more, each server (the whole node, every
# thread of it, and redis-server) runs pinned to core 0 and the clients to
# core 1 (taskset), for both; with one core everything shares it. Override
# with SERVER_CPUS / BENCH_CPUS (taskset lists, e.g. "0-1").

for tool in redis-server redis-cli cargo python3 taskset $EXTRA_TOOLS; do
  command -v "$tool" >/dev/null || {
    echo "$SCRIPT_NAME: $tool not found (Debian: apt-get install redis-server redis-tools util-linux)" >&2
    exit 2
  }
done

if [ "$(nproc)" -ge 2 ]; then
  server_cpus=${SERVER_CPUS:-0}
  bench_cpus=${BENCH_CPUS:-1}
else
  server_cpus=${SERVER_CPUS:-0}
  bench_cpus=${BENCH_CPUS:-0}
fi

work="$(mktemp -d -t compare-redis.XXXXXX)"
redis_pid=""
node_root="$work/node"
relive="${CARGO_TARGET_DIR:-$root/target}/release/relive"

cleanup() {
  local status=$?
  if [ -S "$node_root/control.sock" ]; then
    "$relive" node stop --root "$node_root" >/dev/null 2>&1 || true
  fi
  if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
    kill "$redis_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a RESP server answers PING on port $1.
wait_for() {
  for _ in $(seq 200); do
    [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  echo "$SCRIPT_NAME: nothing answers PING on port $1" >&2
  return 1
}

echo "building relive and the kv 2.1.0 release..." >&2
cargo build --release --quiet --bin relive --manifest-path "$root/Cargo.toml"
kv_port=$(free_port)
app="$work/kv-2.1.0"
mkdir -p "$app"
sed -e "s/127\.0\.0\.1:6380/127.0.0.1:$kv_port/" -e "s#crate = \"\.\./\.\./#crate = \"$root/examples/#" \
  "$root/examples/releases/kv-2.1.0/release.toml" >"$app/release.toml"
archive=$("$relive" release build "$app" --out "$work/archives" --target-dir "$root/target/examples")

# The node detaches; its threads inherit the affinity.
started=$(taskset -c "$server_cpus" "$relive" node start --root "$node_root" --boot "$archive")
node_pid=$(echo "$started" | sed -n 's/.*(pid \([0-9]*\)).*/\1/p')
wait_for "$kv_port"

redis_port=$(free_port)
taskset -c "$server_cpus" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --io-threads 1 --daemonize no --logfile "$work/redis.log" &
redis_pid=$!
wait_for "$redis_port"

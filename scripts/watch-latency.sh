#!/usr/bin/env bash
# Edit-to-live latency of `relive watch`: a node runs the counter example
# (examples/releases/counter-1.0.0), watch runs on a temporary copy of the
# counter's crate, and each of 5 edits changes the reply to "Version"; the
# time from the edit (the file written) to the first `relive call` that gets
# the new reply is printed, then the median. Then 30 s without edits: watch
# must build nothing (a build with no change fails the script).
#
#   scripts/watch-latency.sh            # builds the release relive first
#   RELIVE=path/to/relive scripts/watch-latency.sh
#   EDITS=10 IDLE=60 scripts/watch-latency.sh
#
# Everything it starts (node, watch) is stopped on exit, failure included,
# and its temporary directory removed. cargo's output for the module goes to
# target/watch-latency (kept between runs: the first run builds the
# module's dependencies once).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
edits="${EDITS:-5}"
idle="${IDLE:-30}"
if [ -z "${RELIVE:-}" ]; then
  cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin relive
  RELIVE="${CARGO_TARGET_DIR:-$repo/target}/release/relive"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/relive-watch-latency.XXXXXX")"
watch_pid=""
node_root="$work/node"
cleanup() {
  if [ -n "$watch_pid" ] && kill -0 "$watch_pid" 2>/dev/null; then
    kill "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
  fi
  if [ -S "$node_root/control.sock" ]; then
    "$RELIVE" node stop --root "$node_root" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }
fail() {
  echo "watch-latency: $*" >&2
  echo "--- watch stderr:" >&2
  tail -n 30 "$work/watch.err" >&2 || true
  exit 1
}

# The release the node boots, built with the examples' own target dir.
archive="$("$RELIVE" release build "$repo/examples/releases/counter-1.0.0" --out "$work/dist" \
  --target-dir "$repo/target/examples")"

# The counter's source as a crate of its own (against this checkout's
# relive-abi), in an application named like the release the node runs.
app="$work/app"
mkdir -p "$app/counter/src"
cat >"$app/counter/Cargo.toml" <<EOF
[package]
name = "counter"
version = "1.0.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
relive-abi = { path = "$repo/runtime/abi" }
serde = { version = "1", features = ["derive"] }

[workspace]
EOF
lib="$app/counter/src/lib.rs"
cp "$repo/examples/counter-v1/src/lib.rs" "$lib"
grep -q 'Request::Version => ' "$lib" || fail "the counter's Version reply moved; update this script"
cat >"$app/release.toml" <<'EOF'
[release]
name = "counter"
version = "1.0.0"

[[module]]
name = "counter"
crate = "counter"

[[process]]
name = "main_counter"
module = "counter"
args = { label = "main" }
EOF

"$RELIVE" node start --root "$node_root" --boot "$archive" >/dev/null
"$RELIVE" watch "$app" --root "$node_root" --target-dir "$repo/target/watch-latency" \
  >"$work/watch.out" 2>"$work/watch.err" &
watch_pid=$!

deployed() { grep -c ' deployed ' "$work/watch.out" || true; }
builds() { grep -c 'relive watch: building ' "$work/watch.err" || true; }
wait_for_deploys() { # COUNT TIMEOUT_S
  local deadline=$(($(date +%s) + $2))
  while [ "$(deployed)" -lt "$1" ]; do
    kill -0 "$watch_pid" 2>/dev/null || fail "relive watch exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail "no deploy #$1 within $2 s"
    sleep 0.1
  done
}

echo "watch-latency: first build (dependencies on a cold target dir take a while)"
wait_for_deploys 1 900
sleep 1

declare -a latencies
for i in $(seq 1 "$edits"); do
  reply="edit-$i-$$"
  sed -i "s|Request::Version => .*|Request::Version => Reply::Text(\"$reply\".to_string()),|" "$lib"
  start=$(now_ns)
  deadline=$((start + 120000000000))
  while [ "$("$RELIVE" call --root "$node_root" main_counter '"Version"' 2>/dev/null)" != "\"$reply\"" ]; do
    [ "$(now_ns)" -lt "$deadline" ] || fail "edit $i did not answer within 120 s"
    sleep 0.01
  done
  ms=$((($(now_ns) - start) / 1000000))
  latencies+=("$ms")
  wait_for_deploys $((i + 1)) 60
  printf 'edit %d: live in %d ms   (watch: %s)\n' "$i" "$ms" "$(grep ' deployed ' "$work/watch.out" | tail -n 1)"
  sleep 1
done
median=$(printf '%s\n' "${latencies[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
echo "median edit -> new code answering: $median ms over $edits edits"

before=$(builds)
echo "watch-latency: ${idle} s without edits"
sleep "$idle"
idle_builds=$(($(builds) - before))
echo "builds while idle: $idle_builds"
[ "$idle_builds" -eq 0 ] || fail "watch built $idle_builds time(s) with no change"

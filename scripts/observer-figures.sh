#!/usr/bin/env bash
# The observer's two performance figures (docs/observer.md), measured on a
# release build:
#
#   scripts/observer-figures.sh bench [RUNS]
#       `relive bench upgrade` (10,000 counters, 200,000 casts/s) without a
#       page and with the observer page open and streaming from the
#       benchmark's node, alternated RUNS times (default 3) in the same run;
#       prints each run and the medians' ratios. The page is opened in
#       headless Chromium when it is installed (PAGE=curl streams its events
#       with curl instead: the node's side of the cost alone).
#
#   scripts/observer-figures.sh first-load [PROCS]
#       A node running a release of PROCS counter processes (default
#       100,000) with --http: the time of the page's first load, i.e. the
#       page itself, then its event stream up to the first busiest-processes
#       list (release, modules by version, tree, reports and top all drawn),
#       and of each JSON endpoint alone, 5 times each.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
cargo build --release --quiet --bin relive --manifest-path "$repo/Cargo.toml"
relive="$CARGO_TARGET_DIR/release/relive"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "${node_root:-}" ]; then "$relive" node stop --root "$node_root" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
chromium="$(command -v chromium || command -v chromium-browser || true)"

# Opens the page at $1 (with its token) until killed; prints the pid.
open_page() {
  if [ "${PAGE:-chromium}" = chromium ] && [ -n "$chromium" ]; then
    "$chromium" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
      --user-data-dir="$work/profile-$RANDOM" --remote-debugging-port=0 "$1" >/dev/null 2>&1 &
  else
    # The token once in the query: the observer answers with a cookie and
    # a redirect; the event stream then takes the cookie.
    local base="${1%%/\?token=*}" token="${1##*token=}"
    curl -sN -H "Authorization: Bearer $token" "$base/api/events?top=20" >/dev/null &
  fi
  echo $!
}

bench() {
  local runs="${1:-3}" i without with port out page
  : >"$work/without"; : >"$work/with"
  echo "page: $([ "${PAGE:-chromium}" = chromium ] && [ -n "$chromium" ] && echo "headless $chromium" || echo "curl streaming /api/events")"
  for i in $(seq "$runs"); do
    without="$("$relive" bench upgrade --procs 10000 --json 2>/dev/null)"
    echo "without page: $without"
    echo "$without" >>"$work/without"
    port="$(free_port)"
    "$relive" bench upgrade --procs 10000 --json --http "127.0.0.1:$port" \
      --http-token-file "$work/token" --http-wait >"$work/out" 2>"$work/err" &
    local bench_pid=$!
    pids+=("$bench_pid")
    for _ in $(seq 600); do [ -s "$work/token" ] && break; sleep 0.1; done
    page="$(open_page "http://127.0.0.1:$port/?token=$(cat "$work/token")")"
    pids+=("$page")
    wait "$bench_pid" || { cat "$work/err" >&2; exit 1; }
    kill "$page" 2>/dev/null || true
    wait "$page" 2>/dev/null || true
    rm -f "$work/token"
    with="$(cat "$work/out")"
    echo "with page:    $with"
    echo "$with" >>"$work/with"
  done
  for field in total_ms load_ms achieved_rate; do
    local a b
    a="$(python3 -c "import json,sys; [print(json.loads(l)['$field']) for l in open('$work/without') if l.strip()]" | median)"
    b="$(python3 -c "import json,sys; [print(json.loads(l)['$field']) for l in open('$work/with') if l.strip()]" | median)"
    echo "median $field: without $a, with page $b, with/without $(python3 -c "print(f'{$b / $a:.3f}')")"
  done
  for field in mean p99 max; do
    local a b
    a="$(python3 -c "import json,sys; [print(json.loads(l)['pause_us']['$field']) for l in open('$work/without') if l.strip()]" | median)"
    b="$(python3 -c "import json,sys; [print(json.loads(l)['pause_us']['$field']) for l in open('$work/with') if l.strip()]" | median)"
    echo "median pause $field µs: without $a, with page $b, with/without $(python3 -c "print(f'{$b / $a:.3f}')")"
  done
}

first_load() {
  local procs="${1:-100000}" port app
  app="$work/app"
  mkdir -p "$app"
  cat >"$app/release.toml" <<EOF
[release]
name = "crowd"
version = "1.0.0"

[[module]]
name = "counter"
crate = "$repo/examples/counter-v1"

[[process]]
name = "counter"
module = "counter"
restart = "permanent"
instances = $procs
args = { label = "crowd" }
EOF
  local archive
  archive="$("$relive" release build "$app" --out "$work/archives" --target-dir "$CARGO_TARGET_DIR/examples")"
  node_root="$work/root"
  port="$(free_port)"
  "$relive" node start --root "$node_root" --boot "$archive" --http "127.0.0.1:$port" >/dev/null
  local token base
  token="$(cat "$node_root/run/http.token")"
  base="http://127.0.0.1:$port"
  for _ in $(seq 600); do
    curl -sf -H "Authorization: Bearer $token" "$base/api/processes?top=1" |
      python3 -c "import json,sys; sys.exit(0 if json.load(sys.stdin)['total'] >= $procs else 1)" && break
    sleep 0.2
  done
  echo "node: $(curl -s -H "Authorization: Bearer $token" "$base/api/processes?top=1" | python3 -c "import json,sys; print(json.load(sys.stdin)['total'])") processes"
  # The page, then its event stream up to the first busiest-processes
  # list (it sends live, status, reports, then top: all is drawn then).
  python3 - "$port" "$token" <<'PY'
import http.client, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
auth = {"Authorization": "Bearer " + token}
for i in range(1, 6):
    started = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/", headers=auth)
    c.getresponse().read()
    page = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/api/events?top=20&order=mailbox", headers=auth)
    stream, size = c.getresponse(), 0
    while True:
        line = stream.readline()
        size += len(line)
        if not line or line.startswith(b"event: top"):
            break
    size += len(stream.readline()); done = time.perf_counter()
    c.close()
    print(f"first load {i}: {(done - started) * 1000:.0f} ms (page {(page - started) * 1000:.0f} ms, "
          f"events up to the first top list {(done - page) * 1000:.0f} ms, {size} bytes)")
PY
  # What one page streaming costs the node: CPU time of the observer's
  # threads (relive-observer, relive-observer-io) over 10 s of streaming,
  # against the whole node's in the same 10 s.
  local pid
  pid="$(python3 -c "import json,sys; print(json.load(sys.stdin)['node']['pid'])" < <(curl -s -H "Authorization: Bearer $token" "$base/api/status"))"
  cpu() { # $1: observer|node -> clock ticks (utime + stime)
    local sum=0 task name
    for task in /proc/"$pid"/task/*; do
      name="$(cat "$task/comm" 2>/dev/null || true)"
      if [ "$1" = node ] || [[ "$name" == relive-observer* ]]; then
        sum=$((sum + $(awk '{ print $14 + $15 }' "$task/stat" 2>/dev/null || echo 0)))
      fi
    done
    echo "$sum"
  }
  local o0 n0 o1 n1 hz stream
  hz="$(getconf CLK_TCK)"
  curl -sN -H "Authorization: Bearer $token" "$base/api/events?top=20" >/dev/null &
  stream=$!
  pids+=("$stream")
  sleep 1
  o0="$(cpu observer)"; n0="$(cpu node)"
  sleep 10
  o1="$(cpu observer)"; n1="$(cpu node)"
  kill "$stream" 2>/dev/null || true
  echo "one page streaming for 10 s: observer threads $(( (o1 - o0) * 1000 / hz )) ms CPU ($(python3 -c "print(f'{($o1 - $o0) / $hz / 10 * 100:.2f}')")% of one core), whole node $(( (n1 - n0) * 1000 / hz )) ms CPU"
  for endpoint in "/api/status" "/api/processes?top=20&order=mailbox" "/api/processes?top=20&order=memory&filter=counter-9" "/api/reports" "/api/releases"; do
    local times="" size=0
    for i in 1 2 3 4 5; do
      read -r t size < <(curl -s -o /dev/null -w '%{time_total} %{size_download}\n' -H "Authorization: Bearer $token" "$base$endpoint")
      times="$times $(python3 -c "print(round($t * 1000, 1))")"
    done
    echo "GET $endpoint: ${times# } ms ($size bytes)"
  done
}

case "${1:-}" in
  bench) bench "${2:-3}" ;;
  first-load) first_load "${2:-100000}" ;;
  *) echo "usage: $(basename "$0") bench [RUNS] | first-load [PROCS]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Same-run comparison of relive with its peers (../shared/peers): each
# figure is the median of 3 runs, relive and peers interleaved so they see
# the same machine. Usage: scripts/compare-peers.sh [ring|spawn|call ...]
#   PEERS="beam tokio actix" (default; add ractor kameo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The peers' benchmarks (BEAM, tokio, actix, ractor, kameo: the same
# workloads, each with a figures.sh that builds and measures one) are not
# part of this repository; PEERS_DIR names a copy (default: peers/ in the
# directory that holds the checkout, where the maintainers keep theirs).
peers_dir="${PEERS_DIR:-$root/../shared/peers}"
figures="$peers_dir/figures.sh"
[ -x "$figures" ] || { echo "$(basename "$0"): no peers' benchmarks at $peers_dir (figures.sh missing): set PEERS_DIR to a directory holding them; relive's own figures need none: cargo run --release -- bench ring|spawn|call|upgrade --json" >&2; exit 2; }
peers=${PEERS:-"beam tokio actix"}
benches=${*:-"ring spawn call"}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
relive="$root/target/release/relive"

median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
relive_fig() { # bench key
  case "$1" in
    ring) "$relive" bench ring --json ;; spawn) "$relive" bench spawn --json ;; call) "$relive" bench call --json ;;
  esac | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
peer_fig() { # peer bench key
  if [ "$1" = beam ]; then
    case "$3" in msgs_per_sec|bytes_per_proc|mean_us) "$figures" beam "$2" ;; *) echo nan ;; esac
  else "$figures" "$1" "$2" "$3"; fi
}

for bench in $benches; do
  case "$bench" in
    ring) keys="msgs_per_sec" ;; spawn) keys="bytes_per_proc seconds" ;; call) keys="mean_us p99_us" ;;
    *) echo "unknown bench $bench" >&2; exit 2 ;;
  esac
  for key in $keys; do
    declare -A runs=()
    for _ in 1 2 3; do
      runs[relive]+="$(relive_fig "$bench" "$key") "
      for p in $peers; do runs[$p]+="$(peer_fig "$p" "$bench" "$key") "; done
    done
    r=$(echo "${runs[relive]}" | tr ' ' '\n' | grep . | median)
    printf '%-6s %-15s relive %-12s' "$bench" "$key" "$r"
    for p in $peers; do
      v=$(echo "${runs[$p]}" | tr ' ' '\n' | grep . | median)
      printf ' %s %s (x%s)' "$p" "$v" "$(python3 -c "r,v=$r,float('$v'); print('%.2f' % (r/v) if v==v and v else 'n/a')")"
    done
    echo
    unset runs
  done
done

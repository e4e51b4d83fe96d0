#!/usr/bin/env bash
# Same-run comparison of `relive bench upgrade` with BEAM doing the same
# (../shared/peers/beam/upgrade.erl: 10,000 gen_servers, 200,000 casts/s;
# BEAM's figure is the best of its four orders), alternated 3 times.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The peers' benchmarks (BEAM, tokio, actix, ractor, kameo: the same
# workloads, each with a figures.sh that builds and measures one) are not
# part of this repository; PEERS_DIR names a copy (default: peers/ in the
# directory that holds the checkout, where the maintainers keep theirs).
peers_dir="${PEERS_DIR:-$root/../shared/peers}"
figures="$peers_dir/figures.sh"
[ -x "$figures" ] || { echo "$(basename "$0"): no peers' benchmarks at $peers_dir (figures.sh missing): set PEERS_DIR to a directory holding them; relive's own figures need none: cargo run --release -- bench ring|spawn|call|upgrade --json" >&2; exit 2; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
for i in 1 2 3; do
  echo "relive $("$root/target/release/relive" bench upgrade --procs 10000 --json 2>/dev/null)"
  echo "beam_total_ms $("$figures" beam upgrade)"
  echo "beam_p99_us $("$figures" beam upgrade-pause)"
done

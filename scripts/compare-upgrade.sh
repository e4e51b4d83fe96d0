#!/usr/bin/env bash
# Same-run comparison of `relive bench upgrade` with BEAM doing the same
# (../shared/peers/beam/upgrade.erl: 10,000 gen_servers, 200,000 casts/s;
# BEAM's figure is the best of its four orders), alternated 3 times.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
figures="$root/../shared/peers/figures.sh"
[ -x "$figures" ] || { echo "compare-upgrade: $figures not found (shared/ beside the checkout)" >&2; exit 2; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
for i in 1 2 3; do
  echo "relive $("$root/target/release/relive" bench upgrade --procs 10000 --json 2>/dev/null)"
  echo "beam_total_ms $("$figures" beam upgrade)"
  echo "beam_p99_us $("$figures" beam upgrade-pause)"
done

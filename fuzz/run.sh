#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) from the seeds in fuzz/seeds/,
# with a scratch corpus; fails on the first crash. `fuzz/run.sh 600` is a long run.
# Needs the nightly toolchain and cargo-fuzz (`.ci/run` installs both).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$target"
  echo "fuzz: $target for ${secs}s"
  cargo +nightly fuzz run -O "$target" "$work/$target" "seeds/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY|Done)' || true
  # A crash leaves an artifact: fail on it.
  if ls artifacts/"$target"/crash-* artifacts/"$target"/oom-* artifacts/"$target"/timeout-* >/dev/null 2>&1; then
    echo "fuzz: $target found a failure: see fuzz/artifacts/$target/" >&2
    exit 1
  fi
done

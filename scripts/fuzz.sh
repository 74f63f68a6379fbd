#!/usr/bin/env bash
# Runs every cargo-fuzz target for a set time (default 60 s each; `scripts/fuzz.sh 600`), growing
# fuzz/corpus/<target>/, and prints the executions per target. Needs the nightly toolchain and
# cargo-fuzz (`cargo +nightly install cargo-fuzz`). A crash leaves its input in
# fuzz/artifacts/<target>/: copy it into the corpus once fixed, so the tests replay it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^weft-fuzz$')
printf '%-16s %14s %10s %8s\n' target execs execs/s crashes
for target in $targets; do
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1)
  crashes=$(ls "artifacts/$target" 2>/dev/null | wc -l)
  printf '%-16s %14s %10s %8s\n' "$target" "${execs:-?}" "$(( ${execs:-0} / seconds ))" "$crashes"
  if [ "$status" != 0 ]; then
    echo "  $target stopped with status $status; its log:"
    tail -30 "$log" | sed 's/^/  /'
  fi
  rm -f "$log"
done

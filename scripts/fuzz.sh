#!/usr/bin/env bash
# Runs every cargo-fuzz target for a set time (default 60 s each; `scripts/fuzz.sh 600`), or until
# a number of executions when one is given second (`scripts/fuzz.sh 900 10000000`: 10M runs, at
# most 900 s), growing fuzz/corpus/<target>/, and prints the executions per target.
# FUZZ_TARGETS="lease nft_rule" runs only those; FUZZ_SANITIZER=none builds without
# AddressSanitizer (for targets over safe code only: several times the executions). Needs the nightly toolchain and
# cargo-fuzz (`cargo +nightly install cargo-fuzz`). A crash leaves its input in
# fuzz/artifacts/<target>/: copy it into the corpus once fixed, so the tests replay it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
runs="${2:-}"
targets="${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^weft-fuzz$')}"
printf '%-16s %14s %10s %8s\n' target execs execs/s crashes
for target in $targets; do
  log=$(mktemp)
  status=0
  limits=(-max_total_time="$seconds")
  [ -n "$runs" ] && limits+=(-runs="$runs")
  started=$(date +%s)
  cargo +nightly fuzz run -s "${FUZZ_SANITIZER:-address}" "$target" "corpus/$target" -- "${limits[@]}" -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  took=$(( $(date +%s) - started )); [ "$took" -gt 0 ] || took=1
  execs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1)
  # No artifacts directory yet on a fresh clone: `ls` fails, and pipefail must not end the run.
  crashes=$( (ls "artifacts/$target" 2>/dev/null || true) | wc -l)
  printf '%-16s %14s %10s %8s\n' "$target" "${execs:-?}" "$(( ${execs:-0} / took ))" "$crashes"
  if [ "$status" != 0 ]; then
    echo "  $target stopped with status $status; its log:"
    tail -30 "$log" | sed 's/^/  /'
  fi
  rm -f "$log"
done

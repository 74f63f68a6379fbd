#!/usr/bin/env bash
# Records which functions a weft agent runs, for the linker to lay them out first:
# link/symbol-order.txt, which build.rs hands to rust-lld in optimised builds. A dist binary
# without it keeps ~12 MB of code resident for ~2 MB that runs (see build.rs).
#
# Run it as root after changing rustc, Cargo.lock or the agent's hot path, and commit the file.
# It builds dist once without the order (~4 minutes after a first dist build), then runs the
# dataplane benchmark's agent on 1,000 vxlan leases (etcd, netlink, the watcher, the data plane)
# under callgrind. Needs valgrind (apt-get install valgrind) and what the benchmark needs
# (scripts/setup.sh --tests). Names another build does not have are skipped by the linker, so a
# stale file costs memory, never a failed build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The binary as it ships, but laid out without an order: its names are what the file lists.
WEFT_SYMBOL_ORDER=off cargo build --profile dist --bin weft
cp "${CARGO_TARGET_DIR:-target}/dist/weft" "$work/weft"
bench=$(cargo bench --profile dev --bench dataplane --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message.get("target", {}).get("name") == "dataplane":
        print(message["executable"])')
WEFT_BENCH_SIZES=1000 WEFT_BENCH_AGENT="$work/weft" \
    WEFT_BENCH_AGENT_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p --demangle=no --dump-instr=no --compress-strings=no" \
    "$bench" --memory

# The functions of the binary that ran (Rust's, std's and the C code linked in; a recursive call
# shows as name'2), in the binary's own order, so that what calls what stays near.
grep -h '^fn=' "$work"/callgrind.* | sed -e 's/^fn=//' -e "s/'[0-9]*\$//" | sort -u > "$work/ran"
nm --defined-only -n "$work/weft" |
    awk 'NR == FNR { ran[$1] = 1; next } ($2 == "t" || $2 == "T") && ($3 in ran) { print $3 }' "$work/ran" - \
        > link/symbol-order.txt
echo "symbol-order: $(wc -l < link/symbol-order.txt) functions in link/symbol-order.txt"

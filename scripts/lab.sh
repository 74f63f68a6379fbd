#!/usr/bin/env bash
# Builds weft and starts the lab: hosts made of network namespaces on this machine, each running
# a weft agent, their pods reaching each other. `weft lab down` (or scripts/lab.sh down) ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin weft
exec target/release/weft lab "${@:-up}"

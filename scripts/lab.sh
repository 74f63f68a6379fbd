#!/usr/bin/env bash
# Builds weft and starts the lab: hosts made of network namespaces on this machine, each running
# a weft agent, their pods reaching each other. `weft lab down` (or scripts/lab.sh down) ends it.
# The lab needs only the kernel backends: the build leaves the cloud and Kubernetes SDKs out
# (--no-default-features), which makes it several times faster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --no-default-features --bin weft
exec target/release/weft lab "${@:-up}"

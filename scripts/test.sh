#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests (real etcd, network
# namespaces, real packets). Needs root for the namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast -- --test-threads 2
# terraform fmt, checkov and kubernetes-validate on the deployment files.
scripts/check-deploy.sh

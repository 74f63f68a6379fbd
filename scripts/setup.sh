#!/usr/bin/env bash
# Installs what weft's build, lab and tests need on a Debian machine (run as root).
# Safe to run again: apt-get skips what is already there.
set -euo pipefail

packages=(
  build-essential pkg-config protobuf-compiler   # etcd-client's build, libnftnl bindings
  libnftnl-dev libmnl-dev                         # nftables masquerade
  etcd-server etcd-client                         # the real etcd the tests run
  iproute2 iputils-ping nftables                  # lab and tests inspect with ip/nft, ping pods
  containernetworking-plugins                     # real CNI plugins for weft-cni tests
  python3-venv                                    # moto (EC2 model) for the aws-vpc tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

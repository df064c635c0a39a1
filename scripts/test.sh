#!/usr/bin/env bash
# Sets up everything (idempotent) and runs the whole test suite; extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"

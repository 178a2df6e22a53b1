#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite in parallel. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"

#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the sandbox: Azurite + both API emulators + the app, and prints a report.
# `scripts/sandbox.sh --serve` keeps everything running afterwards for you to call.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m sandbox "$@"

#!/usr/bin/env bash
# Sets up everything the sandbox and the tests need, on a fresh machine or again (fast when nothing changed):
#   .venv          Python >= 3.11 with requirements-dev.txt (runtime + test tools)
#   node_modules   Azurite (package.json; Core Tools is optional and skipped without internet)
#   .venv-indexer  Python 3.13 with azure-functions-runtime, to index the app with the real worker's indexer
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

runs_313() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' >/dev/null 2>&1; }

find_python313() {
  # A pyenv shim may exist on PATH without a selected 3.13: check that the candidate really runs.
  if command -v python3.13 >/dev/null 2>&1 && runs_313 python3.13; then command -v python3.13; return 0; fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$' | sort -V -r); do
      p=$(PYENV_VERSION="$v" pyenv which python3.13 2>/dev/null) && [ -x "$p" ] && runs_313 "$p" && { echo "$p"; return 0; }
    done
  fi
  return 1
}

stamp_ok() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

PY=$(pick_python) || { say "Python >= 3.11 is required (set PYTHON=/path/to/python3.11+)"; exit 1; }
command -v node >/dev/null 2>&1 || { say "Node.js >= 18 is required (for Azurite)"; exit 1; }
node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' || { say "Node.js >= 18 is required"; exit 1; }

want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
if ! stamp_ok .venv "$want" || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
  say "creating .venv with $("$PY" --version)"
  rm -rf .venv
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  echo "$want" > .venv/.stamp
fi

want_npm=$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
if ! stamp_ok node_modules "$want_npm" || [ ! -x node_modules/.bin/azurite ]; then
  say "installing npm packages (Azurite)"
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  else
    npm install --no-audit --no-fund --loglevel=error >/dev/null
  fi
  echo "$want_npm" > node_modules/.stamp
fi

want_idx=$(cat requirements.txt | sha256sum | cut -c1-16)
if ! stamp_ok .venv-indexer "$want_idx"; then
  if PY313=$(find_python313); then
    say "creating .venv-indexer with $("$PY313" --version) (azure-functions-runtime)"
    rm -rf .venv-indexer
    "$PY313" -m venv .venv-indexer
    .venv-indexer/bin/python -m pip install --quiet --upgrade pip >/dev/null
    .venv-indexer/bin/python -m pip install --quiet azure-functions-runtime -r requirements.txt
    echo "$want_idx" > .venv-indexer/.stamp
  else
    say "Python 3.13 not found: the worker-indexer test will fail until it is installed (e.g. pyenv install 3.13)"
  fi
fi

#!/usr/bin/env bash
# The fresh-machine test command: make (or reuse) .venv, install hfpl-jax with the test extra, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup -q "$@"

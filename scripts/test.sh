#!/usr/bin/env bash
# Set up (idempotent), then lint and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --test

.venv/bin/ruff check .

rc=0
.venv/bin/pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": a broken collection must never look like a pass.
  echo "ERROR: pytest collected no tests (exit 5): failing on purpose" >&2
  exit 1
fi
exit "$rc"

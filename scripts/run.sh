#!/usr/bin/env bash
# Set up (idempotent, runtime needs only), then run the bridge. Arguments go to `obscura run`,
# e.g. ./scripts/run.sh --config /etc/obscura/obscura.toml
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --run
exec .venv/bin/obscura run "$@"

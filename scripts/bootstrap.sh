#!/usr/bin/env bash
# Create .venv and install temporal-shield into it with the given extras.
# Usage: scripts/bootstrap.sh EXTRAS   (e.g. "demo" or "dev")
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-demo}
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# editable_mode=strict links the mapped package folders into a static tree, so
# both imports and mypy see the `temporal_shield` namespace (GUIDE §2).
.venv/bin/python -m pip install --quiet -e ".[${extras}]" --config-settings editable_mode=strict

#!/usr/bin/env bash
# Quick start, command 2: install everything the suite needs, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
echo "== ruff"; .venv/bin/ruff check .
echo "== ruff format"; .venv/bin/ruff format --check .
echo "== mypy --strict"; .venv/bin/mypy -p temporal_shield -p tests -p bench
echo "== pytest"; .venv/bin/pytest "$@"

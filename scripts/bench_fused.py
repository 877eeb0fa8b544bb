"""Entry point of the benchmark: one fused-linear distillation loss, ours against Liger's fused-linear JSD and TRL's chunked divergence, checked against fp64 (taid_vlm/bench/fused.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.fused import main

if __name__ == "__main__":
    sys.exit(main())

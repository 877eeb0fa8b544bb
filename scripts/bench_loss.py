"""Entry point of the benchmark: the chunked loss engine against the plain path and the GEMM floor (taid_vlm/bench/loss.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.loss import main

if __name__ == "__main__":
    sys.exit(main())

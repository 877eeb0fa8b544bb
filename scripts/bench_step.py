"""Entry point of the benchmark: one training step of a demo-sized pair, chunked engine against plain logits (taid_vlm/bench/step.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.step import main

if __name__ == "__main__":
    sys.exit(main())

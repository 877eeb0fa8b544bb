"""Entry point of the benchmark: one optimizer step on LLaVA-Instruct-shaped lengths, padded, length-grouped and packed, against TRL (taid_vlm/bench/padding.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.padding import main

if __name__ == "__main__":
    sys.exit(main())

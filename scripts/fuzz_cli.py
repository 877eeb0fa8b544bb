"""Entry point of the benchmark: bad inputs through the real taid-vlm CLI, one verdict each (taid_vlm/bench/fuzz_cli.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.fuzz_cli import main

if __name__ == "__main__":
    sys.exit(main())

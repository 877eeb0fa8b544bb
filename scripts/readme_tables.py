"""Entry point of the benchmark: the generated result blocks of README.md and docs/results/README.md (taid_vlm/bench/tables.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.tables import main

if __name__ == "__main__":
    sys.exit(main())

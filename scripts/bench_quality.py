"""Entry point of the benchmark: quality on the synthetic scenes: the loss zoo, the capacity gap, TAID's settings (taid_vlm/bench/quality/__init__.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.quality import main

if __name__ == "__main__":
    sys.exit(main())

"""Entry point of the benchmark: one candidate configuration of the demo, measured end to end (taid_vlm/bench/sizing.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.sizing import main

if __name__ == "__main__":
    sys.exit(main())

"""Entry point of the benchmark: distill's start-up on 20,000 and 200,000 LLaVA records (taid_vlm/bench/data_scale.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.data_scale import main

if __name__ == "__main__":
    sys.exit(main())

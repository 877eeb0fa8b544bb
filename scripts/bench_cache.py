"""Entry point of the benchmark: the offline teacher cache: its cost per token, the step time it saves, its students' quality (taid_vlm/bench/cache.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.cache import main

if __name__ == "__main__":
    sys.exit(main())

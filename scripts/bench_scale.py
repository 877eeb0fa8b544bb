"""Entry point of the benchmark: precision, checkpointing and sharding in real steps at Qwen2-VL-2B widths (taid_vlm/bench/scale.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.scale import main

if __name__ == "__main__":
    sys.exit(main())

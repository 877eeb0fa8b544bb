"""Entry point of the benchmark: one forward-KL step, taid-vlm against TRL's distillation trainers (taid_vlm/bench/vs_trl.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.vs_trl import main

if __name__ == "__main__":
    sys.exit(main())

"""Entry point of the benchmark: generation speed, the Hugging Face backend against vLLM on the same model and prompts (taid_vlm/bench/generation.py; `--help` says how to run it)."""

import sys

from taid_vlm.bench.generation import main

if __name__ == "__main__":
    sys.exit(main())

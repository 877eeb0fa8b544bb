import os

# Nothing in the suite may reach a hub: without these, hub calls retry for ~30 s each.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No GPU in CI: Triton kernels (taid_vlm/losses/triton_chunk.py) run in Triton's interpreter,
# which Triton chooses once, when it is imported: set before anything imports it. Nothing picks
# the interpreter by itself (chunk_kernel: auto is torch on CPU); tests/test_triton_chunk.py asks.
os.environ.setdefault("TRITON_INTERPRET", "1")

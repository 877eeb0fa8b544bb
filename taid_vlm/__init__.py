"""taid-vlm: distil compact vision-language models and LLMs with TAID.

Layers (lower never imports higher): ``losses`` (tensor math) -> ``models`` (adapters)
-> ``data`` (records, loaders, generators) -> ``train`` / ``eval`` -> ``cli``.
"""

__version__ = "0.1.0"

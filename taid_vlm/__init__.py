"""taid-vlm: distil compact vision-language models and LLMs with TAID.

Layers (lower never imports higher): ``losses`` (tensor math) and ``data`` (records,
loaders, generators; no model code) -> ``models`` (adapters that render records with each
model's own processor) -> ``train`` / ``eval`` -> ``cli``.
"""

__version__ = "0.1.0"

"""taid-vlm: distil compact vision-language models and LLMs with TAID.

Layers, bottom to top (a module imports only its own package and lower layers; tests/test_layers.py):
``errors``, ``files``, ``flags`` < ``losses`` (tensor math), ``data`` (records, loaders of real
formats) < ``models`` (adapters that render records with each model's own processor) <
``teacher_server`` (a teacher served by vLLM) < ``teacher_cache``, ``testing`` < ``train`` <
``eval`` < ``demo`` (with the synthetic scenes set) < ``cli`` < ``bench`` (the benchmarks).
"""

__version__ = "0.1.0"

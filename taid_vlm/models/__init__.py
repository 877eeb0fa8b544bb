from . import composed as _composed  # noqa: F401  (registers the composed VLM with the Auto classes)
from .adapter import ModelAdapter, RenderedBatch
from .loading import (ModelLoadError, adapt, check_alignment, check_vocab_compatible, is_composed_spec, load,
                      load_model)
from .outputs import ResponseOutputs

"""The synthetic scenes set behind ``taid-vlm data shapes`` and the demo: coloured shapes on a
canvas, questions in families with every valid answer, and five reference captions per scene.

It lives with the demo, its main user, rather than beside the loaders of real formats in
``data/``: it writes files in those formats and reads nothing but its own settings.
"""

from .dataset import GENERATOR_VERSION, format_summary, generate_shapes, refuse_to_replace
from .questions import FAMILIES, MULTI_ANSWER_FAMILIES

__all__ = ["FAMILIES", "GENERATOR_VERSION", "MULTI_ANSWER_FAMILIES", "format_summary", "generate_shapes",
           "refuse_to_replace"]

"""The fixed prompt texts shared by the generator (training turns) and the eval harness.

Training and evaluation must ask the same way, or a small model is scored on a prompt it
never saw. These follow the conventions of LLaVA-1.5 / lmms-eval (see docs/EVALUATION.md).
"""

VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
# The text-only variant of the synthetic scenes describes the scene instead of showing it.
TEXT_CAPTION_PROMPT = "Provide a one-sentence caption for the described scene."

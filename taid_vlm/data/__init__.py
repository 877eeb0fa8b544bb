"""Records and loaders for real formats (the synthetic scenes generator is ``demo/shapes``). No model code."""

from .errors import DataError, SkippedRecordsWarning
from .hf import iter_hf_records
from .loaders import (
    detect_format,
    iter_records,
    load_caption_eval,
    load_chat,
    load_llava,
    load_records,
    load_vqa_eval,
)
from .prompts import CAPTION_PROMPT, TEXT_CAPTION_PROMPT, VQA_SUFFIX
from .records import IMAGE_PLACEHOLDER, Record, load_image
from .table import VALIDATE_IMAGES, RecordTable, open_records
from .truncate import fit_prompt, fit_prompts

__all__ = [
    "CAPTION_PROMPT", "DataError", "IMAGE_PLACEHOLDER", "Record",
    "SkippedRecordsWarning", "TEXT_CAPTION_PROMPT", "VQA_SUFFIX", "detect_format", "fit_prompt", "fit_prompts",
    "iter_hf_records", "iter_records", "load_caption_eval", "load_chat",
    "load_image", "load_llava", "load_records", "load_vqa_eval", "open_records", "RecordTable", "VALIDATE_IMAGES",
]

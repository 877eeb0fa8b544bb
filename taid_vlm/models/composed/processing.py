"""Processor of the composed VLM: images resized and normalised for the encoder, each ``<image>``
placeholder expanded to ``num_image_tokens`` image tokens, text tokenised.

Built on transformers' ``ProcessorMixin`` so it saves next to the model and reloads with
``AutoProcessor.from_pretrained``; the chat template is the tokenizer's (ChatML for tokenizers
trained by :func:`taid_vlm.models.tokenizer.train_bpe_tokenizer`).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling

from ..tokenizer import IMAGE_TOKEN
from .configuration import ComposedVLMConfig
from .vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


class ComposedVLMImageProcessor(TorchvisionBackend):
    """Square resize to the model's image size, rescale to [0, 1], normalise with the encoder's
    mean/std. No crop: synthetic scenes put objects near the borders."""

    resample = PILImageResampling.BICUBIC
    image_mean = list(OPENAI_CLIP_MEAN)
    image_std = list(OPENAI_CLIP_STD)
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True


class ComposedVLMProcessor(ProcessorMixin):
    """``processor(text=[...], images=[...], padding=True, return_tensors="pt")`` ->
    ``input_ids``, ``attention_mask``, ``pixel_values`` (one image per placeholder, reading order).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int = 49,
        image_token: str = IMAGE_TOKEN,
        chat_template: str | None = None,
        **kwargs,
    ):
        if tokenizer is None or image_processor is None:
            raise ValueError("ComposedVLMProcessor needs both an image_processor and a tokenizer")
        self.num_image_tokens = int(num_image_tokens)
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.image_token_id = image_token_id_of(tokenizer, self.image_token)
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens


def image_token_id_of(tokenizer: PreTrainedTokenizerBase, image_token: str = IMAGE_TOKEN) -> int:
    """The id of the ``<image>`` token, which must be a single special token of the vocabulary."""
    ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(ids) != 1 or image_token not in tokenizer.get_vocab():
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no single {image_token!r} token; add it as a special "
            "token (train_bpe_tokenizer does) before building a composed VLM with it"
        )
    return ids[0]


def build_processor(config: ComposedVLMConfig, tokenizer: PreTrainedTokenizerBase) -> ComposedVLMProcessor:
    """The processor that matches a model config: its image size, normalisation and token count."""
    image_processor = ComposedVLMImageProcessor(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=list(config.image_mean or OPENAI_CLIP_MEAN),
        image_std=list(config.image_std or OPENAI_CLIP_STD),
    )
    return ComposedVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=config.num_image_tokens,
    )

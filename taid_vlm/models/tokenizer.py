"""Offline tokenizers and chat templates.

Nothing here reaches a hub: a byte-level BPE is trained with ``tokenizers`` on project text
(the synthetic scenes' own sentences, or any iterable a user passes) and wrapped as a
transformers ``PreTrainedTokenizerFast`` so it saves and reloads like any checkpoint's tokenizer.
Byte-level means every string is encodable: no unknown tokens, ever.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|begin|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, TURN_START, TURN_END, IMAGE_TOKEN]

# ChatML: the template of Qwen2(-VL) and InternVL2 students. The assistant turn ends with
# <|im_end|>, which is part of the distilled response so the student learns when to stop.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The documented default for a tokenizer that ships no chat template. Plain text markers, so it
# works with any vocabulary; the assistant turn ends with the tokenizer's eos token.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n' }}"
    "{% else %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)

# A little general text so a tokenizer trained for tests still covers everyday words.
BASE_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A small red circle is left of a large blue "
    "square. How many green triangles are there? There are two yellow objects above the gray "
    "star. Answer the question using a single word or phrase. Provide a one-sentence caption "
    "for the provided image. Yes. No. Zero one two three four five six seven eight nine ten. "
    "0 1 2 3 4 5 6 7 8 9 10. system user assistant. Describe the picture. What colour is the shape? What shape is it? "
    "Is there a purple hexagon below the orange diamond? The scene contains several objects."
)


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    chat_template: str = CHATML_TEMPLATE,
    extra_special_tokens: Iterable[str] = (),
    *,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
    bos_token: str = BOS_TOKEN,
    eos_token: str = TURN_END,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (plus BASE_CORPUS) and wrap it for transformers.

    Special tokens (pad, bos, ChatML turn markers, ``<image>``) get the first ids, so two
    tokenizers trained on the same text with the same size are identical: that is how a
    teacher and a student built offline share a vocabulary. Another size, other
    ``special_tokens`` (in another order) or other bos/eos give a tokenizer of another family on
    the same text, as a cross-tokenizer pair has (docs/CROSS-TOKENIZER.md); ``special_tokens``
    must hold the pad token, ``bos_token``, ``eos_token`` and ``<image>``.
    """
    base = list(special_tokens)
    missing = [t for t in (PAD_TOKEN, bos_token, eos_token, IMAGE_TOKEN) if t not in base]
    if missing:
        raise ValueError(f"train_bpe_tokenizer: special_tokens must include {missing}")
    specials = base + [t for t in extra_special_tokens if t not in base]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_with_base_corpus(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _with_base_corpus(texts: Iterable[str]) -> Iterable[str]:
    yield BASE_CORPUS
    yield from texts

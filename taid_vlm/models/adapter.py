"""One interface for teacher and student: render records with the model's own processor, run it,
and hand back the response tokens only.

Teacher and student see the same records through different processors: different image sizes,
image-token expansions, chat templates and therefore different ``input_ids``. What they share is
the assistant text. The adapter finds it robustly:

1. render each record with the model's chat template to text and record the character span of
   every assistant message's content plus the end-of-turn marker the template writes right after
   it (``<|im_end|>``, ``<end_of_utterance>``, eos...), so a student learns to stop;
2. tokenize through the processor, which expands each image placeholder into N image tokens;
   the processor reports where it expanded (``text_replacement_offsets``) and the tokenizer
   where each token came from (``offset_mapping``), so character spans map to token positions
   exactly, whatever the expansion.

Cross-attention images (Mllama, ``images_expand=False``) are not expanded: each stays one
``<|image|>`` token, so every response sits at the same distance from the end of the tokenized
text as in the template's own text (the processor may still prepend a bos). A prefix/suffix processor
(PaliGemma, ``prompt_format="prefix_suffix"``) has no chat template: the answer goes in as the
processor's ``suffix`` and its tokens (``token_type_ids`` 1) are the response.

The forward pass then returns, for those positions only and in (record, turn, token) order, the
final hidden state that predicts each token plus the LM head and its final-logit softcap (or
logits when the head scales them otherwise). Image tokens and prompt tokens never reach the loss.
``render(..., pack=True)`` renders each record alone and lays them end to end in padding-free rows
(models/packing.py); the forward pass then returns the same tokens in the same order.
"""

from __future__ import annotations

import bisect
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.errors import DataError
from ..data.records import IMAGE_PLACEHOLDER, Record
from .families import (
    Family, final_hidden_states, head_is_linear, head_softcap, image_token_ids, prefix_and_suffix, template_messages,
    uses_content_parts,
)  # fmt: skip
from .lora import effective_head
from .outputs import ResponseOutputs
from .packing import VARLEN_ATTENTION, Piece, attention_of, attention_weight, canonical_order, pack, packing_problem
from .tokenizer import PLAIN_TEMPLATE

ROLES = ("teacher", "student")
Span = tuple[int, int]
# Passed to every chat template (ignored by those that do not read them). Records hold answers,
# not reasoning: a thinking template (Qwen3, Qwen3.5) renders a finished answer after an empty
# <think></think> block, and with thinking off its generation prompt ends with that same block,
# so a student is prompted exactly as it was trained.
TEMPLATE_KWARGS = {"enable_thinking": False}
# Processor outputs that are never model inputs here (PaliGemma returns HF labels: the loss is ours).
_NOT_INPUTS = ("labels",)


@dataclass
class RenderedBatch:
    inputs: dict[str, torch.Tensor]  # model forward inputs, on the adapter's device
    response_mask: torch.Tensor  # [B, T] bool: assistant content + end-of-turn marker tokens
    record_ids: list[str]
    texts: list[str]  # the chat-template text of each record, before image expansion
    # Packed rows (models/packing.py): the state predicting each response token is decided per
    # record, and each position knows its record (-1: row padding). None: padded rows.
    predict_mask: torch.Tensor | None = None
    token_records: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.token_records is not None

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def labels(self) -> torch.Tensor:
        """``input_ids`` with -100 outside responses: the usual HF causal-LM labels (unshifted)."""
        return self.input_ids.masked_fill(~self.response_mask, -100)

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum())

    def to(self, device: torch.device | str, float_dtype: torch.dtype | None = None) -> "RenderedBatch":
        """Move a batch rendered off the model's device (in a DataLoader worker) onto it."""
        inputs = {k: v.to(device, dtype=float_dtype if v.is_floating_point() else None) for k, v in self.inputs.items()}
        packed = [t.to(device) if t is not None else None for t in (self.predict_mask, self.token_records)]
        return RenderedBatch(inputs, self.response_mask.to(device), self.record_ids, self.texts, *packed)


class ModelAdapter:
    """A model and its processor behind the interface the training loop and evaluation use."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        family: Family,
        role: str = "student",
        chat_template: str | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.model, self.processor, self.role = model, processor, role
        self.family, self.family_info = family.name, family
        self.model_type: str = model.config.model_type  # e.g. "qwen2_5_vl" within family "qwen2_vl"
        self.tokenizer = processor if family.text_only else processor.tokenizer
        if self.tokenizer.pad_token is None:  # e.g. Llama 3: padding is masked out, any token will do
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_template = chat_template or _own_template(processor, self.tokenizer) or PLAIN_TEMPLATE
        self.content_parts = not family.text_only and uses_content_parts(self.chat_template)
        self._image_placeholder = family.image_placeholder or getattr(processor, "image_token", None)
        self._image_ids = torch.tensor(image_token_ids(processor, family), dtype=torch.long)
        self._specials = sorted(
            (t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special), key=len, reverse=True
        )
        self._linear_head = head_is_linear(model)
        self.softcap = head_softcap(model)  # applied by the loss engine inside each chunk
        # What runs the forward: the model itself, or a module wrapping it (a DDP wrapper or an FSDP
        # root must be called for gradients to be reduced or parameters gathered; train/parallel.py
        # sets it): ``forward_module(inputs)`` -> (hidden, head weight, head bias), and
        # ``forward_module(inputs, keep)`` -> logits.
        self.forward_module: torch.nn.Module | None = None
        if role == "teacher":
            model.eval()
            model.requires_grad_(False)
        self.end_of_turn = self._probe_end_of_turn()
        self._image_extra: int | None = None  # tokens one image adds (length_estimates)

    # ---- basic properties -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def head_is_linear(self) -> bool:
        """Logits are ``lm_head(final hidden)`` (then ``softcap``, if set): the chunked loss may read the head."""
        return self._linear_head

    @property
    def vocab_size(self) -> int:
        """The real vocabulary (``len(tokenizer)``), not the head's padded rows."""
        return len(self.tokenizer)

    def lm_head(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    def __repr__(self) -> str:
        return f"ModelAdapter(family={self.family!r}, role={self.role!r}, model={type(self.model).__name__})"

    # ---- rendering ------------------------------------------------------------------------------------

    def render(
        self, records: Sequence[Record], add_generation_prompt: bool = False, max_length: int | None = None,
        on_device: bool = True, pack: bool = False,
    ) -> RenderedBatch:
        """Tokenize records with this model's own processor and mark their response tokens.

        With ``add_generation_prompt`` the records are prompts (no response is marked) and the
        batch is left-padded for generation; otherwise it is right-padded for a forward pass, or
        with ``pack`` laid end to end into padding-free rows (models/packing.py).
        ``on_device=False`` leaves the tensors on the CPU in the processor's dtypes (for
        DataLoader workers; ``RenderedBatch.to`` moves them later).
        """
        if not records:
            raise ValueError("render() needs at least one record")
        if pack and not add_generation_prompt:
            return self._render_packed(records, max_length, on_device)
        for record in records:
            record.validate()
        side = "left" if add_generation_prompt else "right"
        if self.family_info.prompt_format == "prefix_suffix":
            encoded, texts, mask = self._encode_prefix_suffix(records, add_generation_prompt, side)
        else:
            texts, spans = [], []
            for record in records:
                text, record_spans = self._render_text(record, add_generation_prompt)
                texts.append(text)
                spans.append([] if add_generation_prompt else record_spans)
            encoded = self._encode(texts, records, padding_side=side)
            mask = None
        lengths = encoded["attention_mask"].sum(dim=1)
        if max_length is not None and int(lengths.max()) > max_length:
            too_long = [f"{r.id!r} ({int(n)} tokens)" for r, n in zip(records, lengths) if n > max_length]
            raise ValueError(
                f"{self.role} ({self.family}): record(s) {', '.join(too_long)} exceed max_length={max_length}; "
                "responses are never truncated: trim the prompt or raise max_length"
            )
        if mask is None:
            mask = self._response_mask(encoded, texts, spans, records)
        inputs = self._model_inputs(encoded, on_device)
        ids = [r.id for r in records]
        return RenderedBatch(inputs=inputs, response_mask=mask.to(self.device) if on_device else mask, record_ids=ids,
                             texts=texts)

    def length_estimates(self, records: Sequence[Record]) -> list[int]:
        """About how many tokens each record renders to, without opening any image: the chat
        template's text tokens plus, per image, the extra tokens one image expanded into when this
        model last rendered one (measured on the first record with a readable image, then kept).
        Exact for fixed-resolution families; close for dynamic-resolution ones. For length grouping.
        """
        texts = [self._bare_text(_without_images(r)) for r in records]
        tokens = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for record in (r for r in records if r.images and self._image_extra is None):
            try:
                with_images = self.render([record], on_device=False).input_ids.shape[1]
            except (OSError, DataError):  # a bad image: skipped or refused when its record is rendered
                continue
            without = self.render([_without_images(record)], on_device=False).input_ids.shape[1]
            self._image_extra = max(0, (with_images - without) // len(record.images))
        return [len(t) + len(r.images) * (self._image_extra or 0) for t, r in zip(tokens, records)]

    def _bare_text(self, record: Record) -> str:
        """The text a record without images renders to (its chat template, or prefix and suffix)."""
        if self.family_info.prompt_format == "prefix_suffix":
            prefix, suffix = prefix_and_suffix(record, "", False)
            return f"{prefix}\n{suffix or ''}"
        return self._apply_template(template_messages(record, self.family_info, self.content_parts), False)

    # ---- packed rows --------------------------------------------------------------------------------

    @property
    def attention(self) -> str:
        return attention_of(self.model)

    def packing_problem(self) -> str | None:
        """Why this model cannot take packed rows (one sentence naming it), or None."""
        info = self.family_info
        refused = info.packing_refused
        if not refused and info.packed_positions == "rope_index" and self._rope_index is None:
            refused = f"{type(self.model).__name__} has no get_rope_index for its multimodal positions"
        return packing_problem(self.role, self.family, refused, self.attention)

    @property
    def _rope_index(self) -> Callable[..., Any] | None:
        for module in (self.model, getattr(self.model, "model", None)):
            if module is not None and callable(getattr(module, "get_rope_index", None)):
                return module.get_rope_index
        return None

    def _render_packed(self, records: Sequence[Record], max_length: int | None, on_device: bool) -> RenderedBatch:
        problem = self.packing_problem()
        if problem:
            raise ValueError(problem)
        pieces, texts = [], []
        for record in records:  # alone: its own tokens and images, no padding
            one = self.render([record], max_length=max_length, on_device=False)
            pieces.append(Piece(one.inputs, one.response_mask[0], self._record_positions(one.inputs)))
            texts += one.texts
        packed = pack(pieces, self.tokenizer.pad_token_id, self.family_info.per_image_inputs,
                      one_row=self.attention in VARLEN_ATTENTION, attention_cost=attention_weight(self.model))
        batch = RenderedBatch(packed.inputs, packed.response_mask, [r.id for r in records], texts, packed.predict_mask,
                              packed.token_records)
        return batch.to(self.device, self.dtype) if on_device else batch

    def _record_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[P, n] position ids of one record rendered alone."""
        n = inputs["input_ids"].shape[1]
        if self.family_info.packed_positions != "rope_index":
            return torch.arange(n).unsqueeze(0)
        names = ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")
        kwargs = {k: inputs[k] for k in names if k in inputs}
        if "mm_token_type_ids" not in kwargs:
            kwargs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"], dtype=torch.int)
        with torch.no_grad():
            positions, _ = self._rope_index(**kwargs)
        return positions[:, 0].cpu()

    def _render_text(self, record: Record, add_generation_prompt: bool) -> tuple[str, list[Span]]:
        conversation = template_messages(record, self.family_info, self.content_parts, self._image_placeholder)
        if add_generation_prompt:
            return self._apply_template(conversation, True), []
        return response_spans(conversation, self._apply_template, self._specials, record.id)

    def _apply_template(self, conversation: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            conversation, chat_template=self.chat_template, add_generation_prompt=add_generation_prompt, tokenize=False,
            **TEMPLATE_KWARGS,
        )

    def _encode(self, texts: list[str], records: Sequence[Record], padding_side: str) -> Any:
        common: dict[str, Any] = dict(
            return_tensors="pt", padding=True, padding_side=padding_side, return_offsets_mapping=True
        )
        bos = self.tokenizer.bos_token
        if self.family_info.text_only or (bos and all(t.startswith(bos) for t in texts)):
            common["add_special_tokens"] = False  # the template already wrote them
        if self.family_info.text_only:
            return self.tokenizer(texts, **common)
        images = [r.open_images() for r in records]
        if any(images):
            common["images"] = images
        if self.family_info.images_expand:
            common["return_text_replacement_offsets"] = True
        return self.processor(text=texts, **common)

    def _encode_prefix_suffix(
        self, records: Sequence[Record], add_generation_prompt: bool, padding_side: str
    ) -> tuple[Any, list[str], torch.Tensor]:
        """PaliGemma-style processors: the answer goes in as ``suffix`` and comes back as the
        tokens with ``token_type_ids`` 1, which is the response mask (``families.prefix_and_suffix``)."""
        pairs = [prefix_and_suffix(r, self.processor.image_token, add_generation_prompt) for r in records]
        prefixes, suffixes = [p for p, _ in pairs], [s for _, s in pairs]
        if all(s is None for s in suffixes):
            suffixes = None
        elif any(s is None for s in suffixes):
            raise ValueError(f"{self.family}: a batch needs an answer in every record or in none "
                             f"(records {', '.join(repr(r.id) for r in records)})")
        common: dict[str, Any] = dict(return_tensors="pt", padding=True, padding_side=padding_side)
        with_images = [bool(r.images) for r in records]
        if all(with_images):
            encoded = self.processor(text=prefixes, images=[r.open_images() for r in records], suffix=suffixes, **common)
        elif not any(with_images):  # what the processor writes, without its (required) images
            tok = self.tokenizer
            pair = {"text_pair": [s + tok.eos_token for s in suffixes]} if suffixes is not None else {}
            encoded = tok([tok.bos_token + p + "\n" for p in prefixes], **pair, return_token_type_ids=True,
                          add_special_tokens=False, **common)
        else:
            raise ValueError(f"{self.family}: a batch needs an image in every record or in none "
                             f"(records {', '.join(repr(r.id) for r in records)})")
        mask = torch.zeros(encoded["input_ids"].shape, dtype=torch.bool)
        if suffixes is not None:
            mask = encoded["token_type_ids"].bool() & encoded["attention_mask"].bool()
            if len(self._image_ids):
                mask &= ~torch.isin(encoded["input_ids"], self._image_ids)
        texts = [p + (s or "") for p, s in pairs]
        return encoded, texts, mask

    def _response_mask(
        self, encoded: Any, texts: list[str], spans: list[list[Span]], records: Sequence[Record]
    ) -> torch.Tensor:
        offsets = encoded["offset_mapping"]
        replacements = encoded.get("text_replacement_offsets")
        if isinstance(replacements, torch.Tensor) and not replacements.numel():  # InternVL: no image in the batch
            replacements = None
        # A processor that reports no replacement offsets but may have changed the text (expanded
        # images; Mllama prepends bos to a text without one) is aligned from the end.
        expanded = any(r.images for r in records) and not self.family_info.text_only
        mask = torch.zeros(offsets.shape[:2], dtype=torch.bool)
        for b, record_spans in enumerate(spans):
            if not record_spans:
                continue
            if expanded and not replacements:
                mask[b] = self._mask_without_replacement_offsets(encoded, b, texts[b], record_spans, records[b].id)
                continue
            shifts = replacements[b] if replacements else []
            mask[b] = _mask_from_offsets(offsets[b], [_shift_span(s, shifts) for s in record_spans])
        if len(self._image_ids):
            mask &= ~torch.isin(encoded["input_ids"], self._image_ids)
        return mask

    def _mask_without_replacement_offsets(
        self, encoded: Any, b: int, text: str, spans: list[Span], record_id: str
    ) -> torch.Tensor:
        """For processors that do not report where they expanded images: align from the end.

        Tokens after the last image are the same in the expanded and unexpanded sequence, so a
        response that follows every image sits at the same distance from the end in both. Images
        that do not expand (cross-attention, ``images_expand=False``) keep every response there.
        """
        plain = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, return_tensors="pt")
        plain_mask = _mask_from_offsets(plain["offset_mapping"][0], spans)
        plain_ids = plain["input_ids"][0]
        ids, attention = encoded["input_ids"][b], encoded["attention_mask"][b].bool()
        real = attention.nonzero().squeeze(1)
        image_positions = torch.isin(plain_ids, self._image_ids).nonzero()
        expands = self.family_info.images_expand
        if expands and len(image_positions) and int(image_positions.max()) > int(plain_mask.nonzero().min()):
            raise ValueError(
                f"{self.family} processor does not report text_replacement_offsets; record {record_id!r} has an "
                "image after a response, which cannot be aligned without them"
            )
        tail = len(plain_ids) - plain_mask.nonzero().squeeze(1)  # distance from the end
        positions = real[-1] + 1 - tail
        if positions.min() < 0 or not torch.equal(ids[positions], plain_ids[plain_mask]):
            raise ValueError(
                f"{self.family}: cannot align the response tokens of record {record_id!r} with the processor's "
                "input_ids (the processor changes text after the last image)"
            )
        mask = torch.zeros_like(attention)
        mask[positions] = True
        return mask

    def _model_inputs(self, encoded: Any, on_device: bool = True) -> dict[str, torch.Tensor]:
        names = set(getattr(self.processor, "model_input_names", []) or []) | {"input_ids", "attention_mask"}
        inputs = {}
        for key, value in encoded.items():
            if key not in names or key in _NOT_INPUTS or not isinstance(value, torch.Tensor):
                continue
            if on_device:
                value = value.to(self.device, dtype=self.dtype if value.is_floating_point() else None)
            inputs[key] = value
        return inputs

    def _probe_end_of_turn(self) -> str:
        """The end-of-turn marker this template writes after an assistant message ('' if none)."""
        if self.family_info.prompt_format == "prefix_suffix":
            return self.tokenizer.eos_token or ""  # the processor ends every suffix with eos
        probe = Record("end-of-turn probe", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "OK"}])
        conversation = template_messages(probe, self.family_info, self.content_parts, self._image_placeholder)
        text, spans = response_spans(conversation, self._apply_template, self._specials, probe.id)
        start, end = spans[0]
        return text[start:end].split("OK", 1)[1].strip()

    # ---- forward to the loss ----------------------------------------------------------------------------

    def response_outputs(
        self, records_or_batch: Sequence[Record] | RenderedBatch, return_hidden: bool = True
    ) -> ResponseOutputs:
        """Response tokens only, in (record, turn, token) order, with what predicts each of them.

        The state at position p-1 predicts token p, so the prediction mask is the response mask
        shifted left by one. The teacher runs without gradients and in eval mode.
        """
        batch = records_or_batch if isinstance(records_or_batch, RenderedBatch) else self.render(records_or_batch)
        response = batch.response_mask
        if batch.packed:  # records laid end to end: per-record prediction, then back to record order
            predicting, record_index = batch.predict_mask, batch.token_records[response]
            order = canonical_order(record_index)
        else:
            predicting = torch.zeros_like(response)
            predicting[:, :-1] = response[:, 1:]
            rows = torch.arange(response.shape[0], device=response.device).unsqueeze(1).expand_as(response)
            record_index, order = rows[response], None

        def canonical(t: torch.Tensor) -> torch.Tensor:
            return t if order is None else t[order]

        token_ids, record_index = canonical(batch.input_ids[response]), canonical(record_index)
        grad = torch.no_grad() if self.role == "teacher" else nullcontext()
        with grad:
            if return_hidden and self._linear_head:
                if self.forward_module is not None:
                    hidden, weight, bias = self.forward_module(batch.inputs)
                else:
                    hidden = final_hidden_states(self.model, batch.inputs, self.family_info)
                    weight, bias = effective_head(self.lm_head())  # W + scale * B @ A under a LoRA head
                hidden = hidden[predicting]
                if self.role == "teacher":
                    weight, bias = weight.detach(), (bias.detach() if bias is not None else None)
                return ResponseOutputs(token_ids, record_index, hidden=canonical(hidden), head_weight=weight,
                                       head_bias=bias, softcap=self.softcap)
            keep = predicting.any(dim=0).nonzero().squeeze(1)  # only positions some row needs
            if self.forward_module is not None:
                logits = self.forward_module(batch.inputs, keep)
            else:
                logits = self.model(**batch.inputs, use_cache=False, logits_to_keep=keep).logits
        return ResponseOutputs(token_ids, record_index, logits=canonical(logits[predicting[:, keep]]))

    # ---- generation -----------------------------------------------------------------------------------

    @property
    def stop_token_ids(self) -> list[int]:
        """Generation stops at eos or at this template's end-of-turn marker."""
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if self.end_of_turn:
            ids.update(self.tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"][:1])
        return sorted(ids)

    def generate(self, records: Sequence[Record], max_new_tokens: int = 16, **gen_kwargs: Any) -> list[str]:
        """Answer each record's prompt (its messages before the last assistant turn), greedily by default."""
        prompts = [r.prompt_only() if r.has_response else r for r in records]
        batch = self.render(prompts, add_generation_prompt=True)
        settings = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        settings.update(gen_kwargs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(**batch.inputs, **settings)
        finally:
            self.model.train(was_training)
        new_tokens = out[:, batch.input_ids.shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    # ---- saving ----------------------------------------------------------------------------------------

    def save(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save model and processor; the chat template in use is saved with them, so a default or
        overridden template survives the round trip. ``state_dict`` replaces the model's own
        (a gathered FSDP state, or weights cast to the dtype to ship)."""
        out = Path(out_dir)
        self.model.save_pretrained(out, state_dict=state_dict)
        self.processor.chat_template = self.chat_template
        self.processor.save_pretrained(out)


def _without_images(record: Record) -> Record:
    messages = [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, "")} for m in record.messages]
    return Record(record.id, messages)


def _own_template(processor: Any, tokenizer: Any) -> str | None:
    template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


# ---- response spans in rendered text --------------------------------------------------------------


def response_spans(
    conversation: list[dict[str, Any]],
    render: Callable[[list[dict[str, Any]], bool], str],
    special_tokens: Sequence[str],
    record_id: str,
) -> tuple[str, list[Span]]:
    """The rendered text and the character span of every assistant turn's response.

    A response is the assistant content plus the first special token the template writes after
    it within the same turn (its end-of-turn marker). Content is searched only after the turn's
    own header (the rendering of the conversation before it, with the generation prompt), so an
    answer that also occurs in the question or in the header ("A" in "ASSISTANT") is never
    mistaken for it.
    """
    full = render(conversation, False)
    spans = []
    for i, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        content = _text_of(message["content"])
        head = _header_end(full, render, conversation, i, record_id)
        turn_end = _prefix_length(full, render(conversation[: i + 1], False)) or len(full)
        start, end = _find_content(full, content, head, turn_end, record_id, i)
        spans.append((start, end + _end_marker_length(full[end:turn_end], special_tokens)))
    return full, spans


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _prefix_length(full: str, prefix: str) -> int | None:
    return len(prefix) if prefix and full.startswith(prefix) else None


def _header_end(full: str, render: Callable[..., str], conversation: list, i: int, record_id: str) -> int:
    if i == 0:
        return 0
    for with_prompt in (True, False):
        n = _prefix_length(full, render(conversation[:i], with_prompt))
        if n is not None:
            return n
    raise ValueError(
        f"record {record_id!r}: the chat template renders message {i}'s history differently inside the whole "
        "conversation, so its response cannot be located; use a template whose turns render independently"
    )


def _find_content(full: str, content: str, head: int, turn_end: int, record_id: str, i: int) -> Span:
    for candidate in (content, content.strip()):
        if not candidate:
            continue
        start = full.find(candidate, head, turn_end)
        if start >= 0:
            return start, start + len(candidate)
    if not content.strip():  # empty answer: only the end-of-turn marker is a response
        return head, head
    raise ValueError(
        f"record {record_id!r}, message {i}: the assistant text {content[:60]!r} does not appear in the rendered "
        "chat template (does the template rewrite assistant messages?)"
    )


def _end_marker_length(after: str, special_tokens: Sequence[str]) -> int:
    stripped = after.lstrip()
    for token in special_tokens:
        if stripped.startswith(token):
            return len(after) - len(stripped) + len(token)
    return 0


# ---- character spans -> token positions -------------------------------------------------------------


def _shift_span(span: Span, replacements: list[dict[str, Any]]) -> Span:
    """Move a span of the template text to the image-expanded text the tokenizer saw."""
    ends = [r["span"][1] for r in replacements]
    gained = [0]
    for r in replacements:
        gained.append(gained[-1] + (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
    return tuple(c + gained[bisect.bisect_right(ends, c)] for c in span)  # type: ignore[return-value]


def _mask_from_offsets(offsets: torch.Tensor, spans: list[Span]) -> torch.Tensor:
    """Tokens overlapping any span; zero-width tokens (padding, added specials) never do."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = torch.zeros(offsets.shape[0], dtype=torch.bool)
    for s, e in spans:
        mask |= (starts < e) & (ends > s) & (ends > starts)
    return mask

"""Padding-free rows: several records concatenated into one row, attention that cannot cross them.

A padded micro-batch runs both models over ``records x longest`` positions; on ragged data most
of them are padding. A packed micro-batch renders every record alone (its own tokens, its own
images) and lays the records end to end into a few rows:

- every record's position ids start again at 0, so its rotary positions are the ones it has in
  a padded row (Qwen2-VL's 3-D positions come from the model's own ``get_rope_index`` run on
  the record alone; the row then carries ``[4, rows, tokens]``: text positions first, as
  transformers' Qwen2-VL reads packed positions);
- the rows carry NO attention mask: transformers then reads record boundaries from the
  position ids (``masking_utils.find_packed_sequence_indices``): a block-diagonal causal mask
  for sdpa, eager and flex attention, ``cu_seqlens`` (varlen kernels) for flash attention,
  which transformers only does for a single flattened row, so with flash attention every record
  goes into one row;
- otherwise the rows' width is chosen by a cost model: a row of W positions costs W in its
  linear layers and about W^2 / (8 x hidden) in a masked attention, which computes every pair
  of the row, masked or not; the widths tried run from the longest record to all of them in
  one row, each filled first fit, longest record first;
- the images of a row are concatenated in the order their records appear (a model scatters
  image features into image tokens in reading order), a family's per-record image batches
  (Idefics3's ``[records, images, ...]``) flattened to one image per entry, and what a processor
  pads per batch (LLaVA-NeXT's tiles, Pixtral's image sizes) zero-padded across the records, as
  the processor pads it (the model crops by ``image_sizes``);
- which position predicts which response token is decided per record (the state at p-1
  predicts p, never across a record boundary), and the adapter puts response tokens back into
  the canonical (record, turn, token) order, so teacher and student, which pack differently,
  still hand the loss the same tokens in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Attention implementations that keep packed records apart given position ids and no mask.
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")  # a block-diagonal mask from the position ids
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")  # cu_seqlens from the position ids (one row)
PACKABLE_ATTENTION = MASKED_ATTENTION + VARLEN_ATTENTION


@dataclass
class Piece:
    """One record rendered alone: unpadded ``[1, n]`` sequence inputs and its own image inputs."""

    inputs: dict[str, torch.Tensor]
    response: torch.Tensor  # [n] bool
    positions: torch.Tensor  # [P, n] long: P = 1 (1-D positions) or 3 (multimodal rotary positions)

    @property
    def length(self) -> int:
        return int(self.response.shape[0])


@dataclass
class Packed:
    inputs: dict[str, torch.Tensor]  # model forward inputs: no attention_mask, position_ids per record
    response_mask: torch.Tensor  # [R, L] bool
    predict_mask: torch.Tensor  # [R, L] bool: the state here predicts the next (response) token
    token_records: torch.Tensor  # [R, L] long: the record of each position, -1 on row padding
    rows: list[list[int]]  # record indices per row, in row order


def attention_of(model: torch.nn.Module) -> str:
    """The language model's attention implementation (the one packed rows go through)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return str(getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None) or "eager")


def packing_problem(role: str, family: str, refused: str | None, attention: str) -> str | None:
    """Why this model cannot take packed rows (one sentence naming it), or None."""
    if refused:
        return f"packing: the {role}'s family {family} cannot pack records: {refused}; set packing: false"
    if attention not in PACKABLE_ATTENTION:
        return (f"packing: the {role} ({family}) runs attention implementation {attention!r}, which cannot keep packed "
                f"records apart; load it with one of {', '.join(PACKABLE_ATTENTION)} or set packing: false")
    return None


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Record indices per row: longest first, each into the first row it fits (ties by index)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(row) for row in rows]


def choose_rows(lengths: Sequence[int], attention_weight: float) -> list[list[int]]:
    """The rows of least estimated cost ``rows x width x (1 + attention_weight x width)``; one row
    when ``attention_weight`` is 0 (varlen attention costs the same however records are laid)."""
    longest, total = max(lengths), sum(lengths)
    best: tuple[float, list[list[int]]] | None = None
    for capacity in sorted({min(int(longest * f), total) for f in (1, 1.25, 1.5, 2, 3, 4)} | {total}):
        rows = first_fit_decreasing(lengths, capacity)
        width = max(sum(lengths[i] for i in row) for row in rows)
        cost = len(rows) * width * (1 + attention_weight * width)
        if best is None or cost < best[0]:
            best = (cost, rows)
    assert best is not None
    return best[1]


def attention_weight(model: torch.nn.Module) -> float:
    """What one more position of row width costs in masked attention, per position of linear work:
    4 W d attention FLOPs against ~32 d^2 in the projections and MLP of a layer (d: hidden size)."""
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return 1.0 / (8 * int(getattr(text, "hidden_size", 1024) or 1024))


def pack(pieces: Sequence[Piece], pad_token_id: int, per_image_inputs: Sequence[str] = (), one_row: bool = False,
         attention_cost: float = 1 / 8192) -> Packed:
    """Lay ``pieces`` into rows (one row when ``one_row``: varlen attention), with their images."""
    if not pieces:
        raise ValueError("pack() needs at least one record")
    lengths = [p.length for p in pieces]
    rows = choose_rows(lengths, 0.0 if one_row else attention_cost)
    width = max(sum(lengths[i] for i in row) for row in rows)
    dims = {p.positions.shape[0] for p in pieces}
    if len(dims) != 1:
        raise ValueError(f"records of one batch have position ids of different ranks {sorted(dims)}")
    n_dims = dims.pop()
    sequence_keys = [k for k, v in pieces[0].inputs.items() if _is_sequence(v, lengths[0]) and k != "attention_mask"]

    sequences = {k: [] for k in sequence_keys}
    response, predict, owner, text_positions, positions = [], [], [], [], []
    images: dict[str, list[torch.Tensor]] = {}
    for row in rows:
        parts = {k: [pieces[i].inputs[k][0] for i in row] for k in sequence_keys}
        pad = width - sum(lengths[i] for i in row)
        for k in sequence_keys:
            fill = pad_token_id if k == "input_ids" else 0
            sequences[k].append(torch.cat(parts[k] + [parts[k][0].new_full((pad,), fill)]))
        response.append(torch.cat([pieces[i].response for i in row] + [torch.zeros(pad, dtype=torch.bool)]))
        predict.append(torch.cat([_predicting(pieces[i].response) for i in row] + [torch.zeros(pad, dtype=torch.bool)]))
        owner.append(torch.cat([torch.full((lengths[i],), i, dtype=torch.long) for i in row] + [torch.full((pad,), -1, dtype=torch.long)]))
        # padding is a segment of its own (positions from 0 again), attended by nothing real
        text_positions.append(torch.cat([torch.arange(lengths[i]) for i in row] + [torch.arange(pad)]))
        positions.append(torch.cat([pieces[i].positions for i in row] + [torch.arange(pad).expand(n_dims, -1)], dim=1))
        for i in row:  # images in reading order of the packed rows
            for k, v in pieces[i].inputs.items():
                if k not in sequence_keys and k != "attention_mask":
                    images.setdefault(k, []).append(v.reshape(-1, 1, *v.shape[2:]) if k in per_image_inputs else v)
    inputs = {k: torch.stack(v) for k, v in sequences.items()}
    inputs.update({k: _cat_padded(v) for k, v in images.items()})
    if n_dims == 1:
        inputs["position_ids"] = torch.stack(text_positions)
    else:  # multimodal rotary positions: text positions first (the mask reads them), then the model's
        inputs["position_ids"] = torch.cat([torch.stack(text_positions).unsqueeze(0), torch.stack(positions, dim=1)])
    return Packed(inputs, torch.stack(response), torch.stack(predict), torch.stack(owner), rows)


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Image inputs of several records, one after another; where a processor pads them per batch
    (LLaVA-NeXT's tiles per image, Pixtral's image sizes), zeros up to the largest, as it does."""
    shape = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors))]
    padded = []
    for t in tensors:
        pad = [p for d in range(t.ndim - 1, 0, -1) for p in (0, shape[d - 1] - t.shape[d])]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


def _is_sequence(value: torch.Tensor, length: int) -> bool:
    return value.ndim == 2 and value.shape[0] == 1 and value.shape[1] == length


def _predicting(response: torch.Tensor) -> torch.Tensor:
    """Within one record: the state at p-1 predicts response token p."""
    out = torch.zeros_like(response)
    out[:-1] = response[1:]
    return out


def canonical_order(token_records: torch.Tensor) -> torch.Tensor:
    """The permutation putting packed response tokens back into (record, turn, token) order."""
    return torch.argsort(token_records, stable=True)

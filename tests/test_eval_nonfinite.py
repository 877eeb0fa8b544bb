"""Eval says so when a model's logits are NaN or infinite, instead of scoring garbage quietly."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.data import Record
from taid_vlm.eval.generation import NonFiniteLogits, generate_answers, reference_nll
from taid_vlm.models import adapt
from taid_vlm.testing.tiny import build_tiny


def broken_adapter():
    model, tokenizer = build_tiny("qwen2", hidden_size=16, num_layers=1, seed=0)
    with torch.no_grad():
        model.get_output_embeddings().weight[5].fill_(float("nan"))  # one vocabulary row: NaN logits there
    return adapt(model, tokenizer)


RECORDS = [Record("a", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])]


def test_generation_warns_on_non_finite_logits():
    with pytest.warns(NonFiniteLogits, match=r"model 'broken' produced non-finite logits while answering record\(s\) 'a'"):
        generate_answers(broken_adapter(), RECORDS, "broken", batch_size=1, max_new_tokens=2)


def test_reference_scoring_warns_on_non_finite_logits():
    with pytest.warns(NonFiniteLogits, match="scoring the references of"):
        reference_nll(broken_adapter(), RECORDS, "broken", batch_size=1)


def test_a_healthy_model_gives_no_warning(recwarn):
    model, tokenizer = build_tiny("qwen2", hidden_size=16, num_layers=1, seed=0)
    generate_answers(adapt(model, tokenizer), RECORDS, "ok", batch_size=1, max_new_tokens=2)
    assert not [w for w in recwarn if issubclass(w.category, NonFiniteLogits)]

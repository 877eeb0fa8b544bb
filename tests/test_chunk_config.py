"""chunk_memory_mb / chunk_compile travel from the run config to the chunked engine."""

import pytest
import torch

from taid_vlm.losses import divergence
from taid_vlm.models.outputs import ResponseOutputs
from taid_vlm.train.config import ConfigError, load_config
from taid_vlm.train.objective import training_loss

BASE = ["student=s", "teacher=t", "data=d", "output=o"]


def test_config_reads_and_checks_the_chunk_settings():
    config = load_config(None, {}, BASE + ["chunk_memory_mb=96", "chunk_compile=true"])
    assert config.chunk_memory_mb == 96.0 and config.chunk_compile is True
    with pytest.raises(ConfigError, match="chunk_memory_mb must be positive"):
        load_config(None, {}, BASE + ["chunk_memory_mb=0"])
    with pytest.raises(ConfigError, match="chunk_size must be >= 1"):
        load_config(None, {}, BASE + ["chunk_size=0"])


def test_training_loss_passes_the_budget_to_the_engine(monkeypatch):
    import taid_vlm.losses.chunked as chunked

    seen = []
    real = chunked.interpolated_kl_
    monkeypatch.setattr(chunked, "interpolated_kl_", lambda s, u, *a: seen.append(s.shape[0]) or real(s, u, *a))
    g = torch.Generator().manual_seed(0)
    n, h, v = 20, 8, 64
    ids = torch.randint(0, v, (n,), generator=g)
    student = ResponseOutputs(ids, torch.zeros(n, dtype=torch.long), hidden=torch.randn(n, h, generator=g, requires_grad=True),
                              head_weight=torch.randn(v, h, generator=g))
    teacher = ResponseOutputs(ids, torch.zeros(n, dtype=torch.long), hidden=torch.randn(n, h, generator=g),
                              head_weight=torch.randn(v, h, generator=g))
    budget = 8 * 4 * 4 * v / 2**20  # 8 tokens of 4 fp32 rows
    parts = training_loss("fkl", student, teacher, num_tokens=n, chunk_memory_mb=budget, chunk_compile=False)
    assert seen == [8, 8, 4]
    ref = divergence("fkl", student.full_logits(), teacher.full_logits())
    assert parts.total.item() == pytest.approx(ref.item(), rel=1e-5)

"""chunk_memory_mb / chunk_size / chunk_compile travel from the run config to the chunked engine, on
every path (a live or a cached teacher) and for every device."""

import pytest
import torch

from taid_vlm.losses import EngineOptions, divergence, topk_of_logits
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
    parts = training_loss("fkl", student, teacher, num_tokens=n, options=EngineOptions(chunk_memory_mb=budget))
    assert seen == [8, 8, 4]
    ref = divergence("fkl", student.full_logits(), teacher.full_logits())
    assert parts.total.item() == pytest.approx(ref.item(), rel=1e-5)


def _cached_pair(n=20, h=8, v=64, k=5):
    """A student (hidden states + head) and a cached teacher (top-k + tail) over the same tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, v, (n,), generator=g)
    student = ResponseOutputs(ids, torch.zeros(n, dtype=torch.long), hidden=torch.randn(n, h, generator=g, requires_grad=True),
                              head_weight=torch.randn(v, h, generator=g))
    teacher = ResponseOutputs(ids, torch.zeros(n, dtype=torch.long), topk=topk_of_logits(torch.randn(n, v, generator=g), k),
                              cached_vocab_size=v)
    return student, teacher


def test_the_cached_teacher_path_honours_chunk_memory_mb_chunk_size_and_chunk_compile(monkeypatch):
    import taid_vlm.losses.chunked as chunked

    seen, compiled = [], []
    eager = chunked.interpolated_kl_
    monkeypatch.setattr(chunked, "interpolated_kl_", lambda s, u, *a: seen.append(s.shape[0]) or eager(s, u, *a))
    monkeypatch.setattr(chunked, "compiled_interpolated_kl_", lambda s, u, *a: compiled.append(s.shape[0]) or eager(s, u, *a))
    student, teacher = _cached_pair(v=64)
    reference = training_loss("fkl", student, teacher, num_tokens=20, options=EngineOptions(chunked=False)).total
    budget = 8 * chunked.ROWS_BUCKETS * 4 * 64 / 2**20  # 8 tokens of the bucket step's fp32 rows
    config = load_config(None, {}, BASE + [f"chunk_memory_mb={budget}"])
    parts = training_loss("fkl", student, teacher, num_tokens=20, options=config.engine_options())
    assert seen == [8, 8, 4] and parts.total.item() == pytest.approx(reference.item(), rel=1e-6)
    seen.clear()
    config = load_config(None, {}, BASE + [f"chunk_memory_mb={budget}", "chunk_size=6", "chunk_compile=true"])
    parts = training_loss("fkl", student, teacher, num_tokens=20, options=config.engine_options())
    assert compiled == [6, 6, 6, 2] and seen == []
    assert parts.total.item() == pytest.approx(reference.item(), rel=1e-6)


def test_automatic_chunks_use_the_device_budget_on_every_step(monkeypatch):
    import taid_vlm.losses.chunked as chunked
    from taid_vlm.losses import Logits, build_loss
    from taid_vlm.losses.topk import BucketStep

    v, kernel = 151936, chunked.interpolated_kl_
    steps = {
        "full": chunked.FullVocabStep(Logits(torch.zeros(1, v)), build_loss("fkl"), kd_vocab=v, labels=None, interpolation=1.0, kernel=kernel),
        "buckets": BucketStep(None, build_loss("fkl"), vocab=v, labels=None, interpolation=1.0, kernel=kernel),
    }
    for name, step in steps.items():
        on_cpu = chunked.chunk_size_for(step, v, EngineOptions(), device="cpu")
        on_cuda = chunked.chunk_size_for(step, v, EngineOptions(), device=torch.device("cuda", 0))
        assert on_cuda == chunked.auto_chunk_size(v, chunked.DEFAULT_CHUNK_MEMORY_MB["cuda"],
                                                  rows_per_token=step.rows_per_token), name
        assert on_cuda > on_cpu == chunked.auto_chunk_size(v, 512, rows_per_token=step.rows_per_token), name
        assert chunked.chunk_size_for(step, v, EngineOptions(chunk_memory_mb=64), device="cuda") < on_cpu, name
        assert chunked.chunk_size_for(step, v, EngineOptions(chunk_size=7, chunk_memory_mb=64), device="cuda") == 7
    # the door sizes the cached path with the device of the student's hidden states
    devices = []
    real = chunked.auto_chunk_size
    monkeypatch.setattr(chunked, "auto_chunk_size", lambda *a, device, **kw: devices.append(device) or real(*a, device=device, **kw))
    student, teacher = _cached_pair()
    training_loss("taid", student, teacher, num_tokens=20, params={"t": 0.5})
    assert devices == [student.hidden.device]

"""Training sets read on access (data/table.py): the same records as ``load_records`` from an index of
offsets, image checks per ``validate_images``, bad rows and images met later per ``skip_bad``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from composed_pair import save_composed_pair
from taid_vlm.data import DataError, SkippedRecordsWarning, load_records, open_records
from taid_vlm.data import table as table_module
from taid_vlm.train import ConfigError, distill, load_config


def _llava_rows(folder: Path, n: int) -> list[dict]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append({"id": f"r{i}" if i % 3 else None, "image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shape {i}? é"}, {"from": "gpt", "value": f"shape {i} ✓"}]})
    return rows


def test_a_table_gives_the_records_load_records_gives_from_jsonl_and_json_arrays(tmp_path, monkeypatch):
    rows = _llava_rows(tmp_path, 40)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n\n" for r in rows), encoding="utf-8")
    (tmp_path / "data.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(table_module, "_BLOCK", 64)  # elements cut by block ends, multibyte characters too
    for name in ("data.jsonl", "data.json"):
        expected = load_records(tmp_path / name)
        table = open_records(tmp_path / name, "llava")
        assert len(table) == 40 and list(table) == expected, name
        assert table[-1] == expected[-1] and list(table[5:8]) == expected[5:8]
        assert list(open_records(tmp_path / name, "llava", limit=7)) == expected[:7]
        assert table.size_estimates()[1].tolist() == [1] * 40


def test_validate_images_stats_every_file_and_decodes_a_sample(tmp_path, monkeypatch):
    rows = _llava_rows(tmp_path, 30)
    rows[17]["image"] = "img/missing.png"
    (tmp_path / "img" / "4.png").write_bytes(b"\x89PNG not really")  # unreadable; only decoding finds it
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    with pytest.raises(DataError, match=r"data.jsonl:31.*invalid JSON"):
        open_records(path, "llava")
    with pytest.warns(SkippedRecordsWarning, match=r"skipped 3 bad record.*data.jsonl:18.*missing.png"):
        table = open_records(path, "llava", skip_bad=True)  # the sample (every row: 30 < 256) decodes 4.png
    assert len(table) == 28
    monkeypatch.setattr(table_module, "SAMPLE_ROWS", 2)  # rows 0 and 29 only: 4.png is not decoded
    with pytest.warns(SkippedRecordsWarning, match=r"skipped 2 bad"):
        assert len(open_records(path, "llava", skip_bad=True)) == 29
    with pytest.warns(SkippedRecordsWarning, match=r"skipped 1 bad"):  # no stat: only the JSON is checked
        assert len(open_records(path, "llava", skip_bad=True, validate_images="none")) == 30
    with pytest.raises(DataError, match=r"data.jsonl:5.*image unreadable.*4.png"):
        open_records(path, "llava", validate_images="all")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_composed_pair(tmp_path_factory.mktemp("table"), 16, 2)


def test_a_bad_image_met_in_training_is_skipped_naming_its_file_or_stops_the_run(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(table_module, "SAMPLE_ROWS", 1)  # the up-front sample misses the broken image
    rows = [json.loads(line) for line in (pair / "shapes" / "train.jsonl").read_text().splitlines()]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG cut short")
    for i, row in enumerate(rows):  # every record but the first (the sample) has the broken image
        images = row.pop("images", None) or [row.pop("image")]
        row["images"] = [str(pair / "shapes" / p) for p in images] if i == 0 else [str(broken)] * len(images)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config(out: str, **extra):
        return load_config(None, dict(teacher=str(pair / "teacher"), student=str(pair / "student"), data=str(data),
                                      output=str(tmp_path / out), max_steps=1, batch_size=2, save_every=100,
                                      progress=False, seed=3, **extra))

    with pytest.raises(DataError, match=r"train.jsonl:\d+ \(record .*image unreadable: .*broken.png.*--skip-bad"):
        distill(config("strict"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        distill(config("skipping", skip_bad=True))
    messages = [str(w.message) for w in seen if issubclass(w.category, SkippedRecordsWarning)]
    assert messages and all("broken.png" in m and "the next record takes its place" in m for m in messages)
    assert (tmp_path / "skipping" / "student").is_dir()


def test_a_streamed_hf_set_trains_across_epochs_and_resumes_exactly(pair, tmp_path, monkeypatch):
    """--streaming over a parquet file written by ``datasets`` (10 records, 2 global batches an epoch,
    so 5 steps cross two epoch ends): stopped after step 3 and resumed, the run ends with the student of
    the run that never stopped."""
    import os
    import signal

    import datasets

    from taid_vlm.errors import Stopped
    from taid_vlm.train import loop
    from safetensors.torch import load_file

    rows = [json.loads(line) for line in (pair / "shapes" / "train.jsonl").read_text().splitlines()][:10]
    table = [{"id": r["id"], "conversations": r["conversations"], "image": str(pair / "shapes" / r["image"])} for r in rows]
    datasets.Dataset.from_list(table).to_parquet(str(tmp_path / "train.parquet"))

    def config(out: str, steps: int, **extra):
        return load_config(None, dict(teacher=str(pair / "teacher"), student=str(pair / "student"),
                                      data=f"hf:{tmp_path / 'train.parquet'}", streaming=True, output=str(tmp_path / out),
                                      max_steps=steps, batch_size=4, save_every=100, log_every=1, progress=False, seed=3,
                                      **extra))

    distill(config("whole", 5))
    real_step = loop.step

    def step_then_sigterm(run):  # a preemption notice arrives during step 3
        real_step(run)
        if run.state.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "step", step_then_sigterm)
    with pytest.raises(Stopped, match="stopped by SIGTERM after step 3"):
        distill(config("stopped", 5))
    monkeypatch.setattr(loop, "step", real_step)
    distill(config("stopped", 5, resume="auto"))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 0, 0, 1, 1]  # the epoch a step starts in (step 3 takes the first batch of epoch 1)
    a = load_file(str(tmp_path / "whole" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="streaming=true needs num_workers=0"):
        config("bad", 1, num_workers=1)

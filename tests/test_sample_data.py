"""The shipped sample set (data/): every file reads with its loader, every image is used, licensed
and small, and a distil + evaluation over it runs end to end with tiny models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from taid_vlm.cli import main
from taid_vlm.data import detect_format, load_caption_eval, load_chat, load_llava, load_records, load_vqa_eval
from taid_vlm.testing.tiny import save_tiny_composed_pair

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = {  # file -> (format detected, loader, records)
    "train.json": ("llava", load_llava, 20),
    "chat.jsonl": ("chat", load_chat, 5),
    "test_vqa.jsonl": ("vqa", load_vqa_eval, 22),
    "test_caption.jsonl": ("caption", load_caption_eval, 13),
    "coco_captions.json": ("coco", load_caption_eval, 4),
}


def images_of(records) -> set[str]:
    return {Path(image).name for r in records for image in r.images}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_shipped_file_reads_with_its_loader(name):
    fmt, loader, count = FILES[name]
    assert detect_format(DATA / name) == fmt
    records = loader(DATA / name, check_images="open")  # every image decodes
    assert len(records) == count and len({r.id for r in records}) == count
    for r in records:
        r.validate()
    if fmt in ("llava", "chat"):
        assert all(r.has_response for r in records)
    if fmt == "vqa":
        assert all(len(r.answers) == 10 and r.meta.get("family") for r in records)
    if fmt in ("caption", "coco"):
        assert all(len(r.references) >= 3 for r in records)


def test_every_image_is_used_licensed_and_small():
    shipped = {p.name for p in (DATA / "images").iterdir()}
    used = set().union(*(images_of(load_records(DATA / name)) for name in FILES))
    assert used == shipped
    licence = (DATA / "LICENSE").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| (\S+\.(?:jpg|png)) ", licence, re.M))
    assert listed == shipped
    assert sum((DATA / "images" / n).stat().st_size for n in shipped) < 1_000_000
    for name in shipped:
        with Image.open(DATA / "images" / name) as im:
            assert max(im.size) <= 256


def test_the_readme_describes_every_loader_format():
    text = (DATA / "README.md").read_text(encoding="utf-8")
    from taid_vlm.data.benchmarks import READERS
    from taid_vlm.data.loaders import FORMATS

    titles = {"llava": "LLaVA", "chat": "Chat", "vqa": "VQA evaluation", "caption": "Caption evaluation",
              "coco": "COCO captions", "hf": "Hugging Face datasets"}
    assert set(titles) == set(FORMATS) - {"auto"}
    assert all(f"**{title}**" in text for title in titles.values())
    names = {"vqav2": "VQAv2", "okvqa": "OK-VQA", "textvqa": "TextVQA", "vizwiz": "VizWiz", "gqa": "GQA",
             "coco": "COCO", "flickr30k": "Flickr30k", "nocaps": "NoCaps"}
    assert set(names) == set(READERS) and all(f"| {n}" in text or f", {n}" in text for n in names.values())
    for block in re.findall(r"```json\n(.*?)```", text, re.S):  # the examples are the shipped rows, abridged
        if "..." not in block:
            rows = json.loads(block) if block.lstrip().startswith("[") else [json.loads(block)]
            assert rows


def test_make_images_rebuilds_the_committed_images(tmp_path, monkeypatch):
    skimage = pytest.importorskip("skimage")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_images", DATA / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = Path(skimage.__file__).parent / "data"
    for ours, theirs in module.SOURCES.items():
        module.convert(source / theirs, tmp_path / ours)
        assert (tmp_path / ours).read_bytes() == (DATA / "images" / ours).read_bytes(), ours


def test_distil_and_evaluate_over_the_sample_set(tmp_path, capsys):
    texts = [m["content"] for r in load_records(DATA / "train.json") for m in r.messages]
    teacher, student = save_tiny_composed_pair(tmp_path / "teacher", tmp_path / "student", texts)
    run = tmp_path / "run"
    assert main(["distill", f"--teacher={teacher}", f"--student={student}", f"--data={DATA / 'train.json'}",
                 f"--output={run}", "--batch-size=4", "--max-steps=2", "--log-every=1", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["loss"] >= 0 for r in rows)
    for task, name in (("vqa", "test_vqa.jsonl"), ("caption", "test_caption.jsonl")):
        out = tmp_path / f"eval-{task}"
        assert main(["eval", "--model", str(run / "student"), "--data", str(DATA / name), "--task", task,
                     "--output", str(out), "--limit", "3", "--max-new-tokens", "2", "--caption-backend", "python",
                     "--quiet"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert len((out / "samples.jsonl").read_text().splitlines()) == 3, results

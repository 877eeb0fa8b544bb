"""Captioning benchmarks as distributed: the Karpathy split files and NoCaps.

- Karpathy (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"dataset": "coco", "images":
  [{filepath, filename, split, cocoid | imgid, sentences: [{raw, tokens}]}]}``; every split in one
  file, so ``split`` picks one (default ``test``: the 5,000 / 1,000 images papers report on).
  COCO images live at ``<images>/<filepath>/<filename>`` (or under their COCO 2017 names);
  Flickr30k at ``<images>/<filename>``.
- NoCaps (``nocaps_val_4500_captions.json``): COCO-style ``images`` (``id, open_images_id,
  file_name, domain``) + ``annotations`` (``image_id, caption``); the test file
  (``nocaps_test_image_info.json``) has no annotations and is answered, not scored.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import DataError
from ..records import Record
from .common import ReadOptions, caption_record, describe, find_image, one_file, read_json, required, wrong_layout

KARPATHY_SPLITS = ("train", "restval", "val", "test")
KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
NOCAPS_FILES = "nocaps_val_4500_captions.json (COCO-style 'images' with 'domain' and 'annotations')"


def read_karpathy(paths: Sequence[Path], options: ReadOptions, dataset: str) -> Iterator[Record]:
    """The images of one Karpathy split with their raw reference sentences (what COCO scoring tokenises)."""
    expected = f"the Karpathy split file {KARPATHY_FILES[dataset]}"
    path = one_file(paths, dataset, expected)
    data = read_json(path, dataset, expected)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "dataset" not in data:
        if isinstance(data, dict) and "annotations" in data:
            expected += "; an official COCO-style captions file (images + annotations) reads with --task caption"
        raise wrong_layout(path, dataset, describe(data), expected)
    if data["dataset"] != dataset:
        other = next((name for name in KARPATHY_FILES if name == data["dataset"]), None)
        fix = f"use --benchmark {other}" if other else f"pass {expected}"
        raise DataError(str(path), f"this is the Karpathy file of {data['dataset']!r}, not {dataset!r}", fix)
    split = options.split or "test"
    if split not in KARPATHY_SPLITS:
        raise DataError(str(path), f"split {split!r} is not a Karpathy split", f"pass --split one of {KARPATHY_SPLITS}")
    fix = "pass the Karpathy file as downloaded"
    for i, image in enumerate(data["images"]):
        where = f"{path}:images[{i}]"
        if required(image, "split", where, str, fix) != split:
            continue
        filename = required(image, "filename", where, str, fix)
        sentences = required(image, "sentences", where, list, fix)
        references = [required(s, "raw", f"{where}.sentences[{k}]", str, fix) for k, s in enumerate(sentences)]
        image_id = image.get("cocoid", image.get("imgid", Path(filename).stem))
        candidates = _karpathy_names(image, filename)
        hint = "the COCO image folders (val2014/, train2014/)" if dataset == "coco" else "flickr30k-images/"
        found = find_image(candidates, options, where, str(image_id), hint)
        meta = {"image_id": image_id, "file_name": filename, "split": split}
        yield caption_record(str(image_id), found, references, meta, where)


def _karpathy_names(image: dict, filename: str) -> list[str]:
    """Where a Karpathy image may be: as listed (``val2014/COCO_val2014_...jpg``), in the folder
    passed itself, or renamed by the COCO 2017 release (``val2017/`` or ``train2017/<cocoid>.jpg``)."""
    folder = image.get("filepath")
    names = [f"{folder}/{filename}", filename] if isinstance(folder, str) and folder else [filename]
    if isinstance(image.get("cocoid"), int):
        new = f"{image['cocoid']:012d}.jpg"
        names += [f"val2017/{new}", f"train2017/{new}", new]
    return names


def read_nocaps(paths: Sequence[Path], options: ReadOptions) -> Iterator[Record]:
    """NoCaps images with their ten captions and domain (in-domain, near-domain, out-domain)."""
    path = one_file(paths, "nocaps", NOCAPS_FILES)
    data = read_json(path, "nocaps", NOCAPS_FILES)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or (images and not (isinstance(images[0], dict) and "file_name" in images[0])):
        raise wrong_layout(path, "nocaps", describe(data), NOCAPS_FILES)
    fix = "pass the NoCaps file as downloaded"
    captions: dict[int, list[str]] | None = None
    if "annotations" in data:
        captions = defaultdict(list)
        for k, ann in enumerate(required(data, "annotations", str(path), list, fix)):
            where = f"{path}:annotations[{k}]"
            captions[required(ann, "image_id", where, int, fix)].append(required(ann, "caption", where, str, fix))
    for i, image in enumerate(data["images"]):
        where = f"{path}:images[{i}]"
        image_id = required(image, "id", where, int, fix)
        filename = required(image, "file_name", where, str, fix)
        references = None
        if captions is not None:
            references = captions.get(image_id)
            if not references:
                raise DataError(f"{where} (image id {image_id})", "no caption in 'annotations'",
                                "pass the NoCaps file as downloaded (every validation image has ten captions)")
        meta = {"image_id": image_id, "open_images_id": image.get("open_images_id"), "domain": image.get("domain"),
                "file_name": filename}
        found = find_image([filename], options, where, str(image_id), "the NoCaps images of this split")
        yield caption_record(str(image_id), found, references, meta, where)

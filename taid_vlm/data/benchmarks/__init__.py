"""Readers for the field's benchmarks in the layouts they are distributed in (no conversion step).

``read_benchmark(name, paths, image_dir)`` yields prompt-only records: VQA records carry
``answers`` (None on a test split), caption records ``references``; ``meta`` keeps what each
benchmark reports by (answer type, VizWiz answerability, GQA question types, NoCaps domain) and
the id its evaluation server expects. Scoring and prompts live in ``taid_vlm.eval.benchmarks``.
"""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import DataError
from ..records import Record
from .caption_sets import read_karpathy, read_nocaps
from .common import ReadOptions
from .qa_sets import read_gqa, read_textvqa, read_vizwiz
from .vqa_api import read_vqa_api

Reader = Callable[[Sequence[Path], ReadOptions], Iterator[Record]]

READERS: dict[str, Reader] = {
    "vqav2": partial(read_vqa_api, benchmark="vqav2"),
    "okvqa": partial(read_vqa_api, benchmark="okvqa"),
    "textvqa": read_textvqa,
    "vizwiz": read_vizwiz,
    "gqa": read_gqa,
    "coco": partial(read_karpathy, dataset="coco"),
    "flickr30k": partial(read_karpathy, dataset="flickr30k"),
    "nocaps": read_nocaps,
}
SPLIT_READERS = ("coco", "flickr30k")  # the only files that hold several splits


def read_benchmark(
    name: str,
    paths: Sequence[str | Path],
    image_dir: str | Path | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    check_images: str = "exists",
) -> list[Record]:
    """The first ``limit`` records of benchmark ``name`` read from ``paths``.

    ``image_dir`` defaults to the first file's folder. ``split`` applies to the Karpathy files
    only (they hold every split); other benchmarks ship one file per split.
    """
    if name not in READERS:
        raise DataError(name, "unknown benchmark", f"use one of {', '.join(READERS)}")
    if split is not None and name not in SPLIT_READERS:
        raise DataError(name, f"--split {split!r} does not apply: {name} ships one file per split",
                        "pass that split's file instead")
    files = [Path(p) for p in paths]
    folder = Path(image_dir) if image_dir is not None else (files[0].parent if files else Path("."))
    if not folder.is_dir():
        raise DataError(str(folder), "image folder not found", f"pass --images with the folder of {name}'s images")
    records = READERS[name](files, ReadOptions(folder, split, check_images))
    return list(itertools.islice(records, limit))


__all__ = ["READERS", "ReadOptions", "read_benchmark"]

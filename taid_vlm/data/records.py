"""The one record type every loader produces and every adapter renders.

A record is a conversation: ``messages`` are role/content turns whose content is plain text.
Images are attached to the record, and a user turn refers to them with the LLaVA-style
``<image>`` placeholder; adapters translate that into their own processor's format (image
tokens, chat template). A record whose messages carry no placeholder but which has images gets
them in front of its first user turn. Every assistant turn is a response to distil.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from .images import to_rgb

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")

ImageLike = Union[str, Path, Image.Image]


@dataclass
class Record:
    id: str
    messages: list[dict[str, str]]
    images: list[ImageLike] = field(default_factory=list)
    answers: list[str] | None = None
    references: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, source: str = "<memory>") -> "Record":
        """Raise a ValueError naming the source and record when the record is unusable."""
        where = f"{source}: record {self.id!r}"
        if not self.messages:
            raise ValueError(f"{where} has no messages")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"{where}, message {i}: expected {{'role', 'content'}}, got {m!r}")
            if m["role"] not in ROLES:
                raise ValueError(f"{where}, message {i}: role {m['role']!r} is not one of {ROLES}")
            if not isinstance(m["content"], str):
                raise ValueError(f"{where}, message {i}: content must be a string")
        placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in self.messages)
        if placeholders and placeholders != len(self.images):
            raise ValueError(
                f"{where} has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but "
                f"{len(self.images)} image(s); make them match"
            )
        return self

    @property
    def has_response(self) -> bool:
        return any(m["role"] == "assistant" for m in self.messages)

    def prompt_only(self) -> "Record":
        """The record cut before its last assistant turn (what a model is asked to answer)."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return Record(self.id, self.messages[:last], self.images, self.answers, self.references, self.meta)

    def with_messages(self, messages: list[dict[str, str]]) -> "Record":
        return Record(self.id, messages, self.images, self.answers, self.references, self.meta)

    def open_images(self) -> list[Image.Image]:
        """The images as RGB, opened now (records from loaders hold paths until this point).

        A missing or unreadable file raises an error that also names the record and the data
        line it came from (``meta['source']``), which a bare path would not.
        """
        try:
            return [load_image(image) for image in self.images]
        except OSError as e:  # FileNotFoundError included
            where = f"{self.meta.get('source', '<memory>')} (record {self.id!r})"
            raise type(e)(f"{where}: {e}; fix the path or load with skip_bad=True") from None


def load_image(image: ImageLike, base_dir: Path | None = None) -> Image.Image:
    """Open an image as 8-bit RGB, any mode converted faithfully (``data/images.py``); relative
    paths resolve against ``base_dir`` (the data file's folder)."""
    if isinstance(image, Image.Image):
        return to_rgb(image, getattr(image, "filename", "") or "in-memory image")
    path = Path(image)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        with Image.open(path) as im:
            return to_rgb(im, str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path} (paths are relative to the data file)") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise OSError(f"image unreadable: {path}: {e}") from None

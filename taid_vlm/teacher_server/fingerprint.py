"""Which checkpoint a server serves: a name made from the checkpoint's files, checked by the client.

``taid-vlm teacher-server`` serves a checkpoint under ``<folder name>@<16 hex digits>``; a run that
is given the same folder computes the same name and refuses a server that answers with another.
The digest covers every file of the folder (relative name, size, and its first and last MiB: the
whole of any smaller file, so configs, tokenizers and templates entirely, and each weight file's
safetensors header plus its first and last tensors' bytes), so it takes milliseconds on a 72B
checkpoint and still changes when the weights, tokenizer or chat template do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError

PART = 1 << 20  # bytes read from each end of a file


def checkpoint_digest(folder: str | Path) -> str:
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder}: not a checkpoint folder (a served teacher must be a local folder: config.json, "
                        "weights, tokenizer)")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read(PART))
            if size > 2 * PART:
                f.seek(size - PART)
                digest.update(f.read(PART))
            elif size > PART:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def served_name(folder: str | Path) -> str:
    """The model name a server of ``folder`` answers with (``/v1/models``)."""
    return f"{Path(folder).resolve().name}@{checkpoint_digest(folder)}"

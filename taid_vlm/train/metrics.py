"""metrics.jsonl (one JSON object per logged step), optional TensorBoard, and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..files import write_text_atomically


class MetricsLog:
    """Appends to ``metrics.jsonl``; on resume, lines past the resumed step are dropped first so a
    resumed run never logs a step twice."""

    def __init__(self, path: Path, resume_step: int = 0, tensorboard_dir: Path | None = None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            write_text_atomically(path, "".join(line + "\n" for line in kept))
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard=true needs the tensorboard package: pip install tensorboard") from e
            self.writer = SummaryWriter(str(tensorboard_dir))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    def __init__(self, total: int, initial: int, enabled: bool, desc: str = "distill"):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)

    def update(self, loss: float, loss_metrics: dict[str, float], tokens_per_s: float) -> None:
        """One step: its loss, the loss object's own ``metrics()`` (TAID: t, t_linear) and the speed."""
        post = {"loss": f"{loss:.4f}", **{k: _short(v) for k, v in loss_metrics.items()}, "tok/s": f"{tokens_per_s:.0f}"}
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _short(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)

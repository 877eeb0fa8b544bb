"""Teachers and the on-policy sampler on vLLM servers, opened for a run (``taid_vlm/teacher_server``).

``open_served_teacher``: with ``teacher_server`` the teacher is a server; it is checked before the
run writes anything (it answers, it serves the ``teacher`` folder, its vocabulary is the student's).

``Generator`` (``generation_backend: vllm``): on-policy samples come from a vLLM server of the
student (``taid-vlm teacher-server --teacher STUDENT --allow-weight-updates``). How its weights
follow training: every ``generation_sync_every`` optimizer steps, before a step that samples, the
run saves the student's current weights (safetensors, in a temporary folder of this machine)
and the server reloads them in place (vLLM's ``reload_weights``) and drops its prefix cache. A
sample drawn at step s therefore comes from the weights of step s0, the last sync, with
``s - s0 < generation_sync_every``: at most ``generation_sync_every - 1`` optimizer steps stale
(1, the default, is exactly on-policy). The first sample of a run (and of a resumed run) syncs
first, so the server never answers with weights the run did not give it. The server reads the
folder, so it must run on the same machine (or see the same file system).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..models import ModelAdapter, check_vocab_compatible
from ..teacher_server import ServedModel, open_served
from .config import DistillConfig
from .parallel import Distributed
from .preflight import check_pair


def open_served_teacher(config: DistillConfig, student: ModelAdapter) -> ServedModel | None:
    if not config.teacher_server:
        return None
    served = open_served(config.teacher, config.teacher_server, top_k=config.teacher_top_k,
                         timeout=config.teacher_server_timeout, chat_template=config.teacher_chat_template)
    check_vocab_compatible(served.adapter, student)
    check_pair(config, served.adapter, student)
    return served


class Generator:
    """The student's sampler on a vLLM server, synced every ``every`` optimizer steps."""

    def __init__(self, served: ServedModel, every: int, env: Distributed):
        self.served = served
        self.every = every
        self.env = env
        self.synced_at: int | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="taid-vlm-generator-")

    def sampler(self, student: ModelAdapter, step: int) -> ServedModel:
        """The server, holding the student's weights of step ``step`` or of at most ``every - 1`` steps before."""
        if self.synced_at is None or step - self.synced_at >= self.every:
            folder = Path(self._folder.name) / "weights"
            if self.env.is_main:
                student.model.save_pretrained(folder)
                self.served.client.reload_weights(str(folder))
            self.env.barrier()
            self.synced_at = step
        return self.served

    def close(self) -> None:
        self._folder.cleanup()


def open_generator(config: DistillConfig, student: ModelAdapter, env: Distributed) -> Generator | None:
    if config.generation_backend != "vllm":
        return None
    if not Path(str(config.student)).is_dir():
        from ..teacher_server import ServerError

        raise ServerError(f"generation_backend=vllm serves the student from its checkpoint folder; student="
                          f"{config.student} is not one (save it first, e.g. a composed student after one run)")
    served = open_served(config.student, config.generation_server, top_k=1, timeout=config.teacher_server_timeout,
                         role="student", chat_template=config.student_chat_template, check=False)
    return Generator(served, config.generation_sync_every, env)

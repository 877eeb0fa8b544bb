"""What ``taid-vlm teacher-server`` starts, declared once: the fields are the command's flags
(through ``taid_vlm/flags.py``). Light on purpose (no torch): the CLI builds its parser from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..flags import flag


@dataclass
class ServerConfig:
    teacher: str = field(default="", metadata=flag(
        required=True, metavar="DIR", help="checkpoint folder to serve (the teacher; or a student for on-policy sampling)"))
    port: int = field(default=8000, metadata=flag(help="port to listen on (default 8000)"))
    host: str = field(default="127.0.0.1", metadata=flag(help="address to bind (default 127.0.0.1: this machine only)"))
    top_k: int = field(default=20, metadata=flag(
        help="most log-probs a request may ask per token (vLLM's max_logprobs; default 20)"))
    dtype: str = field(default="auto", metadata=flag(help="auto (the checkpoint's), float32, bfloat16 or float16"))
    max_length: int | None = field(default=None, metadata=flag(
        help="longest sequence served, in tokens (default: the model's own limit)"))
    kv_cache_gib: float | None = field(default=None, metadata=flag(
        help="memory for vLLM's KV cache in GiB (default: vLLM's share of the GPU; 1 GiB without a GPU)"))
    eager: bool = field(default=False, metadata=flag(help="no graph compilation (starts faster, runs slower)"))
    allow_weight_updates: bool = field(default=False, metadata=flag(
        help="let a training run load new weights into this server (on-policy sampling with generation_backend=vllm)"))
    vllm_python: str | None = field(default=None, metadata=flag(
        metavar="PATH", help="python of the vLLM environment (default: $TAID_VLM_VLLM_PYTHON, else .venv-vllm "
        "made by scripts/setup_vllm.sh)"))
    vllm_args: list[str] = field(default_factory=list, metadata=flag(
        "--vllm-arg", action="append", metavar="ARG", help="one more argument for vLLM's server, e.g. "
        "--vllm-arg=--tensor-parallel-size=2 (repeat)"))
    start_timeout: float = field(default=900.0, metadata=flag(help="seconds to wait for the server to answer"))
    output: str | None = field(default=None, metadata=flag(
        metavar="DIR", help="folder for server.log (vLLM's output) and server.json (URL, name, pid)"))

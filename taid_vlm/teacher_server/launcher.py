"""Start vLLM's OpenAI-compatible server for a checkpoint, from the separate vLLM environment.

vLLM's CPU build pins its own torch and transformers, so it lives in ``.venv-vllm``
(``scripts/setup_vllm.sh``) and taid-vlm never imports it: the server runs as a subprocess of
that environment's python and everything goes through HTTP (``client.py``). The server is
started in its own process group (vLLM forks an engine process), so stopping it stops all of it.

It is started with what a teacher needs: ``max_logprobs`` = the top-k a run asks for, raw
log-probs (``logprobs_mode=raw_logprobs``: the model's log-softmax, no temperature or
penalties applied), the checkpoint's dtype, and a name that fingerprints the checkpoint
(``fingerprint.served_name``). ``allow_weight_updates`` turns on vLLM's development endpoints
(``/collective_rpc``, ``/reset_prefix_cache``), through which a training run reloads a student's
weights for on-policy sampling; leave it off for a teacher.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text_atomically
from .client import ServerClient, ServerError
from .config import ServerConfig
from .fingerprint import served_name

VLLM_PYTHON_ENV = "TAID_VLM_VLLM_PYTHON"
VENV = ".venv-vllm"
CPU_KV_CACHE_GIB = 1.0  # the KV cache on a machine without a GPU, unless --kv-cache-gib says otherwise


def vllm_python(explicit: str | None = None) -> str:
    """The python of the vLLM environment: given, $TAID_VLM_VLLM_PYTHON, or ``.venv-vllm`` in the
    project's checkout or the current folder."""
    if explicit or os.environ.get(VLLM_PYTHON_ENV):
        path = explicit or os.environ[VLLM_PYTHON_ENV]
        if not Path(path).is_file():
            raise ServerError(f"vllm python {path} does not exist; run `bash scripts/setup_vllm.sh` (it makes {VENV}) "
                              "or pass the python of an environment where vLLM is installed")
        return path
    checkout = Path(__file__).resolve().parents[2]
    for root in (checkout, Path.cwd()):
        candidate = root / VENV / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    raise ServerError(f"no vLLM environment found ({checkout / VENV} or ./{VENV}); run `bash scripts/setup_vllm.sh` "
                      f"(about 4 minutes, once), or pass --vllm-python / set {VLLM_PYTHON_ENV}")


def vllm_command(config: ServerConfig, python: str, name: str) -> list[str]:
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(Path(config.teacher).resolve()),
               "--served-model-name", name, "--host", config.host, "--port", str(config.port),
               "--max-logprobs", str(config.top_k), "--logprobs-mode", "raw_logprobs", "--dtype", served_dtype(config),
               "--generation-config", "vllm"]  # sampling defaults are the request's, not generation_config.json's
    if config.max_length:
        command += ["--max-model-len", str(config.max_length)]
    kv_cache_gib = config.kv_cache_gib or (None if has_gpu() else CPU_KV_CACHE_GIB)
    if kv_cache_gib:  # on CPU vLLM otherwise reserves a share of the whole node's memory, and fails when it is in use
        command += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * (1 << 30)))]
    if config.eager:
        command.append("--enforce-eager")
    return command + list(config.vllm_args)


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def served_dtype(config: ServerConfig) -> str:
    """``auto`` means the checkpoint's own dtype (vLLM's ``auto`` casts float32 to bfloat16 on CPU)."""
    if config.dtype != "auto":
        return config.dtype
    try:
        saved = json.loads((Path(config.teacher) / "config.json").read_text())
    except (OSError, ValueError):
        return "auto"
    for section in (saved, saved.get("text_config") or {}):
        dtype = section.get("dtype") or section.get("torch_dtype")
        if isinstance(dtype, str) and dtype in ("float32", "bfloat16", "float16"):
            return dtype
    return "auto"


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    name: str
    log: Path | None

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds; its exit code."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def start_server(config: ServerConfig) -> ServerProcess:
    """Start the server and wait until it answers with the checkpoint's name; a failure to start
    stops what was started and names the log."""
    _check(config)
    name = served_name(config.teacher)
    python = vllm_python(config.vllm_python)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the vLLM environment brings its own packages; ours would shadow them
    if config.allow_weight_updates:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    log = None
    if config.output:
        Path(config.output).mkdir(parents=True, exist_ok=True)
        log = Path(config.output) / "server.log"
    out = open(log, "ab") if log else None  # noqa: SIM115 - the child keeps writing to it
    try:
        process = subprocess.Popen(vllm_command(config, python, name), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if out is not None:
            out.close()
    server = ServerProcess(process, f"http://{_url_host(config.host)}:{config.port}", name, log)
    try:
        _wait_until_ready(server, config.start_timeout)
    except BaseException:
        server.stop(grace=10)
        raise
    if config.output:
        write_text_atomically(Path(config.output) / "server.json", json.dumps(
            {"url": server.url, "name": name, "pid": process.pid, "teacher": str(Path(config.teacher).resolve()),
             "top_k": config.top_k, "allow_weight_updates": config.allow_weight_updates}, indent=1) + "\n")
    return server


def _check(config: ServerConfig) -> None:
    if not (Path(config.teacher) / "config.json").is_file():
        raise ServerError(f"--teacher {config.teacher}: no config.json there; pass a checkpoint folder (vLLM serves "
                          "saved checkpoints, not composed specs)")
    if config.top_k < 1:
        raise ServerError(f"--top-k must be >= 1, got {config.top_k}")
    if not 0 < config.port < 65536:
        raise ServerError(f"--port must be in 1..65535, got {config.port}")


def free_port() -> int:
    """A port nothing on this machine listens on now (for a server started here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _wait_until_ready(server: ServerProcess, timeout: float) -> None:
    client = ServerClient(server.url, timeout=0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerError(f"vLLM exited with code {code} before answering{_log_tail(server.log)}")
        names = client.served_names(quiet=True)
        if names is not None:
            if server.name not in names:
                raise ServerError(f"{server.url} answers, but serves {names}, not {server.name}: another server holds "
                                  "that port; choose another --port")
            return
        time.sleep(1.0)
    raise ServerError(f"vLLM did not answer at {server.url} within {timeout:.0f} s{_log_tail(server.log)}; raise "
                      "--start-timeout for a large model")


def _log_tail(log: Path | None, lines: int = 3) -> str:
    if log is None or not log.is_file():
        return " (its output is above)"
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    return f"; last lines of {log}: " + " | ".join(" ".join(t.split())[:300] for t in tail)


def serve_until_stopped(config: ServerConfig) -> int:
    """``taid-vlm teacher-server``: start, print the URL, run until Ctrl-C or SIGTERM, stop cleanly."""
    server = start_server(config)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        print(f"teacher server ready: {server.url} (serving {server.name}, top-k up to {config.top_k}); "
              "Ctrl-C stops it", flush=True)
        code = server.process.wait()
        raise ServerError(f"vLLM stopped by itself with code {code}{_log_tail(server.log)}")
    except KeyboardInterrupt:
        code = server.stop()
        print(f"teacher server stopped (vLLM exit code {code})", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()


def _raise_interrupt(signum, frame):  # noqa: ANN001 - signal handler signature
    raise KeyboardInterrupt

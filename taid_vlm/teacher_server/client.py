"""HTTP to a vLLM server: scoring prompts (top-k prompt log-probs), sampling, reloading weights.

Only the standard library (``urllib``): taid-vlm does not import vLLM, and a server is just a
URL. Every call retries what a restarting or briefly overloaded server answers (refused or
reset connections, time-outs, HTTP 5xx) with exponential backoff (0.5 s doubling to 10 s), for at
most ``timeout`` seconds from the first failure; then one ``ServerError`` says which URL stopped
answering, for how long, and what to do. A request the server refuses (HTTP 4xx) fails at once
with the server's own message.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import UserError


class ServerError(UserError):
    """A server that cannot be started or reached; the message names the URL or folder and the fix."""


T = TypeVar("T")
R = TypeVar("R")
_RETRYABLE = (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError)


class _Retry(Exception):
    pass


def base_url(url: str) -> str:
    """``http://host:port`` from any of ``host:port``, ``http://host:port`` or ``http://host:port/v1``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url[: -len("/v1")] if url.endswith("/v1") else url


def is_url(text: str) -> bool:
    return str(text).startswith(("http://", "https://"))


class ServerClient:
    """One server. ``timeout``: seconds a run waits for an unreachable server (0: no retry);
    ``concurrency``: requests in flight at once (each request carries several prompts)."""

    def __init__(self, url: str, timeout: float = 600.0, concurrency: int = 4, request_timeout: float = 3600.0,
                 model: str | None = None):
        self.url = base_url(url)
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self.request_timeout = request_timeout
        self.model = model

    # ---- plumbing ------------------------------------------------------------------------------

    def _once(self, path: str, body: dict | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            if e.code >= 500:
                raise _Retry(f"HTTP {e.code}: {_message(detail)}") from None
            raise ServerError(f"the server at {self.url} refused {path} (HTTP {e.code}): {_message(detail)}") from None
        except _RETRYABLE as e:
            raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        return json.loads(raw) if raw.strip() else None

    def request(self, path: str, body: dict | None = None) -> Any:
        """GET (no body) or POST ``path``, retried with backoff for up to ``timeout`` seconds."""
        first_failure, delay, warned = None, 0.5, False
        while True:
            try:
                return self._once(path, body)
            except _Retry as e:
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                if now - first_failure >= self.timeout:
                    raise ServerError(
                        f"the server at {self.url} did not answer for {self.timeout:.0f} s (teacher_server_timeout; "
                        f"last error: {e}); start it again (taid-vlm teacher-server) and rerun the same command "
                        "(a training run: with --resume; its checkpoints are intact)") from None
                if not warned:
                    print(f"[taid-vlm] the server at {self.url} does not answer ({e}); retrying for up to "
                          f"{self.timeout:.0f} s", file=sys.stderr, flush=True)
                    warned = True
                time.sleep(min(delay, max(0.0, self.timeout - (now - first_failure))))
                delay = min(delay * 2, 10.0)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items``, ``concurrency`` at a time, results in order."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    # ---- what the server serves ------------------------------------------------------------------

    def served_names(self, quiet: bool = False) -> list[str] | None:
        """The model names ``/v1/models`` lists; None when nothing answers and ``quiet``."""
        try:
            answer = self._once("/v1/models", None) if quiet else self.request("/v1/models")
        except _Retry:
            return None
        return [m["id"] for m in answer.get("data", [])]

    def served_roots(self) -> dict[str, str]:
        """Served name -> the folder the server loaded it from (its ``root``)."""
        return {m["id"]: m.get("root", "") for m in self.request("/v1/models").get("data", [])}

    def check_serves(self, expected: str, what: str) -> None:
        """Fail unless the server answers with the name of ``what``'s checkpoint."""
        names = self.served_names()
        if expected not in (names or []):
            raise ServerError(f"the server at {self.url} serves {names}, not {what} (expected {expected!r}); start "
                              f"`taid-vlm teacher-server --teacher {what}` or point the run at the server of that folder")
        self.model = expected

    # ---- scoring and sampling ----------------------------------------------------------------------

    def prompt_logprobs(self, prompts: list[list[int]], k: int) -> list[list[dict | None]]:
        """For each prompt (token ids), per position the top-k log-probs of the model's prediction
        there (plus the actual token's), as vLLM returns them; position 0 is None."""
        body = {"model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k}
        choices = sorted(self.request("/v1/completions", body)["choices"], key=lambda c: c["index"])
        return [c["prompt_logprobs"] for c in choices]

    def chat_prompt_logprobs(self, messages: list[dict], k: int) -> tuple[list[int], list[dict | None]]:
        """A conversation with images, rendered and tokenized by the server: (its token ids, their
        prompt log-probs). The caller checks the ids against its own rendering."""
        body = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k,
                "add_generation_prompt": False, "return_token_ids": True}
        answer = self.request("/v1/chat/completions", body)
        return answer["prompt_token_ids"], answer["prompt_logprobs"]

    def complete(self, prompts: list[list[int]], max_tokens: int, temperature: float, stop_token_ids: list[int],
                 seed: int | None = None) -> list[list[int]]:
        """The token ids the server generates after each prompt (stop token included when reached)."""
        body = {"model": self.model, "prompt": prompts, "max_tokens": max_tokens, "temperature": temperature,
                "stop_token_ids": stop_token_ids, "return_token_ids": True, "skip_special_tokens": False}
        if seed is not None:
            body["seed"] = seed
        choices = sorted(self.request("/v1/completions", body)["choices"], key=lambda c: c["index"])
        return [c["token_ids"] for c in choices]

    def chat_complete(self, messages: list[dict], max_tokens: int, temperature: float, stop_token_ids: list[int],
                      seed: int | None = None) -> tuple[list[int], list[int]]:
        """(the server's prompt ids, the generated ids) for one conversation with images."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "stop_token_ids": stop_token_ids, "return_token_ids": True, "skip_special_tokens": False,
                "add_generation_prompt": True}
        if seed is not None:
            body["seed"] = seed
        answer = self.request("/v1/chat/completions", body)
        return answer["prompt_token_ids"], answer["choices"][0]["token_ids"]

    # ---- weights ---------------------------------------------------------------------------------------

    def reload_weights(self, folder: str) -> None:
        """Load the weights saved in ``folder`` into the running server (same architecture) and drop
        its prefix cache (computed with the old weights). Needs ``--allow-weight-updates``."""
        try:
            self.request("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        except ServerError as e:
            if "404" in str(e):
                raise ServerError(f"the server at {self.url} does not take weight updates; start it with "
                                  "`taid-vlm teacher-server --teacher STUDENT --allow-weight-updates`") from None
            raise
        self.request("/reset_prefix_cache", {})


def _message(detail: str) -> str:
    try:
        data = json.loads(detail)
        error = data.get("error", data)
        text = error.get("message", error) if isinstance(error, dict) else error
        return " ".join(str(text).split())[:500]
    except (ValueError, AttributeError):
        return " ".join(detail.split())[:500]

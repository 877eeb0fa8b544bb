"""The teacher (and the sampler) on a vLLM server, end to end against ONE real server.

The module starts `taid-vlm teacher-server` once (vLLM's CPU build from .venv-vllm, which
scripts/test.sh sets up; without it the fixture fails with the command to run) for a tiny
Qwen2 teacher (head_dim 32: vLLM's CPU attention needs >= 32) and every test shares it. An
outage is simulated by a proxy in front of it that stops answering, so the server itself is
started once. The student has the teacher's architecture, so the on-policy test can load the
student's weights into the same server (and gives the teacher's back afterwards).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from taid_vlm.cli import main
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.teacher_cache import TeacherCache
from taid_vlm.teacher_server import ServerClient
from taid_vlm.teacher_server.launcher import free_port, vllm_python
from taid_vlm.testing import save_tiny
from taid_vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, num_layers=2)  # 2 heads of 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    generate_shapes(root / "shapes", 8, 12, seed=0, text=True, qa_turns=1)
    save_tiny("qwen2", root / "teacher", seed=1, **TINY)
    save_tiny("qwen2", root / "student", seed=2, **TINY)
    save_tiny("qwen2", root / "other", seed=3, **TINY)
    reuse = os.environ.get("TAID_VLM_TEST_VLLM_URL")  # development only: a running server of this same teacher
    if reuse:
        yield root, reuse
        return
    vllm_python()  # no vLLM environment: one error naming scripts/setup_vllm.sh
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "taid_vlm.cli", "teacher-server", "--teacher", str(root / "teacher"), "--port",
               str(port), "--eager", "--kv-cache-gib", "0.25", "--allow-weight-updates", "--output", str(root / "srv")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 600
    while not any("teacher server ready" in line for line in lines):
        assert process.poll() is None, f"teacher-server exited: {process.stderr.read()[-3000:]}"
        assert time.time() < deadline, "teacher-server did not become ready in 600 s"
        time.sleep(0.5)
    url = f"http://127.0.0.1:{port}"
    yield root, url
    process.send_signal(signal.SIGTERM)  # the command stops vLLM cleanly and exits 0
    assert process.wait(120) == 0, process.stderr.read()[-3000:]
    assert "teacher server stopped" in process.stderr.read()


def distill_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["distill", "--student", str(root / "student"), "--data", str(root / "shapes" / "train.jsonl"), "--output",
            str(root / out), "max_steps=3", "batch_size=4", "log_every=1", "save_every=1", "progress=false", "lr=3e-3",
            *extra]


def losses(root: Path, out: str) -> list[float]:
    return [r["loss"] for r in read_metrics(root / out / "metrics.jsonl")]


# ---- the served teacher is the cached teacher ------------------------------------------------------------


def test_served_teacher_gives_the_fp32_top20_cache_loss_at_every_step(server):
    root, url = server
    cache = ["teacher-cache", "--teacher", str(root / "teacher"), "--data", str(root / "shapes" / "train.jsonl"),
             "--top-k", "20", "--logit-dtype", "float32", "--no-progress"]
    assert main([*cache, "--output", str(root / "cache")]) == 0
    assert main(distill_args(root, "from-cache", f"teacher_cache={root / 'cache'}")) == 0
    assert main(distill_args(root, "from-server", "--teacher", str(root / "teacher"), "--teacher-server", url)) == 0
    cached, served = losses(root, "from-cache"), losses(root, "from-server")
    assert len(served) == 3 and all(v > 0 for v in served)
    assert served == pytest.approx(cached, rel=2e-3)

    # teacher-cache --teacher-server fills the same cache from the server
    assert main([*cache, "--output", str(root / "cache-from-server"), "--teacher-server", url]) == 0
    local, remote = TeacherCache(root / "cache"), TeacherCache(root / "cache-from-server")
    records = [r for r in __import__("taid_vlm.data", fromlist=["load_records"]).load_records(root / "shapes" / "train.jsonl")]
    a, b = local.rows(records), remote.rows(records)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.allclose(a[2].logprobs.sort(-1).values, b[2].logprobs.sort(-1).values, atol=1e-5)
    assert torch.allclose(a[2].tail, b[2].tail, atol=1e-5)
    assert remote.teacher["weights_sha256"].startswith("files:")


# ---- outages and wrong servers -----------------------------------------------------------------------------


class Proxy:
    """Forwards to the server until ``down`` (then drops every connection unanswered, as a dead
    server would). ``outages``: scoring request number -> seconds it goes down at that request
    (None: until ``up()``); requests are counted while it is up."""

    def __init__(self, target: str):
        self.target, self.down, self.scored = target, False, 0
        self.outages: dict[int, float | None] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self, body: bytes | None):
                if proxy.down:
                    self.close_connection = True
                    return
                if self.path == "/v1/completions":
                    proxy.scored += 1
                    if proxy.scored in proxy.outages:
                        proxy.go_down(proxy.outages[proxy.scored])
                        self.close_connection = True
                        return
                request = urllib.request.Request(proxy.target + self.path, data=body, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=300) as answer:
                    data = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def go_down(self, seconds: float | None):
        self.down = True
        if seconds is not None:
            threading.Timer(seconds, self.up).start()

    def up(self):
        self.down = False

    def close(self):
        self.httpd.shutdown()


def test_server_outage_is_waited_for_then_fails_cleanly_then_resumes_exactly(server, capsys):
    root, url = server
    proxy = Proxy(url)
    try:
        steady = root / "from-server"  # the reference: the first test's run, the server up all along
        if not steady.is_dir():
            assert main(distill_args(root, "from-server", "--teacher", str(root / "teacher"), "--teacher-server", url)) == 0
        # step 2's request finds it down for 2 s (waited for; its retry is request 3); step 3's, for good
        proxy.outages = {2: 2.0, 4: None}
        args = distill_args(root, "outage", "--teacher", str(root / "teacher"), "--teacher-server", proxy.url,
                            "teacher_server_timeout=3")
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("taid-vlm distill: error:")]
        assert len(errors) == 1 and "did not answer for 3 s" in errors[0] and "--resume" in errors[0], err
        assert "retrying" in err  # the first outage was waited for
        done = read_metrics(root / "outage" / "metrics.jsonl")
        assert [r["step"] for r in done] == [1, 2]  # the first outage survived, the second stopped step 3
        assert (root / "outage" / "checkpoints").is_dir()
        proxy.up()
        assert main([*args, "--resume"]) == 0
        assert losses(root, "outage") == losses(root, "from-server")  # exactly, step by step
    finally:
        proxy.close()


def test_a_url_with_nothing_behind_it_or_another_model_fails_before_anything_is_written(server, capsys):
    root, url = server
    nothing = f"http://127.0.0.1:{free_port()}"
    for out, extra in (("nobody", ["--teacher", str(root / "teacher"), "--teacher-server", nothing,
                                   "teacher_server_timeout=1"]),
                       ("wrong", ["--teacher", str(root / "other"), "--teacher-server", url])):
        capsys.readouterr()
        assert main(distill_args(root, out, *extra)) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and err[0].startswith("taid-vlm distill: error:"), err
        assert not (root / out).exists()
    assert "did not answer" in err[0] or "serves" in err[0]


# ---- several teachers -------------------------------------------------------------------------------------------


def test_each_record_gets_its_own_teachers_signal(server):
    root, url = server
    rows = [json.loads(line) for line in (root / "shapes" / "train.jsonl").read_text().splitlines()]
    tagged = root / "tagged.jsonl"
    tagged.write_text("".join(json.dumps({**row, "teacher": "a" if i < 4 else "b"}) + "\n" for i, row in enumerate(rows)))
    only = {tag: root / f"only-{tag}.jsonl" for tag in "ab"}
    only["a"].write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    only["b"].write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    one = ["max_steps=1", "batch_size=8", "loss=fkl"]
    assert main([*distill_args(root, "routed", *one), "--data", str(tagged), f"teachers.a={url}",
                 f"teachers.b={root / 'other'}"]) == 0
    row = read_metrics(root / "routed" / "metrics.jsonl")[0]
    solo = {}
    for tag, teacher in (("a", ["--teacher-server", url, "--teacher", str(root / "teacher")]),
                         ("b", ["--teacher", str(root / "other")])):
        assert main([*distill_args(root, f"solo-{tag}", "max_steps=1", "batch_size=4", "loss=fkl"), "--data",
                     str(only[tag]), *teacher]) == 0
        solo[tag] = read_metrics(root / f"solo-{tag}" / "metrics.jsonl")[0]
    for tag in "ab":  # record by record, the step-1 loss of a teacher's records is that teacher's alone
        assert row[f"loss/{tag}"] == pytest.approx(solo[tag]["loss"], rel=1e-4)
        assert row[f"tokens/{tag}"] == solo[tag]["tokens"]
    assert row["loss/a"] != pytest.approx(row["loss/b"], rel=1e-2)  # the two teachers are told apart
    total = (row["loss/a"] * row["tokens/a"] + row["loss/b"] * row["tokens/b"]) / row["tokens"]
    assert row["loss"] == pytest.approx(total, rel=1e-4)


# ---- evaluation and on-policy sampling on the server -----------------------------------------------------------


def test_eval_backend_vllm_answers_as_the_hf_backend(server):
    root, url = server
    common = ["eval", "--model", str(root / "teacher"), "--data", str(root / "shapes" / "test_vqa.jsonl"), "--task",
              "vqa", "--quiet", "--max-new-tokens", "6", "--limit", "40"]
    assert main([*common, "--output", str(root / "eval-hf")]) == 0
    assert main([*common, "--output", str(root / "eval-vllm"), "--backend", "vllm", "--server", url]) == 0
    hf, vl = ([json.loads(line) for line in (root / d / "samples.jsonl").read_text().splitlines()]
              for d in ("eval-hf", "eval-vllm"))
    assert len(hf) == len(vl) == 40 and [r.keys() for r in hf] == [r.keys() for r in vl]
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(hf, vl))
    assert same >= 0.95 * len(hf), (same, len(hf))
    results = {d: json.loads((root / d / "results.json").read_text()) for d in ("eval-hf", "eval-vllm")}
    assert results["eval-hf"].keys() == results["eval-vllm"].keys()
    hf_model, model = results["eval-hf"]["models"]["teacher"], results["eval-vllm"]["models"]["teacher"]
    assert hf_model.keys() == model.keys() and hf_model["metrics"].keys() == model["metrics"].keys()
    assert model["extra"]["backend"] == "vllm" and hf_model["extra"]["backend"] == "hf"
    assert model["extra"]["generated_tokens"] > 0 and model["metrics"]["tokens_per_s"] > 0
    # the text task's perplexity comes from the server's log-prob of each reference token
    text = ["eval", "--model", str(root / "teacher"), "--data", str(root / "shapes" / "train.jsonl"), "--task", "text",
            "--quiet", "--max-new-tokens", "4", "--limit", "4"]
    assert main([*text, "--output", str(root / "text-hf")]) == 0
    assert main([*text, "--output", str(root / "text-vllm"), "--backend", "vllm", "--server", url]) == 0
    hf_text, vllm_text = (json.loads((root / d / "results.json").read_text())["models"]["teacher"]["metrics"]
                          for d in ("text-hf", "text-vllm"))
    assert vllm_text["perplexity"] == pytest.approx(hf_text["perplexity"], rel=1e-4)


def test_on_policy_samples_from_the_server_holding_the_students_weights(server, monkeypatch):
    root, url = server
    from taid_vlm.teacher_server import client as client_module

    reloads = []
    original = client_module.ServerClient.reload_weights
    monkeypatch.setattr(client_module.ServerClient, "reload_weights",
                        lambda self, folder: (reloads.append(folder), original(self, folder))[1])
    try:
        args = distill_args(root, "on-policy", "--teacher", str(root / "teacher"), "on_policy=1.0",
                            "generation_backend=vllm", f"generation_server={url}", "generation_sync_every=2",
                            "generation_max_new_tokens=4", "lr=1e-12")
        assert main(args) == 0
        assert len(reloads) == 2  # steps 1 and 3 (every 2 steps), not step 2
        # with lr=1e-12 the server now holds the student's weights: its log-probs are the student's, not the teacher's
        from taid_vlm.models import load

        ids = [5, 17, 200, 33, 12]
        client = ServerClient(url, timeout=30)
        client.model = client.served_names()[0]
        served = client.prompt_logprobs([ids], 1)[0]
        for name, expect in (("student", True), ("teacher", False)):
            model = load(root / name).model
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            best = [max(float(v["logprob"]) for v in served[p].values() if v["rank"] == 1) for p in range(1, len(ids))]
            close = torch.allclose(torch.tensor(best), logprobs[:-1].max(-1).values, atol=1e-4)
            assert close == expect, name
    finally:
        ServerClient(url, timeout=30).reload_weights(str(root / "teacher"))  # the other tests' teacher again


# ---- mistakes found before any server starts -------------------------------------------------------------------


def test_teacher_server_and_its_settings_refuse_mistakes_in_one_line(tmp_path, capsys):
    assert main(["teacher-server", "--teacher", str(tmp_path / "nothing"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("taid-vlm teacher-server: error:") and "config.json" in err[0]
    base = ["distill", "--student", "s", "--data", "d.jsonl", "--output", str(tmp_path / "run")]
    for extra, says in ((["--teacher", "t", "generation_backend=vllm", "on_policy=0.5"], "generation_server"),
                        (["--teacher-server", "http://x", "teacher_cache=c"], "pass one"),
                        (["teachers.a=t", "--teacher", "t"], "drop teacher"),
                        (["--teacher", "t", "generation_sync_every=0"], "generation_sync_every must be >= 1")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "run").exists()


def test_the_vlm_request_carries_each_image_in_its_place_and_a_mismatch_names_the_record():
    """What this CPU build cannot serve for most VLM families (their vLLM processors need
    torchvision) is still checked here: the chat request a served VLM teacher is sent."""
    import base64
    import io

    from PIL import Image

    from taid_vlm.models.families import detect_family
    from taid_vlm.teacher_server.served import _check_same_ids, chat_messages
    from taid_vlm.testing.tiny import tiny_records

    single, multi, two = tiny_records(with_images=True, image_size=16)
    messages = chat_messages(two, detect_family("idefics3"))
    assert [m["role"] for m in messages] == [m["role"] for m in two.messages]
    kinds = [[p["type"] for p in m["content"]] for m in messages]
    assert kinds == [["image_url", "text"], ["text"], ["text", "image_url"], ["text"]]
    sent = [p["image_url"]["url"] for m in messages for p in m["content"] if p["type"] == "image_url"]
    decoded = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))) for u in sent]
    assert [d.tobytes() for d in decoded] == [i.tobytes() for i in two.open_images()]
    assert chat_messages(multi, detect_family("idefics3"))[0] == {"role": "system", "content": [
        {"type": "text", "text": "Answer briefly."}]}
    with pytest.raises(Exception, match="record 'single'.*token 2 of 3"):
        _check_same_ids([1, 2, 9], [1, 2, 3], single, "http://x")


def test_the_tail_is_the_mass_the_top_k_leave():
    from taid_vlm.losses import topk_of_logits
    from taid_vlm.teacher_server.served import tail_of

    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    exact = topk_of_logits(logits, 8)
    assert torch.allclose(tail_of(exact.logprobs, full=False), exact.tail, atol=1e-6)
    assert torch.isinf(tail_of(topk_of_logits(logits, 50).logprobs, full=True)).all()

"""Run a table of bad inputs through the real ``taid-vlm`` CLI and give each a verdict.

Verdicts:
  clean      the expected exit code, and for a failure exactly one ``taid-vlm <command>: error:``
             line (the last on stderr), no traceback, and no pre-existing file changed
  traceback  a Python traceback reached the user (or an exception escaped ``main``)
  internal   exit 1: our own error path called it a bug ("internal error")
  silent     exit 0 where the input should have been refused
  data loss  a file that existed before the command changed or disappeared
  wrong      any other exit code

Most cases run in process through ``taid_vlm.cli.main`` (torch is imported once); SIGINT runs
a real subprocess. Tiny models and data are built in a temporary folder, offline.

    python scripts/fuzz_cli.py                      # prints one line per case
    python scripts/fuzz_cli.py --json docs/results/fuzz_cli.json
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .results import write_result
from .runner import REPO, Run, child_env

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Case:
    name: str
    argv: Callable[["Workspace"], list[str]]
    expect: int = 2
    protect: Callable[["Workspace"], list[Path]] = lambda ws: []  # folders whose files must not change
    setup: Callable[["Workspace"], None] | None = None
    patch: Callable[[], Callable[[], None]] | None = None  # returns an undo
    must_say: str = ""  # text the error line (or, for exit 0, stderr/warnings) must hold
    subprocess_sigint: bool = False


@dataclass
class Result:
    name: str
    verdict: str
    rc: int | None
    line: str
    seconds: float
    detail: str = ""


@dataclass
class Workspace:
    root: Path
    counter: int = 0
    made: dict = field(default_factory=dict)

    def fresh(self, label: str) -> Path:
        self.counter += 1
        return self.root / f"case-{self.counter:03d}-{label}"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def data(self) -> Path:
        return self.root / "shapes" / "train.jsonl"


# ---- the workspace ------------------------------------------------------------------------------


def build_workspace(root: Path) -> Workspace:
    from PIL import Image

    from ..cli import main
    from ..demo.shapes import generate_shapes
    from ..testing.tiny import save_tiny, save_tiny_composed_pair

    ws = Workspace(root)
    generate_shapes(root / "shapes", 16, 2, seed=0, text=True)
    save_tiny("qwen2", ws.teacher, hidden_size=32, num_layers=1, seed=1)
    save_tiny("qwen2", ws.student, hidden_size=16, num_layers=1, seed=2)
    # a finished run every resume/overwrite case copies (checkpoints step-1, step-2, student)
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(distill(ws, root / "finished")) == 0
    # image data in every awkward PIL mode, and a tiny composed VLM pair for it
    images = root / "images"
    images.mkdir()
    modes = {
        "rgb16.png": Image.fromarray(__import__("numpy").full((32, 32), 40000, "uint16")),
        "rgba.png": Image.new("RGBA", (32, 32), (255, 0, 0, 0)),
        "cmyk.jpg": Image.new("CMYK", (32, 32), (0, 255, 255, 0)),
        "palette.png": Image.new("P", (32, 32), 3),
        "la.png": Image.new("LA", (32, 32), (10, 100)),
        "bw.png": Image.new("1", (32, 32), 1),
    }
    for name, image in modes.items():
        image.save(images / name)
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(images / "anim.gif", save_all=True, append_images=frames[1:])
    rows = [{"id": f"img-{name}", "image": f"images/{name}", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}
        for name in list(modes) + ["anim.gif"]]
    (root / "modes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_tiny_composed_pair(root / "vlm-teacher", root / "vlm-student", ["What colour?", "red", "green", "blue"])
    return ws


def distill(ws: Workspace, out: Path, *extra: str, teacher: Path | None = None, student: Path | None = None,
            data: Path | None = None) -> list[str]:
    return ["distill", f"--teacher={teacher or ws.teacher}", f"--student={student or ws.student}",
            f"--data={data or ws.data}", f"--output={out}", "--batch-size=4", "--max-steps=2", "--save-every=1",
            "--log-every=1", "--no-progress", "--seed=1", *extra]


def rows_file(ws: Workspace, name: str, lines: list[str] | bytes) -> Path:
    path = ws.root / "bad" / name
    path.parent.mkdir(exist_ok=True)
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(line + "\n" for line in lines))
    return path


def chat(i: int, user: str = "hi", answer: str = "yo") -> str:
    return json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


def llava(image: str, user: str = "<image> what?", answer: str = "x") -> str:
    return json.dumps({"id": "img", "image": image, "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]})


def good(n: int = 4) -> list[str]:
    return [chat(i) for i in range(n)]


def copied_run(ws: Workspace, label: str) -> Path:
    out = ws.fresh(label)
    shutil.copytree(ws.root / "finished", out)
    ws.made[label] = out
    return out


def bad_data_case(name: str, lines: list[str] | bytes, must_say: str, *extra: str) -> Case:
    def argv(ws: Workspace) -> list[str]:
        out = ws.fresh(name)
        out.mkdir()
        (out / "notes.txt").write_text("the user's own file")
        ws.made[name] = out
        return distill(ws, out, *extra, data=rows_file(ws, f"{name}.jsonl", lines))

    return Case(f"data: {name}", argv, protect=lambda ws: [ws.made[name]], must_say=must_say)


def flag_case(name: str, extra: list[str], must_say: str, expect: int = 2) -> Case:
    return Case(f"flags: {name}", lambda ws: distill(ws, ws.fresh("flags"), *extra), expect=expect, must_say=must_say)


def yaml_case(name: str, text: str | bytes, must_say: str) -> Case:
    def argv(ws: Workspace) -> list[str]:
        path = ws.root / "bad" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["distill", f"--config={path}"]

    return Case(f"yaml: {name}", argv, must_say=must_say)


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def resume_case(name: str, damage: Callable[[Path], object], extra: list, expect: int, must_say: str) -> Case:
    """``extra`` items may be callables of the copied run folder (explicit checkpoint paths)."""
    def argv(ws: Workspace) -> list[str]:
        run = copied_run(ws, name)
        damage(run)
        return distill(ws, run, *[e(run) if callable(e) else e for e in extra])

    protect = (lambda ws: [ws.made[name]]) if expect != 0 else (lambda ws: [])
    return Case(f"resume: {name}", argv, expect=expect, protect=protect, must_say=must_say)


def poison_loss() -> Callable[[], None]:
    from ..train import loop

    real = loop.training_loss

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.total = parts.total * float("nan")
        return parts

    loop.training_loss = poisoned
    return lambda: setattr(loop, "training_loss", real)


def full_disk_after_first_checkpoint() -> Callable[[], None]:
    from ..train import checkpoint

    real, calls = checkpoint.save_model, {"n": 0}

    def full(model, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            return real(model, filename, *args, **kwargs)
        Path(filename).write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    checkpoint.save_model = full
    return lambda: setattr(checkpoint, "save_model", real)


def cases() -> list[Case]:
    import torch

    table = [
        # ---- flags and config values
        Case("flags: nothing given", lambda ws: ["distill"], must_say="student is required"),
        flag_case("unknown flag", ["--lr-rate=1"], "unrecognized arguments"),
        flag_case("max_steps not a number", ["--max-steps=ten"], "max_steps expects int"),
        flag_case("negative lr", ["--lr=-1"], "lr must be > 0"),
        flag_case("infinite lr", ["lr=.inf"], "lr must be a finite number"),
        flag_case("t_start > t_end", ["--t-start=0.9", "--t-end=0.5"], "t_start (0.9) must be <= t_end (0.5)"),
        flag_case("unknown loss", ["--loss=kl"], "loss 'kl' is not one of"),
        flag_case("gjsd beta > 1", ["--loss=gjsd", "loss_params.beta=1.5"], "loss_params.beta of loss 'gjsd'"),
        flag_case("skew outside [0,1]", ["--loss=skew_fkl", "loss_params.skew=2"], "loss_params.skew"),
        flag_case("akl mu < 0", ["--loss=akl", "loss_params.mu=-1"], "loss_params.mu"),
        flag_case("dkd alpha < 0", ["--loss=dkd", "loss_params.alpha=-1"], "loss_params.alpha"),
        flag_case("taid t as a param", ["loss_params.t=0.3"], "loss_params.t is not a parameter"),
        flag_case("loss param not a number", ["loss_params.beta=abc"], "expects a number"),
        flag_case("param of another loss", ["--loss=fkl", "loss_params.beta=0.5"], "not a parameter of loss 'fkl'"),
        flag_case("temperature 0", ["--temperature=0"], "temperature must be > 0"),
        flag_case("chunk_size 0", ["--chunk-size=0"], "chunk_size must be >= 1"),
        flag_case("student dtype int4", ["--student-dtype=int4"], "student_dtype must be one of"),
        flag_case("teacher dtype fp8", ["--teacher-dtype=fp8"], "teacher_dtype must be"),
        flag_case("teacher device gpu", ["--teacher-device=gpu"], "teacher_device must be"),
        flag_case("override without =", ["lr"], "is not key=value"),
        flag_case("batch_size 0", ["--batch-size=0"], "batch_size must be >= 1"),
        flag_case("batch larger than data", ["--batch-size=1000"], "needs at least 1000 records"),
        flag_case("unknown data format", ["--data-format=xml"], "data_format must be one of"),
        flag_case("on_policy 2", ["--on-policy=2"], "on_policy is a probability"),
        flag_case("max_length 4", ["--max-length=4"], "max_length must be >= 8"),
        flag_case("max_length beyond the model", ["--max-length=100000"], "exceeds the 1024 positions"),
        flag_case("data_limit 0", ["--data-limit=0"], "data_limit must be >= 1"),
        flag_case("resume and overwrite together", ["--resume", "--overwrite"], "exclude each other"),
        flag_case("distil_ratio 2", ["--distil-ratio=2"], "distil_ratio must lie in [0, 1]"),
        flag_case("freeze_vision on a text LM", ["--freeze-vision"], "no vision module"),
        # ---- YAML recipes
        Case("yaml: file missing", lambda ws: ["distill", "--config=/nonexistent/recipe.yaml"], must_say="config file not found"),
        yaml_case("a list", "- a\n- b\n", "expected a mapping"),
        yaml_case("invalid YAML", "lr: [1, 2\n", "not valid YAML"),
        yaml_case("unknown key", "learning_rate: 1\n", "unknown key 'learning_rate'"),
        yaml_case("wrong type", "max_steps: many\n", "max_steps expects int"),
        yaml_case("not UTF-8", b"\xff\xfe\x00lr: 1\n", "not valid YAML"),
        yaml_case("loss_params not numbers", "loss_params: {beta: high}\n", "loss_params expects dict"),
        # ---- models and paths
        Case("models: teacher missing", lambda ws: distill(ws, ws.fresh("m"), teacher=Path("/nonexistent/teacher")),
             must_say="teacher=/nonexistent/teacher: cannot load it"),
        Case("models: student is a data file", lambda ws: distill(ws, ws.fresh("m"), student=ws.data),
             must_say="student="),
        Case("models: teacher == student", lambda ws: distill(ws, ws.fresh("m"), student=ws.teacher),
             must_say="same model"),
        Case("models: vocabularies differ", lambda ws: distill(ws, ws.fresh("m"), student=ws.root / "vlm-student"),
             must_say="vocabularies differ"),
        Case("paths: output is a file", lambda ws: distill(ws, ws.data), protect=lambda ws: [ws.data.parent],
             must_say="is a file"),
        Case("paths: output not writable", lambda ws: distill(ws, Path("/sys/taid-vlm-out")),
             must_say="choose a folder you can write to"),
        # ---- data
        Case("data: file missing", lambda ws: distill(ws, ws.fresh("d"), data=Path("/nonexistent/train.jsonl")),
             must_say="file not found"),
        bad_data_case("empty file", [], "holds no rows"),
        bad_data_case("invalid JSON line 2", [chat(0), "{oops"], "invalid JSON"),
        bad_data_case("not UTF-8", b"\xff\xfe{}\n", "not UTF-8 text"),
        bad_data_case("rows not objects", ["[1, 2]"], "must be JSON objects"),
        bad_data_case("unknown keys", [json.dumps({"dialog": []})], "cannot tell the format"),
        bad_data_case("missing image", [llava("nope.png")], "nope.png"),
        bad_data_case("image is a URL", [llava("https://example.com/a.png")], "is a URL"),
        bad_data_case("no assistant turn", [json.dumps({"messages": [{"role": "user", "content": "q"}]})],
                      "no assistant turn"),
        bad_data_case("empty answer", [chat(0, answer="  ")], "is empty"),
        bad_data_case("role robot", [json.dumps({"conversations": [{"from": "robot", "value": "hi"},
                                                                   {"from": "gpt", "value": "x"}]})], "role 'robot'"),
        bad_data_case("prompt beyond the model", [chat(0, user="word " * 3000)] + good(), "max_length=1024"),
        bad_data_case("every row bad with skip_bad", [llava("nope.png")] * 4, "no usable training records",
                      "--skip-bad"),
        Case("data: corrupt image", lambda ws: distill(ws, ws.fresh("d"), data=corrupt_image_data(ws)),
             must_say="image unreadable"),
        Case("data: every PIL mode (16-bit, alpha, CMYK, palette, 1-bit, animation) trains",
             lambda ws: distill(ws, ws.fresh("modes"), "--batch-size=7", "--max-steps=1", teacher=ws.root / "vlm-teacher",
                                student=ws.root / "vlm-student", data=ws.root / "modes.jsonl"),
             expect=0, must_say="anim.gif has 2 frames; the first is used"),
        # ---- output directory, overwrite, resume
        Case("output: occupied without --overwrite", lambda ws: distill(ws, copied_run(ws, "occupied")),
             protect=lambda ws: [ws.made["occupied"]], must_say="holds another run"),
        Case("output: --overwrite with bad data", lambda ws: distill(ws, copied_run(ws, "ow-bad"), "--overwrite",
                                                                    data=rows_file(ws, "ow.jsonl", ["{oops"])),
             protect=lambda ws: [ws.made["ow-bad"]], must_say="invalid JSON"),
        Case("output: --overwrite, then no step can be applied", lambda ws: distill(ws, copied_run(ws, "ow-nan"),
                                                                                    "--overwrite", "--max-bad-steps=5"),
             protect=lambda ws: [ws.made["ow-nan"]], patch=poison_loss, must_say="none of the 2 step(s) could be applied"),
        Case("output: --overwrite with the teacher inside", lambda ws: teacher_inside(ws),
             protect=lambda ws: [ws.made["inside"]], must_say="lies inside --output"),
        Case("output: non-finite loss on every step", lambda ws: distill(ws, ws.fresh("nan"), "--max-bad-steps=1",
                                                                          "--max-steps=4"),
             patch=poison_loss, must_say="Likely cause"),
        resume_case("checkpoint path missing", lambda run: None, ["--resume=/nonexistent/step-1"], 2,
                    "no such checkpoint directory"),
        resume_case("other loss", lambda run: None, ["--resume", "--loss=fkl", "--max-steps=3"], 2,
                    "loss: 'taid' -> 'fkl'"),
        resume_case("other teacher", lambda run: None, ["--resume", "--max-steps=3", f"--teacher={REPO}"], 2,
                    "teacher:"),
        resume_case("truncated latest weights and optimizer shard",
                    lambda run: truncate(run / "checkpoints/step-0000002/state/__0_0.distcp"),
                    ["--resume", "--max-steps=3"], 0, "resuming from"),
        resume_case("truncated latest checkpoint index", lambda run: truncate(run / "checkpoints/step-0000002/state/.metadata"),
                    ["--resume", "--max-steps=3"], 0, "resuming from"),
        resume_case("garbled latest trainer state", lambda run: (run / "checkpoints/step-0000002/trainer_state.json")
                    .write_text("{not json"), ["--resume", "--max-steps=3"], 0, "resuming from"),
        resume_case("every checkpoint damaged", lambda run: [truncate(p) for p in run.glob("checkpoints/*/rng_rank0.pt")],
                    ["--resume", "--max-steps=3"], 2, "no intact checkpoint"),
        resume_case("explicit corrupt checkpoint", lambda run: truncate(run / "checkpoints/step-0000002/lr_scheduler.pt"),
                    [lambda run: f"--resume={run}/checkpoints/step-0000002", "--max-steps=3"], 2, "damaged"),
        Case("disk: full while writing a checkpoint", lambda ws: distill(ws, ws.fresh("full"), "--max-steps=3"),
             patch=full_disk_after_first_checkpoint, must_say="no space left"),
        Case("signal: SIGINT during training", lambda ws: distill(ws, ws.fresh("sigint"), "--max-steps=100000"),
             expect=130, subprocess_sigint=True, must_say="Last checkpoint:"),
        # ---- data shapes, demo, eval
        Case("data shapes: folder holds train.jsonl", lambda ws: shapes_into_foreign(ws),
             protect=lambda ws: [ws.made["foreign-shapes"]], must_say="already holds train.jsonl"),
        Case("data shapes: negative count", lambda ws: ["data", "shapes", "--out", str(ws.fresh("s")), "--n-train=-1"],
             must_say="n_train"),
        Case("data shapes: image too small", lambda ws: ["data", "shapes", "--out", str(ws.fresh("s")), "--image-size=3"],
             must_say="image_size"),
        Case("demo: folder with the user's files", lambda ws: demo_into_foreign(ws),
             protect=lambda ws: [ws.made["foreign-demo"]], must_say="did not write"),
        Case("demo: --out is a file", lambda ws: ["demo", "--quick", "--out", str(ws.data)],
             protect=lambda ws: [ws.data.parent], must_say="is a file"),
        Case("eval: model missing", lambda ws: eval_argv(ws, "--model=/nonexistent/model"), must_say="/nonexistent/model"),
        Case("eval: captions file as VQA", lambda ws: eval_argv(ws, data=ws.root / "shapes" / "test_caption.jsonl"),
             must_say="'answers'"),
        Case("eval: batch size 0", lambda ws: eval_argv(ws, "--batch-size=0"), must_say="batch"),
        Case("eval: negative limit", lambda ws: eval_argv(ws, "--limit=-1"), must_say="limit"),
        Case("eval: dtype int8", lambda ws: eval_argv(ws, "--dtype=int8"), must_say="dtype"),
        Case("eval: device gpu", lambda ws: eval_argv(ws, "--device=gpu"), must_say="device"),
        Case("eval: --output is a file", lambda ws: eval_argv(ws, output=ws.data), protect=lambda ws: [ws.data.parent],
             must_say=str("train.jsonl")),
    ]
    if torch.cuda.is_available():
        return table
    return table + [flag_case("cuda asked, none visible", ["--teacher-device=cuda"], "no CUDA device is visible")]


def corrupt_image_data(ws: Workspace) -> Path:
    from PIL import Image

    image = ws.root / "bad" / "cut.png"
    image.parent.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(image)
    truncate(image, 80)
    return rows_file(ws, "cut.jsonl", [llava(str(image))])


def teacher_inside(ws: Workspace) -> list[str]:
    run = copied_run(ws, "inside")
    shutil.copytree(ws.teacher, run / "teacher")
    return distill(ws, run, "--overwrite", teacher=run / "teacher")


def shapes_into_foreign(ws: Workspace) -> list[str]:
    out = ws.fresh("foreign-shapes")
    out.mkdir()
    (out / "train.jsonl").write_text("the user's data\n")
    ws.made["foreign-shapes"] = out
    return ["data", "shapes", "--out", str(out), "--n-train=2", "--n-test=1"]


def demo_into_foreign(ws: Workspace) -> list[str]:
    out = ws.fresh("foreign-demo")
    (out / "data").mkdir(parents=True)
    (out / "data" / "mine.txt").write_text("keep")
    ws.made["foreign-demo"] = out
    return ["demo", "--quick", "--out", str(out)]


def eval_argv(ws: Workspace, *extra: str, data: Path | None = None, output: Path | None = None) -> list[str]:
    argv = ["eval", f"--data={data or ws.root / 'shapes' / 'test_vqa.jsonl'}", "--task=vqa",
            f"--output={output or ws.fresh('eval')}", "--limit=2", "--quiet"]
    if not any(a.startswith("--model") for a in extra):
        argv.append(f"--model={ws.student}")
    return argv + list(extra)


# ---- running a case ------------------------------------------------------------------------------


def snapshot(folders: list[Path]) -> dict[str, str]:
    files = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file():
                files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def run_case(case: Case, ws: Workspace) -> Result:
    from ..cli import main

    argv = case.argv(ws)
    if case.setup:
        case.setup(ws)
    protected = case.protect(ws)
    before = snapshot(protected)
    started = time.perf_counter()
    if case.subprocess_sigint:
        rc, err, escaped = _sigint(argv, ws)
    else:
        undo = case.patch() if case.patch else None
        err_buf, out_buf = io.StringIO(), io.StringIO()
        escaped = ""
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err_buf), \
                    contextlib.redirect_stdout(out_buf):
                warnings.simplefilter("always")
                try:
                    rc = main(argv)
                except SystemExit as e:  # argparse
                    rc = e.code if isinstance(e.code, int) else 2
                except BaseException:  # noqa: BLE001 - an escaped exception is the verdict
                    rc, escaped = None, traceback.format_exc()
        finally:
            if undo:
                undo()
        # warnings print before the failure they lead to, as they would on a terminal
        err = "".join(f"warning: {w.message}\n" for w in caught) + err_buf.getvalue()
    seconds = time.perf_counter() - started
    after = snapshot(protected)
    lines = [line for line in err.splitlines() if ": error: " in line or "interrupted" in line]
    line = lines[-1] if lines else ""
    lost = sorted(k for k in before if after.get(k) != before[k])
    if escaped or "Traceback" in err:
        return Result(case.name, "traceback", rc, line, seconds, (escaped or err)[-600:])
    if lost:
        return Result(case.name, "data loss", rc, line, seconds, f"changed: {lost[:3]}")
    if rc == 1 and "internal error" in line:
        return Result(case.name, "internal", rc, line, seconds)
    if rc == 0 and case.expect != 0:
        return Result(case.name, "silent", rc, line, seconds)
    if rc != case.expect:
        return Result(case.name, "wrong", rc, line, seconds, err[-600:])
    if case.expect != 0:
        error_lines = [x for x in err.splitlines() if ": error: " in x]
        last = err.rstrip("\n").splitlines()[-1] if err.strip() else ""
        if len(error_lines) != 1 and case.expect == 2 and not line.startswith("usage") and "unrecognized" not in err:
            return Result(case.name, "wrong", rc, line, seconds, f"{len(error_lines)} error lines")
        if case.expect == 2 and not last.startswith("taid-vlm"):
            return Result(case.name, "wrong", rc, line, seconds, f"last line: {last[:200]}")
    if case.must_say and case.must_say not in err:
        return Result(case.name, "wrong", rc, line, seconds, f"expected {case.must_say!r} in: {err[-400:]}")
    if case.expect == 0 and case.must_say:
        line = next((x for x in err.splitlines() if case.must_say in x), line)
    return Result(case.name, "clean", rc, line, seconds)


def _sigint(argv: list[str], ws: Workspace) -> tuple[int | None, str, str]:
    out = Path(next(a for a in argv if a.startswith("--output=")).split("=", 1)[1])
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-m", "taid_vlm.cli", *argv, "--save-every=1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoints" / "step-0000002").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the table here (e.g. docs/results/fuzz_cli.json)")
    parser.add_argument("--only", help="run the cases whose name contains this text")
    args = parser.parse_args()
    run = Run()
    results = []
    with tempfile.TemporaryDirectory(prefix="taid-fuzz-") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ws = build_workspace(Path(tmp))
        table = [c for c in cases() if not args.only or args.only in c.name]
        for i, case in enumerate(table, 1):
            result = run_case(case, ws)
            results.append(result)
            print(f"[{i:>2}/{len(table)}] {result.verdict:<9} rc={result.rc!s:<4} {result.name}: {result.line[:160]}"
                  + (f"  <- {result.detail[:300]}" if result.verdict != "clean" else ""), flush=True)
    counts = {v: sum(r.verdict == v for r in results) for v in ("clean", "traceback", "internal", "silent", "data loss", "wrong")}
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        payload = run.record({
            "what": "bad inputs through the real taid-vlm CLI; verdict per case (scripts/fuzz_cli.py)",
            "counts": counts,
            "cases": [r.__dict__ for r in results],
        }, seconds=True)
        write_result(args.json, payload)
    return 0 if counts["clean"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

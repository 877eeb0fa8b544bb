"""The quality benchmark's transfer regime: where the teacher knows more than the student's data.

The teacher is trained on the preset's whole scenes set (the demo's 4,000 scenes); a student
sees only a small transfer set, the first ``transfer_records`` scenes of that set (300: the
teacher's data is 13x larger), and is scored on the preset's held-out test scenes. Parts:

- ``plateau``: every loss over the seeds at ``plateau_steps`` (600), where the ``sizing`` runs
  show the students near the end of their rise (docs/results/quality/transfer/sizing.json); the
  teacher's top-64 log-probs over the transfer set cached once; mean +- std and taid's per-seed
  paired difference against each other loss;
- ``gap``: three teachers of growing size trained on the big set (the zoo's teacher on top),
  one student, taid vs fkl vs skew_fkl, at the plateau budget (the top teacher's students are
  the ``plateau`` runs);
- ``noanswer``: the transfer set's answers are never shown: the teacher answers every turn
  once (``responses: teacher``, cached with its log-probs) and students learn from that, at the
  plateau budget;
- ``zoo``: the plateau zoo at ``student_steps`` (200), a third of the budget, where every student
  is still rising: which loss learns fastest from the teacher;
- ``sizing``: a few losses at a few budgets on seed 0 (how ``plateau_steps`` was chosen);
- ``xtok``: cross-tokenizer distillation (docs/CROSS-TOKENIZER.md): the same student on a
  second BPE of its own (``XTOK_VOCAB`` entries on the same texts, Llama 3 chat tags) learns from
  the ChatML teacher with taid over ``span`` (alone and with half CE), with ``uld`` and with sft,
  at the plateau budget; each method against sft, seed by seed.

Each part's JSON is rewritten after every finished seed (or teacher), so an interrupted run
still leaves its numbers, marked ``complete: false``; finished runs are reused on a rerun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from ..results import write_result
from ..runner import Run, child_command, child_env, print_json
from ..runs import reused_or_distilled
from . import report
from .stats import (SFT_ON_LABELS, SFT_ON_TEACHER_ANSWERS, gap_statements, mean_std, paired_table, xtok_statements,
                    zoo_statements)

# The zoo of the transfer regime: taid_ce is TAID with half of the weight on the labels' cross
# entropy (distil_ratio 0.5); taid_alpha is TAID's adaptive rule with alpha scaled
# to the run (alpha = 4 / max_steps, so alpha * N / 2 = 2 and t can leave the linear floor).
ZOO = ("sft", "fkl", "rkl", "skew_fkl", "skew_rkl", "gjsd", "dkd", "taid", "taid_ce", "taid_alpha")
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "taid_ce": ("taid", {"distil_ratio": 0.5}),
    "taid_alpha": ("taid", {"taid_alpha_per_run": 4.0}),
}
GAP_LOSSES = ("taid", "fkl", "skew_fkl")
NOANSWER_LOSSES = ("sft", "fkl", "skew_fkl", "dkd", "taid")
PARTS = ("sizing", "zoo", "plateau", "gap", "noanswer", "xtok")

# The cross-tokenizer part: a student whose tokenizer is not the teacher's. ULD is trained beside
# CE as its paper does (distil_ratio 0.5: CE + 1 * ULD up to scale); taid_span_ce gives taid the
# same CE share, so the two differ in the distillation term only.
XTOK: dict[str, tuple[str, dict[str, Any]]] = {
    "sft": ("sft", {}),
    "taid_span": ("taid", {"cross_tokenizer": "span"}),
    "taid_span_ce": ("taid", {"cross_tokenizer": "span", "distil_ratio": 0.5}),
    "uld": ("uld", {"cross_tokenizer": "uld", "distil_ratio": 0.5}),
}
# The student's vocabulary: the shapes texts saturate a BPE at about 580 entries (the teacher's);
# at 384 a quarter of the student's response tokens start inside a teacher token (unaligned).
XTOK_VOCAB = 384


@dataclass(frozen=True)
class TransferSettings:
    """What the transfer regime changes on top of a demo preset."""

    transfer_records: int
    student_steps: int
    student_batch: int
    student_lr: float
    eval_questions: int
    eval_captions: int
    # capacity ladder below the preset's teacher: (name, width scale, teacher steps)
    ladder: tuple[tuple[str, float, int], ...]
    sizing_steps: tuple[int, ...]
    sizing_losses: tuple[str, ...] = ("sft", "taid")
    # the zoo again at a budget near the students' plateau (the ``plateau`` part)
    plateau_steps: int = 600

    def part_steps(self, part: str) -> int:
        """The student budget of a part: the 200-step zoo measures learning speed, every other
        part (plateau, gap, noanswer) runs at the plateau budget."""
        return self.student_steps if part == "zoo" else self.plateau_steps

    def budget(self, steps: int | None = None):
        from ...demo.presets import TrainBudget

        steps = steps or self.student_steps
        return TrainBudget(steps=steps, lr=self.student_lr, batch_size=self.student_batch, warmup_steps=max(1, steps // 20))


SETTINGS = {
    "quick": TransferSettings(transfer_records=16, student_steps=4, student_batch=8, student_lr=3e-3, eval_questions=24,
                              eval_captions=4, ladder=(("S", 0.5, 6),), sizing_steps=(2, 4), plateau_steps=6),
    "default": TransferSettings(transfer_records=300, student_steps=200, student_batch=16, student_lr=2e-3,
                                eval_questions=600, eval_captions=50, ladder=(("S", 0.5, 200), ("M", 0.75, 275)),
                                sizing_steps=(100, 200, 400, 600, 900), sizing_losses=("sft", "fkl", "dkd", "taid")),
}
SETTINGS["full"] = SETTINGS["default"]


def resolve(name: str, variants: dict[str, tuple[str, dict[str, Any]]] | None = None) -> tuple[str, dict[str, Any]]:
    """What a zoo (or ``variants``) name means: the loss and its config settings."""
    return (variants or VARIANTS).get(name, (name, {}))


def ladder_specs(preset, settings: TransferSettings) -> list[tuple[str, dict, Any]]:
    """Teachers smaller than the preset's (encoder channels and LM width/depth scaled together),
    each with its own step count: the ladder's accuracies must be >= 10 points apart."""
    from ...demo.presets import text_config

    base, text = preset.teacher, preset.teacher["text_config"]
    channels = base["vision_kwargs"].get("channels")
    out = []
    for name, scale, steps in settings.ladder:
        vision_kwargs = dict(base["vision_kwargs"])
        if channels:
            vision_kwargs["channels"] = [max(8, int(c * scale) // 8 * 8) for c in channels]
        hidden = max(64, int(text["hidden_size"] * scale) // 32 * 32)
        spec = {**base, "vision_kwargs": vision_kwargs,
                "text_config": {**text, **text_config(hidden, max(1, round(text["num_hidden_layers"] * scale)))}}
        budget = dataclasses.replace(preset.teacher_budget, steps=steps, warmup_steps=max(1, steps // 20))
        out.append((name, spec, budget))
    return out


def build_teacher_cache(directory: Path, teacher_dir: Path, data_dir: Path, responses: str = "data", top_k: int = 64) -> Path:
    """The teacher's top-k over the transfer set, once (with ``responses='teacher'`` the teacher
    first answers every turn itself and the cache scores those answers)."""
    from ...data import load_records
    from ...models import load
    from ...teacher_cache import build_cache

    build_cache(load(str(teacher_dir), role="teacher"), str(teacher_dir), load_records(data_dir / "train.jsonl"), directory,
                top_k=top_k, responses=responses, progress=False)
    return directory


@dataclass
class Context:
    """Everything a part needs: the preset (eval settings applied), paths and the JSON writer."""

    preset: Any
    settings: TransferSettings
    work: Path
    big_data: Path
    data: Path
    tokenizer: Any
    teacher_dir: Path
    teacher_row: dict[str, Any]
    majority: float
    write: Callable[[str, dict[str, Any]], None]
    cache_top_k: int = 64


def student_init(ctx: Context, seed: int) -> Path:
    from ...demo.pipeline import save_initial_model

    path = ctx.work / f"init-student-{seed}"
    if not (path / "config.json").is_file():
        save_initial_model(path, ctx.preset.student, ctx.tokenizer, False, ctx.preset.image_size, 202 + seed)
    return path


def xtok_tokenizer(ctx: Context):
    """The cross-tokenizer student's own BPE: the teacher's texts, ``XTOK_VOCAB`` entries, Llama 3
    chat tags (``<|start_header_id|>``... ``<|eot_id|>``) where the teacher writes ChatML."""
    from ...data import load_records
    from ...models.tokenizer import IMAGE_TOKEN, PAD_TOKEN, train_bpe_tokenizer
    from ...testing.tiny import LLAMA3_TEMPLATE

    texts = [m["content"] for r in load_records(ctx.big_data / "train.jsonl") for m in r.messages]
    specials = [PAD_TOKEN, "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", IMAGE_TOKEN]
    return train_bpe_tokenizer(texts, vocab_size=XTOK_VOCAB, chat_template=LLAMA3_TEMPLATE, special_tokens=specials,
                               bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


def xtok_student_init(ctx: Context, seed: int) -> Path:
    """The plateau's student spec and initial seed, on the student's own tokenizer."""
    from ...demo.pipeline import save_initial_model

    path = ctx.work / f"init-xtok-student-{seed}"
    if not (path / "config.json").is_file():
        save_initial_model(path, ctx.preset.student, xtok_tokenizer(ctx), False, ctx.preset.image_size, 202 + seed)
    return path


def sweep(ctx: Context, prefix: str, names: list[str], seeds: list[int], teacher_dir: Path, cache: Path | None,
          budget, on_seed: Callable[[dict[str, dict[int, dict]]], None], eval_prefix: str | None = None,
          init: Callable[[Context, int], Path] | None = None, variants: dict | None = None,
          **shared: Any) -> dict[str, dict[int, dict]]:
    """Every (seed, loss) student run, evaluated together per seed; ``on_seed`` sees the rows so far."""
    from ...demo.pipeline import evaluate_models

    rows: dict[str, dict[int, dict]] = {name: {} for name in names}
    bar = tqdm(total=len(seeds) * len(names), desc=f"{prefix} runs", unit="run", file=sys.stderr)
    for seed in seeds:
        students = {}
        for name in names:
            students[name] = train_run(ctx, prefix, name, seed, teacher_dir, cache, budget, init=init, variants=variants,
                                       **shared)
            bar.update(1)
        scores = evaluate_models(ctx.work / f"{eval_prefix or prefix}-eval-{seed}", students, ctx.data, ctx.preset, progress=False)
        for row in scores["rows"]:
            rows[row["model"]][seed] = row
        tqdm.write(f"  {prefix} seed {seed}: " + ", ".join(f"{r['model']} {r['vqa_accuracy']:.1f}" for r in scores["rows"]),
                   file=sys.stderr)
        on_seed(rows)
    bar.close()
    return rows


def train_run(ctx: Context, prefix: str, name: str, seed: int, teacher_dir: Path, cache: Path | None, budget,
              init: Callable[[Context, int], Path] | None = None, variants: dict | None = None, **shared: Any) -> Path:
    """One (loss, seed) student, trained or reused (its folder is keyed); a folder another process
    is still writing is waited for. Returns the student's directory. ``init``: the student's
    initial weights (default ``student_init``); ``variants``: what the names mean (default ``VARIANTS``)."""
    loss, extra = resolve(name, variants)
    config = {**shared, **extra}
    if cache is not None and (loss != "sft" or config.get("responses") == "teacher"):
        config["teacher_cache"] = str(cache)
    wait_for_other_process(ctx.work, [f"{prefix}-{name}-{seed}"])  # a --jobs helper, or the gap reusing the plateau's runs
    run = reused_or_distilled(ctx.work / f"{prefix}-{name}-{seed}", (init or student_init)(ctx, seed), teacher_dir, ctx.data, loss,
                              budget, seed, ctx.preset.t_start, progress=False, **config)
    return run / "student"


def train_zoo_runs(ctx: Context, part: str, names: list[str], seeds: list[int]) -> None:
    """A ``bench_quality --jobs`` helper's share of a zoo part: the runs, trained or reused, and
    nothing else; the main process evaluates every seed and writes the results."""
    budget = ctx.settings.budget(ctx.settings.part_steps(part))
    init, variants = (xtok_student_init, XTOK) if part == "xtok" else (None, None)
    if part == "xtok":
        names = list(reversed(XTOK))
    for seed in tqdm(seeds, desc=f"{part} seeds (helper)", unit="seed", file=sys.stderr):
        for name in names:
            train_run(ctx, part, name, seed, ctx.teacher_dir, ctx.work / "cache-data", budget, init=init, variants=variants)


def summarize(rows: dict[str, dict[int, dict]], teacher_vqa: float, majority: float | None,
              sft_name: str = SFT_ON_LABELS) -> dict[str, Any]:
    """Mean +- std per loss, taid's paired differences, and the sentences they support."""
    table, per_seed = [], {}
    for name, by_seed in rows.items():
        if not by_seed:
            continue
        seeds = sorted(by_seed)
        vqa = [by_seed[s]["vqa_accuracy"] for s in seeds]
        cider = [by_seed[s]["CIDEr"] for s in seeds]
        per_seed[name] = {s: by_seed[s]["vqa_accuracy"] for s in seeds}
        m, sd = mean_std(vqa)
        cm, csd = mean_std(cider)
        table.append({"loss": name, "vqa_mean": m, "vqa_std": sd, "cider_mean": cm, "cider_std": csd,
                      "per_seed_vqa": {str(s): v for s, v in zip(seeds, vqa)}, "seeds": seeds,
                      "vqa_n": sorted({by_seed[s]["vqa_n"] for s in seeds}),
                      "caption_backend": sorted({str(by_seed[s]["caption_backend"]) for s in seeds})})
    pairs = paired_table(per_seed)
    return {"rows": table, "paired": pairs, "statements": zoo_statements(table, pairs, teacher_vqa, majority, sft_name)}


def run_sizing(ctx: Context, header: dict[str, Any]) -> None:
    """A few losses at a few budgets on seed 0: where does a student plateau on the transfer set,
    and does a distilled student stay ahead of sft there?"""
    from ...demo.pipeline import evaluate_models

    points = []
    for steps in ctx.settings.sizing_steps:
        budget = ctx.settings.budget(steps)
        started = time.perf_counter()
        students = {loss: reused_or_distilled(ctx.work / f"sizing-{loss}-{steps}", student_init(ctx, 0), ctx.teacher_dir,
                                              ctx.data, loss, budget, 0, ctx.preset.t_start, progress=False,
                                              **({} if loss == "sft" else {"teacher_cache": str(ctx.work / "cache-data")}))
                    / "student" for loss in ctx.settings.sizing_losses}
        trained = time.perf_counter() - started
        scores = evaluate_models(ctx.work / f"sizing-eval-{steps}", students, ctx.data, ctx.preset, progress=False)
        for row in scores["rows"]:
            points.append({"steps": steps, "loss": row["model"], "vqa": row["vqa_accuracy"], "cider": row["CIDEr"],
                           "train_seconds_both": trained})
        tqdm.write(f"  sizing {steps} steps: " + ", ".join(f"{r['model']} {r['vqa_accuracy']:.1f}" for r in scores["rows"]),
                   file=sys.stderr)
        ctx.write("sizing", {**header, "points": points, "complete": steps == ctx.settings.sizing_steps[-1]})


def run_zoo(ctx: Context, names: list[str], seeds: list[int], header: dict[str, Any], part: str = "zoo") -> None:
    """The zoo at the regime's student budget (``zoo``) or at ``plateau_steps`` (``plateau``)."""
    cache = ctx.work / "cache-data"
    steps = ctx.settings.part_steps(part)
    header = {**header, "student_steps": steps}

    def save(rows, complete=False):
        ctx.write(part, {**header, **summarize(rows, ctx.teacher_row["vqa_accuracy"], ctx.majority), "complete": complete})

    rows = sweep(ctx, part, names, seeds, ctx.teacher_dir, cache, ctx.settings.budget(steps), save)
    save(rows, complete=True)


def run_noanswer(ctx: Context, names: list[str], seeds: list[int], header: dict[str, Any]) -> None:
    cache = ctx.work / "cache-teacher-answers"
    build_teacher_cache(cache, ctx.teacher_dir, ctx.data, responses="teacher", top_k=ctx.cache_top_k)

    steps = ctx.settings.part_steps("noanswer")
    header = {**header, "student_steps": steps}

    def save(rows, complete=False):
        ctx.write("noanswer", {**header, **summarize(rows, ctx.teacher_row["vqa_accuracy"], ctx.majority, SFT_ON_TEACHER_ANSWERS),
                               "complete": complete})

    rows = sweep(ctx, "noanswer", names, seeds, ctx.teacher_dir, cache, ctx.settings.budget(steps), save,
                 responses="teacher")
    save(rows, complete=True)


def run_gap(ctx: Context, seeds: list[int], header: dict[str, Any]) -> None:
    from ...demo.pipeline import evaluate_models, save_initial_model, train_teacher

    teachers: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []

    steps = ctx.settings.part_steps("gap")
    header = {**header, "student_steps": steps}

    def save(complete=False):
        ctx.write("gap", {**header, "teachers": teachers, "rows": points, **gap_summary(teachers, points, ctx.majority),
                          "complete": complete})

    ladder = [(name, spec, budget) for name, spec, budget in ladder_specs(ctx.preset, ctx.settings)]
    for name, spec, budget in [*ladder, ("L", None, ctx.preset.teacher_budget)]:
        if spec is None:
            teacher_dir, spec_row = ctx.teacher_dir, ctx.teacher_row
        else:
            init = ctx.work / f"init-teacher-{name}"
            if not (init / "config.json").is_file():
                save_initial_model(init, spec, ctx.tokenizer, False, ctx.preset.image_size, 101)
            teacher_dir, _ = train_teacher(ctx.work / f"gap-teacher-{name}", init, ctx.big_data, budget, 0, progress=True)
            spec_row = evaluate_models(ctx.work / f"gap-eval-teacher-{name}", {"teacher": teacher_dir}, ctx.data,
                                       ctx.preset, False)["rows"][0]
        teachers.append({"name": name, "params": spec_row["params"], "vqa": spec_row["vqa_accuracy"],
                         "steps": budget.steps, "vqa_n": spec_row["vqa_n"]})
        tqdm.write(f"  gap: teacher {name} VQA {spec_row['vqa_accuracy']:.2f}", file=sys.stderr)
        cache = ctx.work / ("cache-data" if name == "L" else f"cache-{name}")
        build_teacher_cache(cache, teacher_dir, ctx.data, top_k=ctx.cache_top_k)  # finished shards are kept

        def on_seed(rows, name=name):
            points[:] = [p for p in points if p["teacher"] != name]
            for loss, by_seed in rows.items():
                points.extend({"teacher": name, "loss": loss, "seed": s, "vqa": r["vqa_accuracy"], "cider": r["CIDEr"],
                               "vqa_n": r["vqa_n"]} for s, r in sorted(by_seed.items()))
            save()

        # the L teacher's students are the plateau zoo's own runs (same teacher, cache, budget, seeds): reused
        sweep(ctx, "plateau" if name == "L" else f"gap-{name}", list(GAP_LOSSES), seeds, teacher_dir, cache,
              ctx.settings.budget(steps), on_seed, eval_prefix=f"gap-{name}")
    save(complete=True)


def run_xtok(ctx: Context, seeds: list[int], header: dict[str, Any]) -> None:
    """Cross-tokenizer students (their own tokenizer) from the teacher's cache: taid over span,
    uld and sft at the plateau budget; each distilled method against sft, seed by seed, and how
    many of the student's response tokens were aligned."""
    from ...train.metrics import read_metrics

    cache = ctx.work / "cache-data"
    steps = ctx.settings.part_steps("xtok")
    tokenizer = xtok_tokenizer(ctx)
    header = {**header, "student_steps": steps, "methods": {k: {"loss": v[0], **v[1]} for k, v in XTOK.items()},
              "student_vocabulary": len(tokenizer), "teacher_vocabulary": len(ctx.tokenizer),
              "student_chat_template": "llama3", "teacher_chat_template": "chatml"}
    alignment: dict[str, dict[str, float]] = {}

    def save(rows, complete=False):
        for name, by_seed in rows.items():
            for seed in by_seed:
                logged = read_metrics(ctx.work / f"xtok-{name}-{seed}" / "metrics.jsonl")
                for key in ("aligned_fraction", "mapped_mass"):
                    values = [r[key] for r in logged if key in r]
                    if values:
                        alignment.setdefault(name, {})[f"{key}/{seed}"] = sum(values) / len(values)
        ctx.write("xtok", {**header, **xtok_summary(rows, ctx.teacher_row["vqa_accuracy"], ctx.majority),
                           "alignment": alignment, "complete": complete})

    rows = sweep(ctx, "xtok", list(XTOK), seeds, ctx.teacher_dir, cache, ctx.settings.budget(steps), save,
                 init=xtok_student_init, variants=XTOK)
    save(rows, complete=True)


def xtok_summary(rows: dict[str, dict[int, dict]], teacher_vqa: float, majority: float | None) -> dict[str, Any]:
    table = summarize(rows, teacher_vqa, majority)["rows"]
    per_seed = {r["loss"]: {int(s): v for s, v in r["per_seed_vqa"].items()} for r in table}
    pairs, statements = xtok_statements(per_seed, teacher_vqa, majority)
    return {"rows": table, "paired": pairs, "statements": statements}


def wait_for_other_process(work: Path, runs: list[str], quiet_seconds: float = 300.0) -> None:
    """When a zoo running in another process is still writing one of these run folders, wait for it
    rather than train the same folder twice at once (a folder untouched for ``quiet_seconds`` is
    taken as abandoned and retrained here)."""
    from ...demo.pipeline import KEY_FILE

    while True:
        busy = [r for r in runs if (work / r).is_dir() and not (work / r / KEY_FILE).is_file()
                and time.time() - max((p.stat().st_mtime for p in (work / r).rglob("*")), default=0.0) < quiet_seconds]
        if not busy:
            return
        tqdm.write(f"  waiting for another process to finish {', '.join(busy)}", file=sys.stderr)
        time.sleep(30)


def refresh(part: str, result: dict[str, Any]) -> dict[str, Any]:
    """The derived fields (paired differences, curves, statements) recomputed from the measured rows
    with the current rules, so ``--render-only`` never shows sentences an older version chose."""
    if part == "gap":
        return {**result, **gap_summary(result["teachers"], result["rows"], result.get("majority"))}
    if part == "xtok":
        per_seed = {r["loss"]: {int(s): v for s, v in r["per_seed_vqa"].items()} for r in result["rows"]}
        pairs, statements = xtok_statements(per_seed, result["teacher"]["vqa_accuracy"], result["majority"])
        return {**result, "paired": pairs, "statements": statements}
    if part in ("zoo", "plateau", "noanswer"):
        per_seed = {r["loss"]: {int(s): v for s, v in r["per_seed_vqa"].items()} for r in result["rows"]}
        pairs = paired_table(per_seed)
        return {**result, "paired": pairs,
                "statements": zoo_statements(result["rows"], pairs, result["teacher"]["vqa_accuracy"], result["majority"],
                                             SFT_ON_TEACHER_ANSWERS if part == "noanswer" else SFT_ON_LABELS)}
    return result


def gap_summary(teachers: list[dict[str, Any]], points: list[dict[str, Any]], majority: float | None = None) -> dict[str, Any]:
    ordered = sorted(teachers, key=lambda t: t["params"])
    curves = {}
    for loss in GAP_LOSSES:
        curve = []
        for t in ordered:
            values = [p["vqa"] for p in points if p["loss"] == loss and p["teacher"] == t["name"]]
            if values:
                curve.append((*mean_std(values), len(values)))
        if curve:
            curves[loss] = curve
    return {"curves": {k: [list(c) for c in v] for k, v in curves.items()},
            "statements": gap_statements(curves, [(t["name"], t["vqa"]) for t in ordered], majority)}


# ---- running the regime ---------------------------------------------------------------------------


def render_transfer(out: Path, parts: list[str]) -> None:
    for part in parts:
        path = out / f"{part}.json"
        if not path.is_file():
            print(f"bench_quality: no {path} yet (part {part!r} has not written results); skipped", file=sys.stderr)
            continue
        result = json.loads(path.read_text())
        refreshed = refresh(part, result)
        if refreshed != result:
            write_result(path, refreshed)
        report.render(part, refreshed, out)
        print(f"rewrote {out / part}.md and .png from {path}" + (" (statements recomputed)" if refreshed != result else ""))


def main(args) -> None:
    """The transfer regime: teacher first, then the parts in order (``taid_vlm.bench.quality`` parsed
    the arguments)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from ...demo import PRESETS
    from ...demo.pipeline import evaluate_models, initial_models, majority_baseline, prepare_data, train_teacher, transfer_data

    settings = SETTINGS[args.preset]
    preset = PRESETS[args.preset]
    preset = preset.with_overrides(caption_backend=args.caption_backend, eval_questions=settings.eval_questions,
                                   eval_captions=settings.eval_captions)
    work, out = Path(args.work) / "transfer", Path(args.out) / "transfer"
    work.mkdir(parents=True, exist_ok=True)
    run = Run()
    big = prepare_data(work / "data", preset, False, 0)
    init = initial_models(work / "init", big, preset, False, 0)
    tokenizer = AutoTokenizer.from_pretrained(init["teacher"])
    teacher_dir, _ = train_teacher(work / "teacher", init["teacher"], big, preset.teacher_budget, 0, progress=True)
    data = transfer_data(work / "transfer-data", big, settings.transfer_records)
    teacher_row = evaluate_models(work / "eval-teacher", {"teacher": teacher_dir}, data, preset, False)["rows"][0]
    majority = majority_baseline(data)["overall"] * 100
    print(f"teacher: VQA {teacher_row['vqa_accuracy']:.2f} (majority-answer baseline {majority:.2f})", flush=True)
    build_teacher_cache(work / "cache-data", teacher_dir, data, top_k=args.cache_top_k)

    def write(part: str, payload: dict) -> None:
        payload = run.record(payload, seconds=True)
        write_result(out / f"{part}.json", payload)
        report.render(part, payload, out)

    header = {"regime": "transfer", "command": run.command, "preset": preset.name, "settings": dataclasses.asdict(settings),
              "teacher": teacher_row, "teacher_budget": dataclasses.asdict(preset.teacher_budget),
              "teacher_data_records": preset.n_train, "transfer_records": settings.transfer_records,
              "majority": majority, "seeds": list(args.seeds), "teacher_cache_top_k": args.cache_top_k}
    ctx = Context(preset, settings, work, big, data, tokenizer, teacher_dir, teacher_row, majority, write,
                           args.cache_top_k)
    if args.helper:  # a --jobs helper trains its share of the runs; the main process evaluates and reports
        for part in args.parts:
            train_zoo_runs(ctx, part, list(args.losses), list(args.seeds))
        return
    helpers = start_helpers(args, work)
    if helpers:  # a plain kill (SIGTERM) must run the cleanup below too, or the helpers outlive us
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for part in args.parts:  # in the order given: the most important first
            print(f"part {part} ...", flush=True)
            if part == "sizing":
                run_sizing(ctx, header)
            elif part in ("zoo", "plateau"):
                run_zoo(ctx, list(args.losses), list(args.seeds), header, part)
            elif part == "gap":
                run_gap(ctx, list(args.gap_seeds), {**header, "seeds": list(args.gap_seeds)})
            elif part == "xtok":
                run_xtok(ctx, list(args.seeds), header)
            else:
                names = [n for n in args.losses if n in NOANSWER_LOSSES]  # --losses narrows (and orders) it too
                run_noanswer(ctx, names, list(args.seeds), header)
            print((out / f"{part}.md").read_text(), flush=True)
    finally:  # on success a helper's remaining work is already done or reused; on an error or Ctrl-C it must not outlive us
        for helper in helpers:
            helper.terminate()
            helper.wait()
    print_json({"seconds": round(run.seconds, 1), "out": str(out)})


HELPED_PARTS = ("plateau", "zoo", "xtok")  # the parts with many runs; the others build teachers and caches once


def start_helpers(args, work: Path) -> list:
    """``--jobs N``: N - 1 copies of this command that only train the plateau and zoo runs, each with
    the seeds (rotated) and losses reversed; logs in WORK/helper-I.log. Runs are keyed folders, so a
    run one process finished is reused by the others, and a run being written is waited for
    (``wait_for_other_process``); the main process evaluates every seed."""
    import subprocess

    parts = [p for p in args.parts if p in HELPED_PARTS]
    if args.jobs <= 1 or not parts:
        return []
    helpers = []
    for i in range(1, args.jobs):
        seeds = list(reversed(args.seeds))
        shift = (i - 1) * len(seeds) // (args.jobs - 1)
        seeds = seeds[shift:] + seeds[:shift]
        command = child_command("quality", [
            "--regime", "transfer", "--preset", args.preset, "--parts", *parts, "--seeds", *map(str, seeds),
            "--losses", *reversed(args.losses), "--caption-backend", args.caption_backend, "--work", args.work,
            "--cache-top-k", str(args.cache_top_k), "--threads", str(args.threads or 1), "--helper", str(i)])
        with open(work / f"helper-{i}.log", "w") as log:  # the child keeps its own handle
            log.write("helper command: " + " ".join(command) + "\n")
            log.flush()
            helpers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env()))
        print(f"helper {i}: seeds {' '.join(map(str, seeds))} on {' '.join(parts)} (log {work / f'helper-{i}.log'})", flush=True)
    return helpers

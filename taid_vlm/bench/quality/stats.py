"""What the quality benchmark concludes from its numbers: seed statistics, paired differences and
the sentences the tables print (scripts/bench_quality.py writes them, scripts/readme_tables.py
shows them). Pure functions over rows of JSON, so a partial run is summarised the same way and
a test can drive every branch with synthetic rows.

A sentence is never typed by hand: it is chosen here from the numbers, whichever way they go.
"Beats" means the mean per-seed paired difference is positive and larger than twice its
standard error (seeds pair the runs: same initial weights and data order); "loses" the mirror
image; anything in between is "within seed noise".
"""

from __future__ import annotations

import math
import statistics
from typing import Any


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(reference: dict[int, float], baseline: dict[int, float]) -> dict[str, Any] | None:
    """reference - baseline over the seeds both finished (keys are seeds); None when none did."""
    seeds = sorted(set(reference) & set(baseline))
    if not seeds:
        return None
    diffs = [reference[s] - baseline[s] for s in seeds]
    mean, sd = mean_std(diffs)
    return {"seeds": seeds, "per_seed_diff": diffs, "mean_diff": mean, "std_diff": sd,
            "stderr": sd / math.sqrt(len(diffs)) if len(diffs) > 1 else None,
            "wins": sum(d > 0 for d in diffs), "n": len(diffs)}


def verdict(diff: dict[str, Any] | None) -> str:
    """'beats', 'loses to' or 'is within seed noise of' (one seed: no verdict, 'single seed')."""
    if diff is None:
        return "has no finished seed against"
    if diff["stderr"] is None:
        return "(single seed, no verdict) vs"
    if diff["mean_diff"] > 2 * diff["stderr"]:
        return "beats"
    if diff["mean_diff"] < -2 * diff["stderr"]:
        return "loses to"
    return "is within seed noise of"


def paired_table(per_seed: dict[str, dict[int, float]], reference: str = "taid") -> list[dict[str, Any]]:
    """The reference loss against every other loss of the part, seed by seed."""
    if reference not in per_seed:
        return []
    rows = []
    for name, values in per_seed.items():
        if name == reference:
            continue
        diff = paired(per_seed[reference], values)
        if diff is not None:
            rows.append({"baseline": name, **diff, "verdict": verdict(diff)})
    return rows


def diff_sentence(reference: str, row: dict[str, Any]) -> str:
    return (f"{reference} {row['verdict']} {row['baseline']}: paired difference {row['mean_diff']:+.2f} points "
            f"(std {row['std_diff']:.2f}), {reference} ahead on {row['wins']} of {row['n']} seeds.")


SFT_ON_LABELS = "the student trained on the transfer set alone (sft)"
SFT_ON_TEACHER_ANSWERS = "sft on the teacher's answers (sequence-level distillation)"


def zoo_statements(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], teacher_vqa: float,
                   majority: float | None, sft_name: str = SFT_ON_LABELS) -> list[str]:
    """The zoo's conclusions: TAID vs fkl, dkd and sft, and whether the teacher is worth having at all."""
    by_loss = {r["loss"]: r for r in rows}
    lines = []
    for baseline in ("fkl", "dkd", "sft"):
        row = next((p for p in pairs if p["baseline"] == baseline), None)
        if row is not None:
            lines.append(diff_sentence("taid", row))
    if "sft" in by_loss:
        sft = by_loss["sft"]["vqa_mean"]
        distilled = [r for r in rows if r["loss"] != "sft"]
        if distilled:
            best = max(distilled, key=lambda r: r["vqa_mean"])
            lines.append(f"Teacher {teacher_vqa:.2f} vs {sft_name} {sft:.2f}; "
                         f"the best distilled student ({best['loss']}, {best['vqa_mean']:.2f}) is "
                         f"{best['vqa_mean'] - sft:+.2f} points from sft and closes "
                         f"{_share(best['vqa_mean'], sft, teacher_vqa)} of the sft -> teacher gap.")
            above = sum(r["vqa_mean"] > sft for r in distilled)
            lines.append(f"{above} of {len(distilled)} distilling losses average above sft.")
        if majority is not None:
            lines.append(f"Majority-answer baseline {majority:.2f}: sft is {sft - majority:+.2f} points from it.")
    return lines


def xtok_statements(per_seed: dict[str, dict[int, float]], teacher_vqa: float,
                    majority: float | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Cross-tokenizer methods against sft on the same student (same tokenizer, data, budget and
    seeds): each one's paired difference, and whether cross-tokenizer distillation beats sft at all."""
    if "sft" not in per_seed:
        return [], []
    pairs, lines = [], []
    for name, values in per_seed.items():
        diff = paired(values, per_seed["sft"]) if name != "sft" else None
        if diff is not None:
            pairs.append({"method": name, "baseline": "sft", **diff, "verdict": verdict(diff)})
            lines.append(diff_sentence(name, pairs[-1]))
    winners = [p["method"] for p in pairs if p["verdict"] == "beats"]
    sft = statistics.fmean(per_seed["sft"].values())
    if winners:
        lines.append(f"Cross-tokenizer distillation beats sft here: {', '.join(winners)}.")
    elif pairs:
        best = max(pairs, key=lambda p: p["mean_diff"])
        lines.append(f"Cross-tokenizer distillation does not beat sft here: the best method, {best['method']}, is "
                     f"{best['mean_diff']:+.2f} points from sft ({best['verdict'].replace('is ', '')} it).")
    lines.append(f"Teacher {teacher_vqa:.2f}, sft {sft:.2f}" + (f", majority-answer baseline {majority:.2f}." if majority
                                                                   is not None else "."))
    return pairs, lines


def _share(value: float, floor: float, ceiling: float) -> str:
    return "none" if ceiling <= floor else f"{(value - floor) / (ceiling - floor) * 100:.0f}%"


def teacher_separation(teachers: list[tuple[str, float]], required: float = 10.0) -> str:
    """Whether the capacity ladder's teachers (name, VQA accuracy; ordered by size) are far enough apart."""
    if len(teachers) < 2:
        return "Fewer than two teachers finished: no ladder yet."
    steps = [b[1] - a[1] for a, b in zip(teachers, teachers[1:])]
    chain = " -> ".join(f"{n} {acc:.1f}" for n, acc in teachers)
    ok = all(s >= required for s in steps)
    return (f"Teachers {chain}: each step {'is' if ok else 'is NOT'} >= {required:.0f} points "
            f"(steps {', '.join(f'{s:+.1f}' for s in steps)}).")


def trend(means: list[tuple[float, float, int]]) -> str:
    """'rises', 'falls' or 'stalls' for a student's (mean, std, n) as the teacher grows.

    Rises: every step up is non-negative and the last teacher's student is more than two standard
    errors of the difference above the first one's; falls: the mirror image; else stalls.
    """
    if len(means) < 2:
        return "has one teacher only"
    (first, sd_a, n_a), (last, sd_b, n_b) = means[0], means[-1]
    err = math.sqrt(sd_a**2 / max(n_a, 1) + sd_b**2 / max(n_b, 1))
    steps = [b[0] - a[0] for a, b in zip(means, means[1:])]
    if all(s >= 0 for s in steps) and last - first > 2 * err:
        return "rises"
    if all(s <= 0 for s in steps) and first - last > 2 * err:
        return "falls"
    return "stalls"


def top_step(means: list[tuple[float, float, int]]) -> tuple[float, float]:
    """The student's change from the second-largest to the largest teacher, and two standard errors of it."""
    (a, sd_a, n_a), (b, sd_b, n_b) = means[-2], means[-1]
    return b - a, 2 * math.sqrt(sd_a**2 / max(n_a, 1) + sd_b**2 / max(n_b, 1))


def gap_statements(curves: dict[str, list[tuple[float, float, int]]], teachers: list[tuple[str, float]],
                   majority: float | None = None) -> list[str]:
    """Does TAID's student rise with the teacher while the others stall (the paper's capacity-gap claim)?

    The whole curve can rise just because the smallest teacher is poor, so the claim is judged on
    the last step, from the second-largest to the largest teacher, where the paper says the
    other losses stall.
    """
    lines = [teacher_separation(teachers)]
    weak = [f"{name} ({acc:.1f})" for name, acc in teachers if majority is not None and acc < majority]
    if weak:
        lines.append(f"Below the majority-answer baseline ({majority:.1f}): teacher {', '.join(weak)}, a teacher that "
                     "has not learned the task; the step to the largest teacher below is the informative one.")
    steps = {}
    for loss, means in curves.items():
        if len(means) < 2:
            continue
        path = " -> ".join(f"{m:.1f}" for m, _, _ in means)
        steps[loss] = top_step(means)
        diff, noise = steps[loss]
        lines.append(f"{loss}'s student {trend(means)} with the teacher ({path}); to the largest teacher "
                     f"{diff:+.1f} points ({'beyond' if abs(diff) > noise else 'within'} two standard errors, {noise:.1f}).")
    if "taid" in steps and len(steps) > 1:
        others = {loss: step for loss, step in steps.items() if loss != "taid"}
        taid_diff, taid_noise = steps["taid"]
        others_gain = [loss for loss, (d, n) in others.items() if d > n]
        listed = ", ".join(f"{loss} {d:+.1f}" for loss, (d, _) in others.items())
        if taid_diff > taid_noise and not others_gain:
            lines.append(f"The capacity-gap claim holds here: taid's student gains from the largest teacher "
                         f"({taid_diff:+.1f}) while the others do not ({listed}).")
        elif taid_diff > max(d for d, _ in others.values()):
            lines.append(f"taid's student gains most from the largest teacher ({taid_diff:+.1f}; {listed}), but within "
                         "seed noise: the capacity-gap claim is not established here.")
        else:
            lines.append(f"The capacity-gap claim does not hold here: from the largest teacher taid's student gains "
                         f"{taid_diff:+.1f}, not more than the others ({listed}).")
    return lines


def plateau_statements(points: list[dict[str, Any]], tolerance: float = 2.0) -> list[str]:
    """For each loss of the sizing runs: did its last budget still gain more than ``tolerance``
    points over the one before (still rising), or did it level off (a plateau)?"""
    lines = []
    for loss in dict.fromkeys(p["loss"] for p in points):
        curve = sorted((p["steps"], p["vqa"]) for p in points if p["loss"] == loss)
        if len(curve) < 2:
            continue
        (a, va), (b, vb) = curve[-2], curve[-1]
        state = ("still rising: not a plateau" if vb - va > tolerance else
                 "fell: past its best budget" if va - vb > tolerance else "levelled off: a plateau")
        lines.append(f"{loss}: {va:.1f} at {a} steps -> {vb:.1f} at {b} steps ({vb - va:+.1f}), {state} "
                     f"(within {tolerance:.0f} points counts as level).")
    return lines

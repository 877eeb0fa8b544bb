"""No compute on padding: one optimizer step on LLaVA-Instruct-shaped lengths, padded, length-grouped
and packed, against TRL's distillation trainers on the same records.

The records
  ``--records`` records per optimizer step, their prompt and response lengths drawn (seeded) from
  the committed joint histogram taid_vlm/bench/llava_instruct_lengths.json (``--lengths``): a bin
  by its count, then a length uniformly inside the bin. Token ids are random; the pair is
  vs_trl's (Qwen2ForCausalLM teacher 512 x 4 layers, student 256 x 2, untied heads,
  ``--vocab`` rows, fixed seeds, identical weights on every side, checked by fingerprint).
  ``--image-tokens N`` adds N prompt tokens to every record (LLaVA-1.5 spends 576 on an image).

  Where the histogram comes from: it is NOT measured on LLaVA-Instruct-150K (no machine here
  can download it). ``--write-histogram`` builds it from a model of the data set's three
  parts, in the proportions of the LLaVA paper (58K conversations, 23K detailed descriptions,
  77K complex-reasoning answers): each record is a LLaVA-v1 system prompt (35 tokens) and 5
  template tokens per round, questions and answers log-normal per part, conversations of 1 to
  5 rounds. The parts' mean lengths were set so that a record's text matches the bytes per
  record of the released JSON files (conversation_58k.json 126 MB, detail_23k.json 20.5 MB,
  complex_reasoning_77k.json 79.6 MB, as the LLaVA repository's Data.md lists them) at ~4.4 bytes a token,
  less the JSON keys: about 430, 165 and 200 text tokens. The spreads are our assumption. The
  JSON records all of this in its ``source`` field; treat the shape as plausible, not measured.

Sides (each in its own process)
  ours_padded          the step's micro-batches in the shuffled order, right-padded (group_by_length=false)
  ours_grouped         the same records through train/grouping.py (the step sorted by length, then
                       cut into micro-batches), right-padded
  ours_packed          the shuffled micro-batches, each packed into padding-free rows (models/packing.py)
  ours_grouped_packed  both switches on (the recommended setting)
  trl_gkd_full_logits / trl_distillation_chunked  TRL's GKDTrainer (beta=0, lmbda=0) and stable
                       DistillationTrainer (beta=0, generation replaced by the identity), built
                       as in vs_trl.py, fed the shuffled padded micro-batches
  trl_gkd_full_logits_grouped / trl_distillation_chunked_grouped  the same, fed ours_grouped's
                       micro-batches (what transformers' ``group_by_length`` gives TRL users)
  trl_gkd_liger        GKD with Liger kernels (runs only where Triton has a GPU)
  Every side computes forward KL (fkl) over the same response tokens, normalised by the step's
  response tokens: one ``training_step`` per micro-batch with ``num_items_in_batch`` = the step's
  count (TRL) or ``num_tokens`` = the step's count (ours), then one AdamW step.

Measured: step time (best of ``--repeats`` after a warm-up step; also the process's CPU time, the
work done, which a shared machine's load distorts less than the wall time, and for our sides on a
CPU where it goes: student and teacher forward, the loss over response tokens, backward, AdamW), peak memory (CPU max-RSS growth
over the resident size before the first step; CUDA max_memory_allocated growth), tokens of real
work per second (the step's prompt + response tokens, padding excluded, / step time), the
positions each side ran the models over, and the loss and gradient norm of the warm-up step.
Output: one line per side, then ONE JSON object; ``--out`` also writes it with every side's
details and the machine. docs/results/README.md's table comes from that JSON (scripts/readme_tables.py).

Usage: python scripts/bench_padding.py [--records 16] [--micro-batch 4] [--vocab 32768]
       [--device cpu|cuda] [--out docs/results/bench_padding.json]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

from . import vs_trl as trl_bench
from .results import read_result, write_result
from .runner import print_json, timed_steps

HISTOGRAM = Path(__file__).resolve().parent / "llava_instruct_lengths.json"
OURS = ("ours_padded", "ours_grouped", "ours_packed", "ours_grouped_packed")
TRL = ("trl_gkd_full_logits", "trl_distillation_chunked", "trl_gkd_full_logits_grouped",
       "trl_distillation_chunked_grouped", "trl_gkd_liger")
SIDES = (*OURS, *TRL)
PAD_ID = 0

# ---- the length histogram -------------------------------------------------------------------------

PARTS = {  # name: (records, rounds (low, high), question (median, sigma), answer (median, sigma))
    "conversation": (58_000, (1, 5), (13, 0.4), (75, 0.7)),
    "detail": (23_000, (1, 1), (11, 0.15), (150, 0.35)),
    "complex_reasoning": (77_000, (1, 1), (18, 0.35), (165, 0.4)),
}
SYSTEM_TOKENS, TEMPLATE_PER_ROUND, END_PER_ROUND = 35, 5, 1
EDGES = [0, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1536, 2048]
SOURCE = (
    "A model of LLaVA-Instruct-150K's shape, not a measurement (the data set cannot be downloaded here). Parts in the "
    "LLaVA paper's proportions: 58K conversations (1-5 rounds), 23K detailed descriptions and 77K complex-reasoning "
    "answers (1 round). Prompt = a 35-token LLaVA-v1 system prompt + 5 template tokens per round + the questions; "
    "response = the answers + 1 end-of-turn token per round. Questions and answers are log-normal per part, their "
    "means set so that a record's text matches the bytes per record of the released files (conversation_58k.json "
    "126 MB, detail_23k.json 20.5 MB, complex_reasoning_77k.json 79.6 MB, the LLaVA repository's Data.md) at ~4.4 bytes a token "
    "less the JSON keys (~430, 165, 200 text tokens); the spreads are assumptions. Image tokens are not included."
)


def make_histogram(seed: int = 0) -> dict:
    """The joint (prompt, response) token histogram, one draw per record of the data set."""
    rng = random.Random(seed)
    counts: dict[tuple[int, int], int] = {}
    for records, (low, high), (q_median, q_sigma), (a_median, a_sigma) in PARTS.values():
        for _ in range(records):
            rounds = rng.randint(low, high)
            prompt = SYSTEM_TOKENS + sum(TEMPLATE_PER_ROUND + max(1, round(rng.lognormvariate(math.log(q_median), q_sigma)))
                                         for _ in range(rounds))
            response = sum(END_PER_ROUND + max(1, round(rng.lognormvariate(math.log(a_median), a_sigma)))
                           for _ in range(rounds))
            key = (_bin(prompt), _bin(response))
            counts[key] = counts.get(key, 0) + 1
    bins = [{"prompt": [EDGES[p], EDGES[p + 1]], "response": [EDGES[r], EDGES[r + 1]], "count": n}
            for (p, r), n in sorted(counts.items())]
    return {"source": SOURCE, "parts": {k: {"records": v[0], "rounds": list(v[1]), "question_median_sigma": list(v[2]),
                                            "answer_median_sigma": list(v[3])} for k, v in PARTS.items()},
            "system_tokens": SYSTEM_TOKENS, "template_tokens_per_round": TEMPLATE_PER_ROUND,
            "end_tokens_per_round": END_PER_ROUND, "seed": seed, "bins": bins}


def _bin(n: int) -> int:
    for i in range(len(EDGES) - 1):
        if n < EDGES[i + 1]:
            return i
    return len(EDGES) - 2  # the last bin holds everything longer


def sample_lengths(histogram: dict, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` (prompt, response) lengths: a bin by its count, then uniform inside it."""
    rng = random.Random(seed)
    bins = histogram["bins"]
    chosen = rng.choices(bins, weights=[b["count"] for b in bins], k=n)
    return [(rng.randrange(max(b["prompt"][0], 1), b["prompt"][1]), rng.randrange(max(b["response"][0], 1), b["response"][1]))
            for b in chosen]


# ---- the step's records and micro-batches ----------------------------------------------------------


def step_records(args: argparse.Namespace) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of the step's records, in the shuffled order."""
    histogram = read_result(args.lengths)
    rng = random.Random(args.seed + 1)
    out = []
    for prompt, response in sample_lengths(histogram, args.records, args.seed):
        prompt += args.image_tokens
        out.append(([rng.randrange(1, args.vocab) for _ in range(prompt)], [rng.randrange(1, args.vocab) for _ in range(response)]))
    return out


def micro_batches(records, micro_batch: int, grouped: bool, seed: int) -> list[list[int]]:
    """Record indices per micro-batch: consecutive slices of the shuffled order, or of the order
    train/grouping.py gives the step (one window of one step: the step sorted by length)."""
    order = list(range(len(records)))
    if grouped:
        from taid_vlm.train.grouping import LengthGrouping

        lengths = [len(p) + len(r) for p, r in records]
        order = LengthGrouping(len(records), 1, len(records), lambda ids: [lengths[i] for i in ids]).arrange(order, seed, 0, 0)
    return [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]


def padded(records, ids: list[int]) -> dict:
    """Right-padded input_ids / attention_mask / labels (-100 off the response) of ``ids``."""
    import torch

    width = max(len(records[i][0]) + len(records[i][1]) for i in ids)
    input_ids = torch.full((len(ids), width), PAD_ID, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    mask = torch.zeros_like(input_ids)
    for row, i in enumerate(ids):
        prompt, response = records[i]
        seq = torch.tensor(prompt + response)
        input_ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        labels[row, len(prompt) : len(seq)] = seq[len(prompt) :]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _rendered(records, ids: list[int], pack: bool, attention_cost: float):
    """Our RenderedBatch of ``ids``: padded rows, or packed by models/packing.py."""
    import torch

    from taid_vlm.models import RenderedBatch
    from taid_vlm.models.packing import Piece, pack as pack_pieces

    names = [f"record-{i}" for i in ids]
    if not pack:
        b = padded(records, ids)
        return RenderedBatch({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"] != -100,
                             names, [""] * len(ids))
    pieces = []
    for i in ids:
        prompt, response = records[i]
        seq = torch.tensor([prompt + response])
        pieces.append(Piece({"input_ids": seq}, torch.arange(seq.shape[1]) >= len(prompt), torch.arange(seq.shape[1]).unsqueeze(0)))
    p = pack_pieces(pieces, PAD_ID, attention_cost=attention_cost)
    return RenderedBatch(p.inputs, p.response_mask, names, [""] * len(ids), p.predict_mask, p.token_records)


# ---- one side in its own process -----------------------------------------------------------------


def build_step(args, teacher, student, records, optimizer):
    """``(step(measure), positions, phases)``: one optimizer step over the step's micro-batches, the
    positions it runs the models over, and (ours, on a CPU) where its CPU time goes."""
    grouped = args.side.startswith("ours_grouped") or args.side.endswith("_grouped")
    batches = micro_batches(records, args.micro_batch, grouped, args.seed)
    total = sum(len(records[i][1]) for b in batches for i in b)  # response tokens of the step
    if args.side.startswith("ours"):
        return _ours(args, teacher, student, records, batches, optimizer, total)
    return _trl(args, teacher, student, records, batches, optimizer, total)


def _ours(args, teacher_model, student_model, records, batches, optimizer, total):
    from taid_vlm.models import adapt, check_alignment
    from taid_vlm.models.packing import attention_weight
    from taid_vlm.train.objective import training_loss

    tokenizer = trl_bench._tokenizer()
    teacher, student = adapt(teacher_model, tokenizer, role="teacher"), adapt(student_model, tokenizer, role="student")
    student.model.train()
    device = args.device
    # what adapter.render(pack=True) does once records are tokens: the teacher's width sets the rows
    cost = attention_weight(teacher_model)
    rendered = [_rendered(records, b, "packed" in args.side, cost).to(device) for b in batches]
    positions = sum(int(r.input_ids.numel()) for r in rendered)

    phases: dict[str, float] = {}  # CPU seconds per part of the timed steps (on a CPU run), their sum over the steps

    def timed(name: str, fn):
        start = time.process_time()
        out = fn()
        if args.device == "cpu":
            phases[name] = phases.get(name, 0.0) + time.process_time() - start
        return out

    def step(measure: bool):
        loss_sum = 0.0
        for batch in rendered:
            s_out = timed("student_forward", lambda: student.response_outputs(batch))
            t_out = timed("teacher_forward", lambda: check_alignment(teacher.response_outputs(batch), s_out, batch.record_ids))
            loss = timed("loss_over_response_tokens", lambda: training_loss("fkl", s_out, t_out, num_tokens=total).total)
            timed("backward", loss.backward)
            loss_sum += float(loss.detach())
            del s_out, t_out, loss
        result = (loss_sum, trl_bench.grad_norm(student_model)) if measure else None
        timed("optimizer", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
        if measure:
            phases.clear()  # the warm-up step is not counted
        return result

    return step, positions, phases


def _trl(args, teacher, student, records, batches, optimizer, total):
    import torch

    tokenizer = trl_bench._tokenizer()
    common = dict(device=args.device, batch_size=args.micro_batch, seed=args.seed)
    if args.side.startswith("trl_distillation"):
        longest = max(len(r) for _, r in records)
        trainer, model = trl_bench.distillation_trainer(teacher, student, optimizer, tokenizer, max_completion_length=longest,
                                                        **common)
        prepared = [_prompt_completion(records, b, total) for b in batches]
    else:
        trainer, model = trl_bench.gkd_trainer(teacher, student, optimizer, tokenizer, liger=args.side == "trl_gkd_liger",
                                               **common)
        prepared = [padded(records, b) for b in batches]
    prepared = [{k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in prepared]
    trainer.current_gradient_accumulation_steps = len(batches)
    positions = sum(int(b["input_ids"].numel()) if "input_ids" in b else
                    int(b["prompt_ids"].numel() + b["completion_ids"].numel()) for b in prepared)
    num_items = torch.tensor(total, device=args.device)

    def step(measure: bool):
        loss_sum = 0.0
        for batch in prepared:
            inputs = {k: v.clone() for k, v in batch.items()}
            loss_sum += float(trainer.training_step(model, inputs, num_items).detach())
        result = (loss_sum, trl_bench.grad_norm(student)) if measure else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    return step, positions, {}


def _prompt_completion(records, ids: list[int], total: int) -> dict:
    """DistillationTrainer's inputs: prompts left-padded, completions right-padded (as its own
    collation pads them); ``num_items_in_batch`` the step's response tokens."""
    import torch

    p_width = max(len(records[i][0]) for i in ids)
    c_width = max(len(records[i][1]) for i in ids)
    prompt_ids = torch.full((len(ids), p_width), PAD_ID, dtype=torch.long)
    completion_ids = torch.full((len(ids), c_width), PAD_ID, dtype=torch.long)
    prompt_mask, completion_mask = torch.zeros_like(prompt_ids), torch.zeros_like(completion_ids)
    for row, i in enumerate(ids):
        prompt, response = records[i]
        prompt_ids[row, p_width - len(prompt) :], prompt_mask[row, p_width - len(prompt) :] = torch.tensor(prompt), 1
        completion_ids[row, : len(response)], completion_mask[row, : len(response)] = torch.tensor(response), 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "num_items_in_batch": torch.tensor(total)}


def run_side(args: argparse.Namespace) -> dict:
    import torch

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    teacher = trl_bench.build_model(args.teacher_hidden, args.teacher_layers, args.vocab, trl_bench.TEACHER_SEED, dtype, device)
    student = trl_bench.build_model(args.student_hidden, args.student_layers, args.vocab, trl_bench.STUDENT_SEED, dtype, device)
    weights = [trl_bench.fingerprint(teacher), trl_bench.fingerprint(student)]
    records = step_records(args)
    optimizer = torch.optim.AdamW(student.parameters(), lr=trl_bench.LEARNING_RATE)
    step, positions, phases = build_step(args, teacher, student, records, optimizer)

    timed = timed_steps(step, device, args.repeats)
    loss, first_grad_norm = timed.pop("first")  # the warm-up step's: the compared values
    real = sum(len(p) + len(r) for p, r in records)
    return {**timed, "loss": loss, "grad_norm": first_grad_norm, "weights_fingerprint": weights,
            "real_tokens": real, "response_tokens": sum(len(r) for _, r in records), "positions": positions,
            "cpu_s_per_phase": {k: round(v / args.repeats, 3) for k, v in phases.items()},
            "real_tokens_per_s": round(real / timed["step_s"], 1), "real_tokens_per_cpu_s": round(real / timed["cpu_s"], 1),
            "load_average_1_5_15min": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]}}


# ---- driver ----------------------------------------------------------------------------------------


def summarise(args: argparse.Namespace, results: dict) -> dict:
    """Ratios against the padded step and the fastest TRL side that ran; the targets and whether
    each is met (packed <= 0.6x padded, <= 0.8x the fastest TRL side, same loss)."""
    ran = {name: r for name, r in results.items() if r.get("ran", True)}
    reference = ran["ours_padded"]
    for name, r in ran.items():
        if r["weights_fingerprint"] != reference["weights_fingerprint"]:
            sys.exit(f"{name} did not start from the same weights: {r['weights_fingerprint']} vs {reference['weights_fingerprint']}")
    trl = {name: r for name, r in ran.items() if name.startswith("trl")}
    fastest = min(trl, key=lambda n: trl[n]["step_s"]) if trl else None
    packed = min((n for n in ("ours_packed", "ours_grouped_packed") if n in ran), key=lambda n: ran[n]["step_s"],
                 default="ours_padded")
    summary = {
        "step_s": {n: r["step_s"] for n, r in ran.items()},
        "cpu_s": {n: r["cpu_s"] for n, r in ran.items()},
        "real_tokens_per_s": {n: r["real_tokens_per_s"] for n, r in ran.items()},
        "peak_mb": {n: r["peak_mb"] for n, r in ran.items()},
        "positions": {n: r["positions"] for n, r in ran.items()},
        "loss_abs_diff_vs_padded": {n: abs(r["loss"] - reference["loss"]) for n, r in ran.items()},
        "grad_norm_rel_diff_vs_padded": {n: abs(r["grad_norm"] - reference["grad_norm"]) / reference["grad_norm"]
                                         for n, r in ran.items()},
        "cpu_s_per_phase": {n: r["cpu_s_per_phase"] for n, r in ran.items() if r.get("cpu_s_per_phase")},
        "not_run": {n: r["error"] for n, r in results.items() if not r.get("ran", True)},
        "fastest_packed_side": packed, "fastest_trl_side": fastest,
        "packed_over_padded": round(ran[packed]["step_s"] / reference["step_s"], 3),
        "packed_over_fastest_trl": round(ran[packed]["step_s"] / trl[fastest]["step_s"], 3) if fastest else None,
        # the same ratios in CPU time (the work done, less sensitive to a shared machine's load)
        "packed_over_padded_cpu": round(ran[packed]["cpu_s"] / reference["cpu_s"], 3),
        "packed_over_fastest_trl_cpu": round(ran[packed]["cpu_s"] / min(r["cpu_s"] for r in trl.values()), 3) if trl else None,
        "targets": {"packed_over_padded": 0.6, "packed_over_fastest_trl": 0.8},
        "real_tokens": reference["real_tokens"], "response_tokens": reference["response_tokens"],
        "records": args.records, "micro_batch": args.micro_batch, "image_tokens": args.image_tokens,
        "vocab": args.vocab, "device": args.device, "dtype": args.dtype,
        "teacher_layers": args.teacher_layers, "student_layers": args.student_layers,
        "teacher_hidden": args.teacher_hidden, "student_hidden": args.student_hidden,
    }
    summary["met"] = {"packed_over_padded": summary["packed_over_padded"] <= 0.6,
                      "packed_over_fastest_trl": fastest is not None and summary["packed_over_fastest_trl"] <= 0.8}
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=16, help="records per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=4, help="records per micro-batch (the step accumulates the rest)")
    parser.add_argument("--lengths", default=str(HISTOGRAM), help="the joint (prompt, response) length histogram JSON")
    parser.add_argument("--image-tokens", type=int, default=0, help="prompt tokens added to every record (an image)")
    trl_bench.add_pair_arguments(parser)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the warm-up; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the lengths and token ids")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="which sides (ours_padded always)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON (with the machine) here")
    parser.add_argument("--write-histogram", action="store_true", help="rebuild --lengths from the model above and stop")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    trl_bench.check_pair_arguments(parser, args)
    if min(args.records, args.micro_batch, args.repeats) < 1 or args.image_tokens < 0:
        parser.error("--records, --micro-batch and --repeats must be positive, --image-tokens >= 0")
    return args


def main() -> None:
    args = parse_args()
    if args.write_histogram:
        write_result(args.lengths, make_histogram())
        return
    if args.side:
        print_json(run_side(args))
        return

    def describe(r: dict) -> str:
        return (f"step {r['step_s']:.3f} s   {r['real_tokens_per_s']:.0f} real tok/s   peak {r['peak_mb']:.1f} MB   "
                f"positions {r['positions']}   loss {r['loss']:.8f}   grad norm {r['grad_norm']:.6f}")

    trl_bench.compare("padding", args, list(dict.fromkeys(["ours_padded", *args.sides])), OURS, describe, summarise)


if __name__ == "__main__":
    main()

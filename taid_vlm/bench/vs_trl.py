"""One off-policy forward-KL distillation step: taid-vlm vs TRL's distillation paths, on the same models.

Sides (each in its own process, keyed in the JSON's ``sides`` by these names):
  ours_chunked_fkl             taid-vlm's chunked fused-linear engine (``training_loss("fkl")``)
  trl_gkd_full_logits          trl.experimental.gkd.GKDTrainer, beta=0, lmbda=0 (full [B, T, V] logits)
  trl_distillation_chunked     trl.DistillationTrainer (stable API), beta=0: TRL's chunked divergence
                               (``ChunkedDivergenceFunction``), fed the same batch as its completions
  trl_gkd_liger                GKDTrainer with ``use_liger_kernel=True``: Liger's kernels applied to the
                               student the way ``Trainer.train`` applies them (TRL 1.16's GKD keeps its own
                               full-logit JSD; Liger's fused-linear loss is switched off by TRL itself)
The summary's ``trl_*`` fields are those of the strongest TRL side that ran: the fastest step.

What is compared
  Teacher and student are ``Qwen2ForCausalLM`` built from ``Qwen2Config`` with fixed seeds
  (default teacher 512 wide x 4 layers, student 256 wide x 2 layers, untied heads, vocabulary
  32,768). ONE synthetic batch is built from a seeded generator: random token ids, a prompt of
  ``--prompt-len`` tokens, then a response whose length varies per row (between half and all of
  the remaining positions), right padding after it. Labels are the input ids with -100 on the
  prompt and on padding. Both sides get exactly these ``input_ids`` / ``attention_mask`` /
  ``labels`` tensors and bit-identical weights (each subprocess reports a weight fingerprint and
  the run aborts if they differ).

  TRL side (trl.experimental.gkd.GKDTrainer, TRL's generalised-JSD distillation trainer): the
  trainer is instantiated with ``beta=0`` (its forward-KL endpoint), ``lmbda=0`` (off-policy:
  never generates), ``temperature=1``, and one step is ``trainer.training_step(model, batch,
  num_items_in_batch)``, exactly what ``Trainer.train`` calls per micro-batch: its own
  ``compute_loss`` (student forward, teacher forward under no_grad, full ``[B, T, V]`` logits,
  causal shift, ``generalized_jsd_loss`` with the labels mask) and ``accelerator.backward``.
  ``num_items_in_batch`` is computed by the trainer's own ``_get_num_items_in_batch`` as
  ``train()`` does. Nothing of TRL's math is reimplemented here. The trainer
  insists on a ``train_dataset``: a one-conversation placeholder that is never read.

  TRL's stable ``DistillationTrainer`` always generates its completions in ``_prepare_inputs``
  (on-policy). To run its loss off-policy on the same batch, that one method is replaced on the
  instance by the identity, and the step receives what generation would have produced:
  ``prompt_ids/prompt_mask`` (the prompt), ``completion_ids/completion_mask`` (the response and
  its padding) and ``num_items_in_batch`` (the response tokens). Everything else is TRL's own
  ``training_step -> compute_loss -> _compute_loss -> _chunked_divergence_loss`` with beta=0
  (forward KL), i.e. the same loss and normalisation as ours.
  Off a Triton device TRL's ``_chunked_divergence_loss`` projects every position (prompt and
  padding too, masked afterwards) to keep tile shapes fixed; on a GPU it projects only the
  completion tokens. CPU figures therefore understate that side relative to a GPU run.

  Our side: ``taid_vlm.models.adapt`` wraps the same two models; one step is what
  ``taid_vlm.train.loop`` does per micro-batch: ``student.response_outputs(batch)`` (final
  hidden states of the response positions + LM head), the teacher's the same under no_grad,
  ``check_alignment``, ``training_loss("fkl", ...)`` (the chunked fused-linear engine, logits
  never materialised) and ``backward``. The batch is handed over as a ``RenderedBatch`` built
  from the same tensors, so tokenisation/collation is excluded on BOTH sides.

  Both sides then take the same optimizer step: ``torch.optim.AdamW(lr=1e-5)`` on the student
  (TRL's trainer is given that optimizer through ``optimizers=``), followed by
  ``zero_grad(set_to_none=True)``. No gradient clipping and no LR scheduler on either side.

Fairness settings
  - TRL's configs default to ``gradient_checkpointing=True`` and ``bf16=True`` (autocast); both
    are switched OFF on the TRL side because our side uses neither: both run the models in
    ``--dtype`` without autocast and without recomputation. Dropout is 0 in both models.
  - The quantity is the same: the mean over response tokens of KL(teacher || student) at T=1.
    GKD's ``generalized_jsd_loss`` at beta=0 is ``F.kl_div(log q, log p, log_target=True)``
    summed over the vocabulary and over the masked (``labels != -100``, shifted) positions and
    divided by ``num_items_in_batch`` = the number of shifted response labels (its
    "batchmean" without num_items divides by the same count), i.e. a per-token mean, exactly
    our ``num_tokens`` normalisation. No conversion is needed; the raw TRL value is reported.
  - Both sides predict the same tokens: TRL's shifted logits ``[:, :-1]`` against labels
    ``[:, 1:]``; our adapter takes the hidden state at p-1 for every response token p.
  - Where the sides differ by design (this is what is measured): TRL computes the logits of
    EVERY position (prompt and padding too) for both models in full and runs the softmaxes on
    ``[B, T-1, V]``; ours projects only the response positions, chunk by chunk. A longer
    ``--prompt-len`` therefore favours us; ``--prompt-len 1`` makes the token counts nearly
    equal and isolates the engine.
  - In bf16 TRL's softmax runs in bf16 while ours upcasts to fp32, so the loss difference is
    larger there by construction (use float32 for the agreement check).

Measurement
  Each side runs in its own subprocess (peak memory is its own). After both models, the batch
  and the trainer/adapters exist, the baseline is taken; then one warm-up step (its loss and the
  student's gradient norm before the optimizer update are the values compared; it also
  allocates AdamW's state, which both sides pay), then ``--repeats`` timed steps, best kept.
  Peak memory: CPU max-RSS growth over the resident size at the baseline; CUDA
  ``max_memory_allocated`` growth over the allocation at the baseline. On a loaded machine the
  times are noisy: rerun when it is quiet.

Output: one line per side, then ONE JSON object as the last line:
  {"ours_step_s": .., "trl_step_s": .., "ours_peak_mb": .., "trl_peak_mb": .., "loss_abs_diff": .., ...}
``--out FILE`` also writes that object plus per-side details and the machine description.

Usage: python scripts/bench_vs_trl.py [--vocab 32768] [--batch-size 8] [--seq-len 256]
       [--prompt-len 128] [--device cpu|cuda] [--dtype float32|bfloat16] [--out docs/results/bench_vs_trl.json]
trl is a benchmark-only extra here, never a runtime dependency of taid_vlm.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .results import write_result
from .runner import Run, distribution_version, print_json, run_sides, timed_steps

OURS = "ours_chunked_fkl"
TRL_SIDES = ("trl_gkd_full_logits", "trl_distillation_chunked", "trl_gkd_liger")
SIDES = (*TRL_SIDES, OURS)
TEACHER_SEED, STUDENT_SEED = 1, 2
LEARNING_RATE = 1e-5


# ---- shared set-up: identical models and batch on both sides ---------------------------------------


def build_model(hidden: int, layers: int, vocab: int, seed: int, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(device=device, dtype=dtype)


def synthetic_batch(args: argparse.Namespace) -> dict:
    """Random ids; prompt, then a response of per-row length, then right padding (id 0)."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    batch, seq = args.batch_size, args.seq_len
    room = seq - args.prompt_len
    input_ids = torch.randint(1, args.vocab, (batch, seq), generator=g)
    response_len = torch.randint(max(room // 2, 1), room + 1, (batch,), generator=g)
    positions = torch.arange(seq).unsqueeze(0)
    real = positions < (args.prompt_len + response_len).unsqueeze(1)
    response = real & (positions >= args.prompt_len)
    input_ids = input_ids.masked_fill(~real, 0)
    return {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "labels": input_ids.masked_fill(~response, -100),
    }


def fingerprint(model) -> float:
    """A cheap checksum of the weights, to prove both sides start from the same models."""
    import torch

    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def grad_norm(model) -> float:
    import torch

    grads = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


# ---- one side in its own process -----------------------------------------------------------------


def build_side(args: argparse.Namespace, teacher, student, batch: dict, optimizer):
    """A ``step(measure)`` closure running one full training step of this side; ``measure``
    makes it also return the loss and the pre-update gradient norm."""
    tokenizer = _tokenizer()
    if args.side == "trl_gkd_full_logits":
        return _trl_side(args, teacher, student, batch, optimizer, tokenizer)
    if args.side == "trl_gkd_liger":
        return _trl_side(args, teacher, student, batch, optimizer, tokenizer, liger=True)
    if args.side == "trl_distillation_chunked":
        return _trl_distillation_side(args, teacher, student, batch, optimizer, tokenizer)
    return _our_side(teacher, student, batch, optimizer, tokenizer)


def _tokenizer():
    """Any real tokenizer with a chat template: both libraries want one to construct their
    objects; the batch is already token ids, so it never tokenises anything here."""
    from taid_vlm.testing.tiny import QWEN2_TEMPLATE, tiny_tokenizer

    return tiny_tokenizer(QWEN2_TEMPLATE)


def gkd_trainer(teacher, student, optimizer, tokenizer, *, device: str, batch_size: int, seed: int, liger: bool = False):
    """TRL's GKDTrainer at beta=0 (forward KL), lmbda=0 (off-policy), no checkpointing or autocast;
    ``(trainer, model to call training_step with)``."""
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

    config = GKDConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-vs-trl-"), report_to="none", save_strategy="no",
        beta=0.0, lmbda=0.0, temperature=1.0, seq_kd=False,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=device == "cpu",
        per_device_train_batch_size=batch_size, learning_rate=LEARNING_RATE, seed=seed,
        use_liger_kernel=liger,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=_placeholder(),
                             processing_class=tokenizer, optimizers=(optimizer, None))
    if liger:  # Trainer.train applies the kernels before its first step; training_step alone would not
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
    trainer.current_gradient_accumulation_steps = 1  # what train() sets with gradient_accumulation_steps=1
    return trainer, trainer.model_wrapped


def distillation_trainer(teacher, student, optimizer, tokenizer, *, device: str, batch_size: int, seed: int,
                         max_completion_length: int):
    """TRL's stable DistillationTrainer at beta=0, its generation replaced by the identity (the
    step is handed prepared prompt/completion tensors); ``(trainer, model)``."""
    import warnings

    from trl import DistillationConfig, DistillationTrainer

    config = DistillationConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-vs-trl-"), report_to="none", save_strategy="no",
        beta=0.0, temperature=1.0, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=device == "cpu", per_device_train_batch_size=batch_size, learning_rate=LEARNING_RATE,
        seed=seed, max_completion_length=max_completion_length,
    )  # fmt: skip
    placeholder = _placeholder().map(lambda row: {"prompt": row["messages"][:1]}, remove_columns=["messages"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=placeholder,
                                      processing_class=tokenizer, optimizers=(optimizer, None))
    trainer._prepare_inputs = lambda inputs: inputs  # off-policy: the batch stands in for generation
    trainer.current_gradient_accumulation_steps = 1
    return trainer, trainer.model_wrapped


def _trl_side(args, teacher, student, batch, optimizer, tokenizer, liger: bool = False):
    trainer, model = gkd_trainer(teacher, student, optimizer, tokenizer, device=args.device,
                                 batch_size=args.batch_size, seed=args.seed, liger=liger)
    device = trainer.args.device

    def step(measure: bool):
        inputs = {k: v.clone() for k, v in batch.items()}  # training_step may rewrite inputs in place
        num_items = trainer._get_num_items_in_batch([inputs], device)
        loss = trainer.training_step(model, inputs, num_items)
        result = (float(loss.detach()), grad_norm(student)) if measure else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    return step


def _placeholder():
    """Never read: every step is fed the prepared batch directly (collation excluded on all sides)."""
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "OK"}]}])


def _trl_distillation_side(args, teacher, student, batch, optimizer, tokenizer):
    trainer, model = distillation_trainer(teacher, student, optimizer, tokenizer, device=args.device,
                                          batch_size=args.batch_size, seed=args.seed,
                                          max_completion_length=args.seq_len - args.prompt_len)
    prompt = args.prompt_len
    completion_mask = (batch["labels"][:, prompt:] != -100).long()
    prepared = {
        "prompt_ids": batch["input_ids"][:, :prompt], "prompt_mask": batch["attention_mask"][:, :prompt],
        "completion_ids": batch["input_ids"][:, prompt:], "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }  # fmt: skip

    def step(measure: bool):
        inputs = {k: v.clone() for k, v in prepared.items()}
        loss = trainer.training_step(model, inputs, inputs["num_items_in_batch"])
        result = (float(loss.detach()), grad_norm(student)) if measure else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    return step


def _our_side(teacher_model, student_model, batch, optimizer, tokenizer):
    from taid_vlm.models import RenderedBatch, adapt, check_alignment
    from taid_vlm.train.objective import training_loss

    teacher = adapt(teacher_model, tokenizer, role="teacher")
    student = adapt(student_model, tokenizer, role="student")
    student.model.train()
    rendered = RenderedBatch(
        inputs={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
        response_mask=batch["labels"] != -100,
        record_ids=[f"row-{i}" for i in range(batch["input_ids"].shape[0])],
        texts=[""] * batch["input_ids"].shape[0],
    )

    def step(measure: bool):
        student_out = student.response_outputs(rendered, return_hidden=True)
        teacher_out = check_alignment(teacher.response_outputs(rendered, return_hidden=True), student_out, rendered.record_ids)
        loss = training_loss("fkl", student_out, teacher_out, num_tokens=rendered.num_response_tokens).total
        loss.backward()
        result = (float(loss.detach()), grad_norm(student_model)) if measure else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    return step


def run_side(args: argparse.Namespace) -> dict:
    import torch

    load_at_start = [round(x, 2) for x in os.getloadavg()]  # sides run one after another: each records its own load
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    teacher = build_model(args.teacher_hidden, args.teacher_layers, args.vocab, TEACHER_SEED, dtype, device)
    student = build_model(args.student_hidden, args.student_layers, args.vocab, STUDENT_SEED, dtype, device)
    weights = [fingerprint(teacher), fingerprint(student)]
    batch = {k: v.to(device) for k, v in synthetic_batch(args).items()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE)
    step = build_side(args, teacher, student, batch, optimizer)

    timed = timed_steps(step, device, args.repeats)
    loss, first_grad_norm = timed.pop("first")  # the warm-up step's: the compared values
    return {
        **timed,
        "loss": loss, "grad_norm": first_grad_norm, "weights_fingerprint": weights,
        "load_average_1_5_15min": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "response_tokens": int((batch["labels"][:, 1:] != -100).sum()),
        "params": {"teacher": sum(p.numel() for p in teacher.parameters()), "student": sum(p.numel() for p in student.parameters())},
    }  # fmt: skip


# ---- driver ----------------------------------------------------------------------------------------


def summarise(args: argparse.Namespace, results: dict) -> dict:
    ours = results[OURS]
    ran = {name: r for name, r in results.items() if name != OURS and r["ran"]}
    if not ran:
        sys.exit("no TRL side ran: " + "; ".join(f"{n}: {r['error']}" for n, r in results.items() if n != OURS))
    for name, r in ran.items():
        if r["weights_fingerprint"] != ours["weights_fingerprint"]:
            sys.exit(f"{name} did not start from our weights: {r['weights_fingerprint']} vs {ours['weights_fingerprint']}")
    strongest = min(ran, key=lambda name: ran[name]["step_s"])
    theirs = ran[strongest]
    diff = abs(ours["loss"] - theirs["loss"])
    return {
        "strongest_trl_side": strongest, "strongest_by": "fastest step among the TRL sides that ran",
        "ours_step_s": ours["step_s"], "trl_step_s": theirs["step_s"],
        "ours_peak_mb": ours["peak_mb"], "trl_peak_mb": theirs["peak_mb"],
        "loss_abs_diff": diff,
        "loss_rel_diff": diff / max(abs(theirs["loss"]), 1e-30),
        "loss_ours": ours["loss"], "loss_trl_raw": theirs["loss"],
        "loss_abs_diff_per_side": {name: abs(ours["loss"] - r["loss"]) for name, r in ran.items()},
        "loss_normalisation": "both: sum over response tokens / number of response tokens (TRL value used as is)",
        "grad_norm_ours": ours["grad_norm"], "grad_norm_trl": theirs["grad_norm"],
        "device": args.device, "dtype": args.dtype, "vocab": args.vocab, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "prompt_len": args.prompt_len, "response_tokens": ours["response_tokens"],
    }  # fmt: skip


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The pair ``build_model`` builds (shared with bench/padding.py): vocabulary, widths, depths,
    device and dtype."""
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--teacher-hidden", type=int, default=512)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-hidden", type=int, default=256)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def check_pair_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("teacher_hidden", "student_hidden"):
        if getattr(args, flag) % 64:
            parser.error(f"--{flag.replace('_', '-')} must be a multiple of 64 (the attention head width), got {getattr(args, flag)}")
    if min(args.vocab, args.teacher_layers, args.student_layers) < 1:
        parser.error("--vocab and the layer counts must be positive")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per row (default: half of --seq-len)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON (with the machine) here")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="which sides to run (ours always)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prompt_len is None:
        args.prompt_len = args.seq_len // 2
    if not 1 <= args.prompt_len < args.seq_len - 1:
        parser.error(f"--prompt-len must lie in [1, {args.seq_len - 2}] for --seq-len {args.seq_len}, got {args.prompt_len}")
    check_pair_arguments(parser, args)
    if min(args.batch_size, args.repeats) < 1:
        parser.error("--batch-size and --repeats must be positive")
    return args


def compare(module: str, args: argparse.Namespace, sides: list[str], required: tuple[str, ...],
            describe: Callable[[dict], str], summarise: Callable[[argparse.Namespace, dict], dict]) -> None:
    """The driver this benchmark and bench/padding.py share: every side in its own process (a TRL
    side that cannot run here is recorded with its reason, a ``required`` one must run), the
    summary, ``--out`` with the sides, the machine (its load: another job skews the times) and
    the TRL and Liger versions, and the summary as the last line."""
    run = Run(packages=("torch", "transformers", "trl"))
    results = run_sides(module, sides, sys.argv[1:], required=required, describe=describe)
    summary = summarise(args, results)
    if args.out is not None:
        record = run.record({**summary, "sides": results})
        record["machine"]["liger_kernel"] = distribution_version("liger-kernel")
        write_result(args.out, record)
    print_json(summary)


def main() -> None:
    args = parse_args()
    if args.side:
        print_json(run_side(args))
        return

    def describe(r: dict) -> str:
        return (f"step {r['step_s']:.3f} s (runs {r['all_step_s']})   peak {r['peak_mb']:.1f} MB   "
                f"loss {r['loss']:.8f}   grad norm {r['grad_norm']:.6f}")

    compare("vs_trl", args, list(dict.fromkeys([*args.sides, OURS])), (OURS,), describe, summarise)


if __name__ == "__main__":
    main()

"""One fused-linear distillation loss, side by side: ours, Liger's fused-linear JSD, TRL's chunked divergence.

Every side computes the same quantity, forward KL(teacher || student) at temperature 1 averaged
over the tokens, from the student's hidden states + LM head and the teacher's, and its gradients
w.r.t. the student's hidden states and head:

  plain            full logits, autograd (``divergence("fkl", h @ W.T, teacher logits)``)
  ours_torch       our chunked engine, the torch chunk kernel (``chunk_kernel: torch``)
  ours_triton      our chunked engine, the Triton chunk kernel (``chunk_kernel: triton``)
  liger_fljsd      ``liger_kernel.transformers.LigerFusedLinearJSD(jsd_beta=0)`` (beta 0 is forward KL)
  trl_chunked      ``trl.kernels.chunked_divergence.ChunkedDivergenceFunction`` with beta 0

Each side runs in its own subprocess (its peak memory is its own) on inputs drawn from one seeded
generator on the device: hidden states ~ N(0, 1), heads ~ N(0, (logit_scale^2) / H), so logits
have a standard deviation of about ``--logit-scale``. Two measurements per side:

- accuracy, on the first ``--check-tokens`` tokens: the side's loss and gradients against an fp64
  computation on the same (upcast) inputs, as relative errors ``|x - ref| / |ref|`` (norms for
  the gradients). In bf16 the inputs are bf16 and the reference uses exactly those values, so an
  error beyond bf16's own rounding of the outputs (~0.4%) is the side's arithmetic;
- speed and memory, on ``--tokens`` tokens: one warm-up forward + backward, then ``--repeats``
  timed ones (median), and the peak allocation above what the inputs hold (CUDA
  ``max_memory_allocated``; on CPU the max-RSS growth).

A side that cannot run here (Liger needs a GPU, TRL may be missing) is recorded with its error.
The last line printed is ONE JSON object (side -> seconds, peak MB, errors); ``--out`` writes it
with the command and the machine.

Usage: python scripts/bench_fused.py --device cuda [--tokens 8192 --hidden 4096 --vocab 128256]
         [--dtype bfloat16] [--sides plain ours_torch ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

from .results import write_result
from .runner import Run, distribution_version, peak_baseline, peak_since, print_json, run_sides, sync

SIDES = ("plain", "ours_torch", "ours_triton", "liger_fljsd", "trl_chunked")


def make_inputs(args: argparse.Namespace, tokens: int):
    import torch

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator(device=device).manual_seed(args.seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    scale = args.logit_scale / args.hidden**0.5
    hidden, teacher_hidden = randn(tokens, args.hidden), randn(tokens, args.hidden)
    weight, teacher_weight = randn(args.vocab, args.hidden, scale=scale), randn(args.vocab, args.hidden, scale=scale)
    return hidden.requires_grad_(), weight.requires_grad_(), teacher_hidden, teacher_weight


def side_loss(side: str, hidden, weight, teacher_hidden, teacher_weight):
    """The mean forward KL over the tokens, through ``side``'s implementation (differentiable)."""
    if side == "plain":
        import torch

        from taid_vlm.losses import divergence

        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.t()
        return divergence("fkl", hidden @ weight.t(), teacher_logits)
    if side in ("ours_torch", "ours_triton"):
        from taid_vlm.losses import EngineOptions, Head, divergence

        options = EngineOptions(chunk_kernel=side.removeprefix("ours_"))
        return divergence("fkl", Head(hidden, weight), Head(teacher_hidden, teacher_weight), options=options)
    if side == "liger_fljsd":
        from liger_kernel.transformers import LigerFusedLinearJSD

        return LigerFusedLinearJSD(jsd_beta=0.0, temperature=1.0)(hidden, weight, teacher_hidden, teacher_weight, None)
    if side == "trl_chunked":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        per_token, _entropy = ChunkedDivergenceFunction.apply(hidden, weight, None, teacher_hidden, teacher_weight, None, 0.0, 1.0)
        return per_token.mean()
    raise ValueError(f"unknown side {side!r}")


def reference(hidden, weight, teacher_hidden, teacher_weight):
    """fp64 loss and gradients on the same input values."""
    import torch

    from taid_vlm.losses.divergences import forward_kl

    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    with torch.no_grad():
        teacher_logits = teacher_hidden.double() @ teacher_weight.double().t()
    loss = forward_kl(h @ w.t(), teacher_logits).mean()
    loss.backward()
    return float(loss), h.grad, w.grad


def relative(x, ref) -> float:
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-300))


def run_side(args: argparse.Namespace) -> dict:
    import torch

    device = torch.device(args.device)

    def step(inputs):
        inputs[0].grad = inputs[1].grad = None
        loss = side_loss(args.side, *inputs)
        loss.backward()
        return loss

    check = make_inputs(args, min(args.check_tokens, args.tokens))
    loss = float(step(check))
    got_h, got_w = check[0].grad, check[1].grad
    ref_loss, ref_h, ref_w = reference(*check)
    accuracy = {"loss": loss, "loss_ref_fp64": ref_loss, "loss_rel_err": abs(loss - ref_loss) / max(abs(ref_loss), 1e-300),
                "grad_hidden_rel_err": relative(got_h, ref_h), "grad_head_rel_err": relative(got_w, ref_w),
                "tokens": check[0].shape[0]}
    del check, got_h, got_w, ref_h, ref_w
    if device.type == "cuda":
        torch.cuda.empty_cache()

    inputs = make_inputs(args, args.tokens)
    step(inputs)  # warm-up (kernel compilation, cuBLAS handles)
    base = peak_baseline(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step(inputs)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_since(device, base)
    return {"seconds": round(statistics.median(times), 6), "all_seconds": [round(t, 6) for t in times],
            "peak_mb": round(peak, 1), **accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--repeats", type=int, default=3, help="timed forward + backward passes per side (median)")
    parser.add_argument("--check-tokens", type=int, default=1024, help="tokens of the fp64 accuracy check")
    parser.add_argument("--logit-scale", type=float, default=3.0, help="standard deviation of the logits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the sides, the command and the machine to this JSON file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.tokens, args.hidden, args.vocab, args.repeats, args.check_tokens) < 1:
        parser.error("--tokens, --hidden, --vocab, --repeats and --check-tokens must be positive")
    if args.side:
        print_json(run_side(args))
        return
    run = Run()
    argv = ["--device", args.device, "--tokens", str(args.tokens),
            "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--dtype", args.dtype, "--repeats", str(args.repeats),
            "--check-tokens", str(args.check_tokens), "--logit-scale", str(args.logit_scale), "--seed", str(args.seed)]
    sides = run_sides("fused", args.sides, argv, required=(), describe=lambda r: (
        f"{r['seconds']:9.4f} s  peak {r['peak_mb']:10.1f} MB  loss rel err {r['loss_rel_err']:.1e}  "
        f"grad h {r['grad_hidden_rel_err']:.1e}  grad W {r['grad_head_rel_err']:.1e}"))
    summary = {side: {k: r[k] for k in ("seconds", "peak_mb", "loss_rel_err", "grad_hidden_rel_err", "grad_head_rel_err")}
               if r["ran"] else {"error": r["error"]} for side, r in sides.items()}
    summary["shape"] = {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "dtype": args.dtype, "device": args.device}
    if args.out:
        record = run.record({"summary": summary, "sides": sides})
        record["machine"].update({name: distribution_version(name) for name in ("trl", "liger-kernel", "triton")})
        write_result(args.out, record)
    print_json(summary)


if __name__ == "__main__":
    main()

"""Distillation loss forward+backward: plain full logits vs the chunked engine vs the GEMM floor.

Each configuration runs in its own subprocess so that its peak memory is its own:
- CPU: growth of the process's max resident set size over the resident size just before the
  loss (inputs allocated, kernels warmed up on a few tokens);
- CUDA: torch.cuda.max_memory_allocated over the allocation just before the loss.
The teacher is given as hidden states + LM head, as a live teacher would be.

The floor is the four GEMMs no fused loss avoids (student logits, teacher logits, gradient
w.r.t. the hidden states, gradient w.r.t. the head), each one full-size matmul into
preallocated outputs. It is timed in the SAME process as the chunked engine, alternating with
it, and ``ratio = chunked_s / floor_s`` compares medians: on a shared machine only same-process
ratios mean anything. Each chunked row also times its parts (where the time goes):
``gemm_at_chunk_s`` (the four GEMMs at the chunk's shape), ``kernel_s`` (the loss + gradient
kernel alone, over all chunks) and ``one_chunk_profile_s`` (each step of one chunk, timed alone).
``--chunk-kernels torch triton`` measures a row per taid/fkl chunk kernel (triton: CUDA only).

``--ce-weight W`` measures the objective of ``distil_ratio = 1 - W`` instead: KD + cross entropy
in ONE pass of the engine (``ce_weight=W``) against the two separate passes mixed (what the
objective did before): peak memory of each in its own subprocess, and the times of both
alternated in ONE process (``two_over_fused`` compares their medians).

The last line printed is ONE JSON object, the summary of the first configuration (the default
chunk size unless --chunk-sizes says otherwise); --out writes every row, the command and the
machine (its load average included).

Usage: python scripts/bench_loss.py [--tokens 2048] [--hidden 1024] [--vocab 151936]
         [--losses taid fkl] [--dtypes float32 bfloat16] [--chunk-sizes auto 128 256]
         [--compile] [--chunk-kernels torch triton] [--skip-naive | --naive-from FILE] [--out FILE]
       python scripts/bench_loss.py --naive-only --out NAIVE.json      (the plain path alone, ~17 GB)
       python scripts/bench_loss.py --combine RUN.json --naive-from NAIVE.json --out FILE
       python scripts/bench_loss.py --ce-weight 0.5 [--tokens 1024] --out docs/results/bench_loss_ce.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from .results import write_result
from .runner import Run, print_json, run_child, sync, timed_peak

WARMUP_TOKENS = 8


def make_inputs(args: argparse.Namespace, tokens: int):
    import torch

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    # Drawn where they are used: a GPU draws a [128k, 4k] head in milliseconds, a CPU in seconds
    # (on CPU the same numbers as a CPU generator always gave).
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    hidden = randn(tokens, args.hidden).requires_grad_()
    weight = randn(args.vocab, args.hidden, scale=args.hidden**-0.5).requires_grad_()
    teacher_hidden = randn(tokens, args.hidden)
    teacher_weight = randn(args.vocab, args.hidden, scale=args.hidden**-0.5)
    return hidden, weight, teacher_hidden, teacher_weight


def make_labels(args: argparse.Namespace, tokens: int):
    import torch

    return torch.randint(0, args.vocab, (tokens,), generator=torch.Generator().manual_seed(1)).to(args.device)


def kd_ce_step(args: argparse.Namespace, inputs, labels, variant: str) -> None:
    """One forward + backward of (1 - W) * KD + W * CE: one fused pass, or two passes mixed."""
    from taid_vlm.losses import EngineOptions, Head, divergence

    hidden, weight, teacher_hidden, teacher_weight = inputs
    hidden.grad = weight.grad = None
    options = EngineOptions(chunk_size=args.chunk_size, chunk_memory_mb=args.chunk_memory_mb)
    student, teacher = Head(hidden, weight), Head(teacher_hidden, teacher_weight)
    if variant == "fused":
        fused = EngineOptions(chunk_size=args.chunk_size, chunk_memory_mb=args.chunk_memory_mb, ce_weight=args.ce_weight)
        loss = divergence(args.loss, student, teacher, labels=labels, options=fused, **loss_params(args.loss))
    else:
        kd = divergence(args.loss, student, teacher, labels=labels, options=options, **loss_params(args.loss))
        ce = divergence("sft", student, None, labels=labels, options=options)
        loss = (1 - args.ce_weight) * kd + args.ce_weight * ce
    loss.backward()


def run_ce_variant(args: argparse.Namespace) -> dict:
    """--ce-variant fused|two: the peak of one pass; --ce-variant both: alternating timings."""
    import torch

    device = torch.device(args.device)
    kd_ce_step(args, make_inputs(args, WARMUP_TOKENS), make_labels(args, WARMUP_TOKENS), "fused")  # kernels warm
    kd_ce_step(args, make_inputs(args, WARMUP_TOKENS), make_labels(args, WARMUP_TOKENS), "two")
    inputs, labels = make_inputs(args, args.tokens), make_labels(args, args.tokens)
    if args.ce_variant != "both":
        seconds, peak = timed_peak(device, lambda: kd_ce_step(args, inputs, labels, args.ce_variant))
        return {"peak_mb": round(peak, 1), "seconds_single_pass": round(seconds, 4)}
    times: dict[str, list[float]] = {"fused": [], "two": []}
    for _ in range(args.repeats):  # alternate, so that both see the same load
        for variant in ("fused", "two"):
            start = time.perf_counter()
            kd_ce_step(args, inputs, labels, variant)
            sync(device)
            times[variant].append(time.perf_counter() - start)
    fused_s, two_s = statistics.median(times["fused"]), statistics.median(times["two"])
    # microsecond resolution: at a test's tiny shapes a pass takes about a millisecond
    return {"fused_s": round(fused_s, 6), "two_s": round(two_s, 6), "two_over_fused_time": round(two_s / fused_s, 3),
            "all_fused_s": [round(t, 6) for t in times["fused"]], "all_two_s": [round(t, 6) for t in times["two"]],
            "load_average_1min_at_end": round(os.getloadavg()[0], 2)}


def ce_main(args: argparse.Namespace, shape: list[str], run: Run) -> None:
    """Fused KD + CE vs two passes: peaks in their own subprocesses, times side by side in one."""
    if not 0.0 < args.ce_weight < 1.0:
        sys.exit(f"bench_loss: error: --ce-weight {args.ce_weight}: the CE share must lie strictly between 0 and 1")
    base = shape + ["--ce-weight", str(args.ce_weight), "--loss", args.losses[0], "--dtype", args.dtypes[0]]
    base += ["--chunk-memory-mb", str(args.chunk_memory_mb)] if args.chunk_memory_mb else []
    peaks = {}
    for variant in ("fused", "two"):
        peaks[variant] = subprocess_run(base + ["--ce-variant", variant])
        print(f"{variant:5s} peak {peaks[variant]['peak_mb']:9.1f} MB  (one pass {peaks[variant]['seconds_single_pass']:.2f} s)",
              flush=True)
    timing = subprocess_run(base + ["--ce-variant", "both"])
    print(f"time: fused {timing['fused_s']:.2f} s, two passes {timing['two_s']:.2f} s, two / fused {timing['two_over_fused_time']:.2f}",
          flush=True)
    summary = {
        "loss": args.losses[0], "dtype": args.dtypes[0], "ce_weight": args.ce_weight, "device": args.device,
        "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab,
        "fused_peak_mb": peaks["fused"]["peak_mb"], "two_peak_mb": peaks["two"]["peak_mb"],
        "two_over_fused_peak": round(peaks["two"]["peak_mb"] / peaks["fused"]["peak_mb"], 2) if peaks["fused"]["peak_mb"] > 0 else None,
        "fused_s": timing["fused_s"], "two_s": timing["two_s"], "two_over_fused_time": timing["two_over_fused_time"],
        "head_gradient_mb": round(args.vocab * args.hidden * 4 / 2**20, 1),
    }
    if args.out:
        write_result(args.out, run.record({"summary": summary, "peaks": peaks, "timing": timing}))
    print_json(summary)


def loss_params(loss: str) -> dict:
    return {"t": 0.5} if loss == "taid" else {}


def one_step(args: argparse.Namespace, inputs, variant: str) -> None:
    import torch

    from taid_vlm.losses import EngineOptions, Head, divergence

    hidden, weight, teacher_hidden, teacher_weight = inputs
    hidden.grad = weight.grad = None
    if variant == "naive":
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.t()
        loss = divergence(args.loss, hidden @ weight.t(), teacher_logits, **loss_params(args.loss))
    else:
        options = EngineOptions(chunk_size=args.chunk_size, chunk_memory_mb=args.chunk_memory_mb, compile=args.compile,
                                chunk_kernel=args.chunk_kernel)
        loss = divergence(args.loss, Head(hidden, weight), Head(teacher_hidden, teacher_weight), options=options,
                          **loss_params(args.loss))
    loss.backward()


def gemm_floor(inputs, chunk: int | None = None) -> float:
    """Seconds for the four unavoidable GEMMs, full-size (chunk None) or chunk rows at a time."""
    import torch

    hidden, weight, teacher_hidden, teacher_weight = (x.detach() for x in inputs)
    n, vocab = hidden.shape[0], weight.shape[0]
    rows = chunk or n
    logits = torch.empty(rows, vocab, dtype=hidden.dtype, device=hidden.device)
    teacher_logits = logits if chunk is None else torch.empty_like(logits)  # full size: one buffer, half the memory
    grad_h = torch.empty_like(hidden)
    grad_w = torch.zeros_like(weight)
    sync(hidden.device)
    start = time.perf_counter()
    for s in range(0, n, rows):
        e = min(s + rows, n)
        torch.mm(hidden[s:e], weight.t(), out=logits[: e - s])
        torch.mm(teacher_hidden[s:e], teacher_weight.t(), out=teacher_logits[: e - s])
        torch.mm(logits[: e - s], weight, out=grad_h[s:e])
        grad_w.addmm_(logits[: e - s].t(), hidden[s:e])
    sync(hidden.device)
    return time.perf_counter() - start


def chunk_kernel(args: argparse.Namespace, device):
    """The engine's taid/fkl per-chunk kernel for --chunk-kernel (and --compile) on ``device``."""
    from taid_vlm.losses import EngineOptions
    from taid_vlm.losses.chunked import kl_kernel

    return kl_kernel(EngineOptions(compile=args.compile, chunk_kernel=args.chunk_kernel), device)


def kernel_only(args: argparse.Namespace, inputs, chunk: int) -> float:
    """Seconds for the loss + gradient kernel alone over all chunks (fresh logits each chunk)."""
    import torch

    kernel = chunk_kernel(args, inputs[0].device)
    t = loss_params(args.loss).get("t", 1.0)
    hidden, weight = inputs[0].detach(), inputs[1].detach()
    source = (hidden[:chunk] @ weight.t()).float()
    student, teacher = torch.empty_like(source), torch.empty_like(source)
    elapsed = 0.0
    for s in range(0, hidden.shape[0], chunk):
        rows = min(chunk, hidden.shape[0] - s)
        student[:rows].copy_(source[:rows])
        teacher[:rows].copy_(source[:rows].flip(-1))
        sync(hidden.device)
        start = time.perf_counter()
        kernel(student[:rows], teacher[:rows], t, 1.0)
        sync(hidden.device)
        elapsed += time.perf_counter() - start
    return elapsed


def chunk_profile(args: argparse.Namespace, inputs, chunk: int, chunks: int = 3) -> dict:
    """Seconds per step of one chunk through the engine's own steps (median over a few chunks)."""
    import torch

    from taid_vlm.losses.signals import Scratch, linear_into
    kernel = chunk_kernel(args, inputs[0].device)
    t = loss_params(args.loss).get("t", 1.0)
    hidden, weight, teacher_hidden, teacher_weight = (x.detach() for x in inputs)
    chunk = min(chunk, hidden.shape[0])
    math = torch.promote_types(weight.dtype, torch.float32)
    student = torch.empty(chunk, weight.shape[0], dtype=math, device=hidden.device)
    teacher = torch.empty_like(student)
    scratch = Scratch(chunk, weight.shape[0], hidden.device)
    grad_h = torch.empty(chunk, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
    grad_w = torch.zeros(weight.shape, dtype=math, device=hidden.device)
    steps = {
        "student_logits": lambda h, th: linear_into(student, h, weight, None, scratch),
        "teacher_logits": lambda h, th: linear_into(teacher, th, teacher_weight, None, scratch),
        "loss_and_grad_kernel": lambda h, th: kernel(student, teacher, t, 1.0),
        "cast_grad_to_head_dtype": (lambda h, th: scratch.get(h.dtype, chunk).copy_(student)) if weight.dtype != math else None,
        "grad_hidden_gemm": lambda h, th: torch.mm(student.to(h.dtype), weight, out=grad_h),
        "grad_head_gemm": lambda h, th: grad_w.addmm_(student.t(), h.to(math)),
    }
    times = {name: [] for name, fn in steps.items() if fn is not None}
    for i in range(min(chunks, hidden.shape[0] // chunk)):
        h, th = hidden[i * chunk:(i + 1) * chunk], teacher_hidden[i * chunk:(i + 1) * chunk]
        for name in times:
            sync(hidden.device)
            start = time.perf_counter()
            steps[name](h, th)
            sync(hidden.device)
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(v), 4) for name, v in times.items() if v}


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from taid_vlm.losses.chunked import (DEFAULT_CHUNK_MEMORY_MB, ROWS_CLOSED_FORM, ROWS_CLOSED_FORM_TRITON,
                                         auto_chunk_size, rows_per_token)
    from taid_vlm.losses.triton_chunk import interpolated_kl_triton_

    device = torch.device(args.device)
    if args.variant == "chunked":
        one_step(args, make_inputs(args, WARMUP_TOKENS), "chunked")  # kernels (and compile) warm
    inputs = make_inputs(args, args.tokens)
    seconds, peak = timed_peak(device, lambda: one_step(args, inputs, args.variant))
    times = [seconds]
    result = {"peak_mb": round(peak, 1)}
    if args.variant == "naive":
        for _ in range(args.repeats - 1):
            start = time.perf_counter()
            one_step(args, inputs, "naive")
            sync(device)
            times.append(time.perf_counter() - start)
        result.update(seconds=round(statistics.median(times), 4), all_seconds=[round(t, 4) for t in times])
        return result
    triton = chunk_kernel(args, device) is interpolated_kl_triton_
    rows = rows_per_token(ROWS_CLOSED_FORM_TRITON if triton else ROWS_CLOSED_FORM, in_place=True, ce=False,
                          low_precision=inputs[1].dtype.itemsize < 4, softcap=False)
    chunk = min(args.tokens, args.chunk_size or auto_chunk_size(args.vocab, args.chunk_memory_mb, device=device, rows_per_token=rows))
    floors = []
    for _ in range(args.repeats):  # alternate, so that both see the same load
        floors.append(gemm_floor(inputs))
        start = time.perf_counter()
        one_step(args, inputs, "chunked")
        sync(device)
        times.append(time.perf_counter() - start)
    chunked_s, floor_s = statistics.median(times[1:]), statistics.median(floors)
    result.update(
        chunk_size=chunk, chunk_kernel="triton" if triton else "torch", chunk_memory_mb=args.chunk_memory_mb or DEFAULT_CHUNK_MEMORY_MB.get(device.type),
        seconds=round(chunked_s, 6), floor_s=round(floor_s, 6), ratio=round(chunked_s / floor_s, 3),
        gemm_at_chunk_s=round(gemm_floor(inputs, chunk), 4), kernel_s=round(kernel_only(args, inputs, chunk), 4),
        one_chunk_profile_s=chunk_profile(args, inputs, chunk),
        all_seconds=[round(t, 4) for t in times], all_floor_s=[round(t, 4) for t in floors],
        load_average_1min_at_end=round(os.getloadavg()[0], 2),
    )
    return result


def load_naive(path: str) -> dict:
    """Plain-path measurements from an earlier --out JSON (this script's, or its first version's
    single-summary format, which measured taid)."""
    previous = json.loads(Path(path).read_text())
    if "naive" in previous:
        shape = previous.get("shape") or {k: previous["summary"][k] for k in ("tokens", "hidden", "vocab")}
        return {key: dict(value, source=path, **shape) for key, value in previous["naive"].items()}
    old = previous["summary"]
    return {f"taid/{old['dtype']}": {"peak_mb": old["naive_peak_mb"], "seconds": old["naive_s"], "source": path,
                                     "tokens": old["tokens"], "hidden": old["hidden"], "vocab": old["vocab"]}}


def attach_naive(rows: list[dict], naive: dict) -> None:
    """Compare each chunked row's peak with the plain path's (same loss, else same dtype)."""
    for row in rows:
        key = f"{row['loss']}/{row['dtype']}"
        # The plain path's peak barely depends on the loss (logits, softmaxes, gradients):
        # without a run of its own, a loss is compared with another loss's plain run.
        reference = key if key in naive else next((k for k in naive if k.endswith("/" + row["dtype"])), None)
        if reference is not None:
            row["naive_reference"] = reference
            row["naive_over_chunked_peak"] = round(naive[reference]["peak_mb"] / max(row["peak_mb"], 1e-9), 2)


def summarize(rows: list[dict], naive: dict, args: argparse.Namespace) -> dict:
    first = rows[0]
    key = first.get("naive_reference", "")
    return {
        "loss": first["loss"], "dtype": first["dtype"], "chunk_size": first["chunk_size"], "compile": first["compile"],
        "naive_peak_mb": naive.get(key, {}).get("peak_mb"), "chunked_peak_mb": first["peak_mb"],
        "naive_over_chunked_peak": first.get("naive_over_chunked_peak"), "naive_reference": key or None,
        "naive_s": naive.get(key, {}).get("seconds"), "naive_source": naive.get(key, {}).get("source", "this run"), "chunked_s": first["seconds"], "floor_s": first["floor_s"],
        "ratio": first["ratio"], "device": args.device, "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab,
    }


def combine(args: argparse.Namespace) -> None:
    """Rows of an earlier run + plain-path measurements taken apart (when memory allowed)."""
    run = json.loads(Path(args.combine).read_text())
    naive = load_naive(args.naive_from) if args.naive_from else run.get("naive", {})
    shape = {k: run["summary"][k] for k in ("tokens", "hidden", "vocab")}
    for key, value in naive.items():
        if {k: value.get(k) for k in shape} != shape:
            print(f"bench_loss: error: --naive-from {args.naive_from}: {key} was measured at "
                  f"{ {k: value.get(k) for k in shape} }, the run at {shape}; measure the plain path at the run's shape",
                  file=sys.stderr)
            sys.exit(2)
    rows = run["rows"]
    attach_naive(rows, naive)
    for key in ("tokens", "hidden", "vocab", "device"):
        setattr(args, key, run["summary"][key])
    payload = dict(run, summary=summarize(rows, naive, args), naive=naive, rows=rows,
                   combined=f"rows measured by: {run['command']}; plain path from: {args.naive_from} (a separate run: compare its memory, not its time)")
    if args.out:
        write_result(args.out, payload)
    print_json(payload["summary"])


def subprocess_run(args_list: list[str]) -> dict:
    return run_child("loss", args_list, f"bench_loss: {' '.join(args_list)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--losses", nargs="+", default=["taid"], choices=["taid", "fkl"])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chunk-sizes", nargs="+", default=["auto"],
                        help="tokens per chunk to measure; 'auto' = the engine's default (from chunk_memory_mb)")
    parser.add_argument("--chunk-memory-mb", type=float, default=None, help="budget behind 'auto' (default: the engine's)")
    parser.add_argument("--compile", action="store_true", help="run the loss kernel through torch.compile")
    parser.add_argument("--chunk-kernels", nargs="+", default=["auto"], choices=["torch", "triton", "auto"],
                        help="the engine's taid/fkl chunk kernels to measure, a row each (auto: triton on CUDA, else torch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (median; the chunked pass that measured the peak is not among them)")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the plain full-logits path (it peaks at ~17 GB at the default shape)")
    parser.add_argument("--naive-from", help="take the plain path's measurements from this earlier --out JSON instead of running them")
    parser.add_argument("--naive-only", action="store_true", help="measure only the plain path (for a later --naive-from)")
    parser.add_argument("--combine", metavar="RUN_JSON", help="no measuring: join RUN_JSON's rows with --naive-from's plain path into --out")
    parser.add_argument("--ce-weight", type=float, default=None,
                        help="measure (1 - W) * KD + W * CE: one fused pass vs two passes (first of --losses/--dtypes)")
    parser.add_argument("--out", help="write every row, the command and the machine to this JSON file")
    parser.add_argument("--ce-variant", choices=["fused", "two", "both"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="taid", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-kernel", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.ce_variant:
        print_json(run_ce_variant(args))
        return
    if args.variant:
        print_json(run_variant(args))
        return
    if args.combine:
        combine(args)
        return

    run = Run()
    shape = ["--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
             "--device", args.device, "--repeats", str(args.repeats)]
    if args.ce_weight is not None:
        ce_main(args, shape, run)
        return
    naive = {}
    if args.naive_from:
        naive = load_naive(args.naive_from)
    rows = []
    for dtype in args.dtypes:
        for loss in args.losses:
            key = f"{loss}/{dtype}"
            if not args.skip_naive and key not in naive:
                naive[key] = subprocess_run(shape + ["--variant", "naive", "--loss", loss, "--dtype", dtype])
                print(f"{key:16s} naive      peak {naive[key]['peak_mb']:9.1f} MB  time {naive[key]['seconds']:8.3f} s", flush=True)
            if args.naive_only:
                continue
            for chunk, kernel in [(c, k) for c in args.chunk_sizes for k in args.chunk_kernels]:
                extra = [] if chunk == "auto" else ["--chunk-size", chunk]
                extra += ["--chunk-memory-mb", str(args.chunk_memory_mb)] if args.chunk_memory_mb else []
                extra += ["--compile"] if args.compile else []
                row = subprocess_run(shape + ["--variant", "chunked", "--loss", loss, "--dtype", dtype, "--chunk-kernel", kernel] + extra)
                row.update(loss=loss, dtype=dtype, requested_chunk=chunk, compile=args.compile)
                attach_naive([row], naive)
                rows.append(row)
                print(f"{key:16s} {row['chunk_kernel']:6s} chunk {row['chunk_size']:5d} peak {row['peak_mb']:9.1f} MB  time {row['seconds']:8.3f} s  "
                      f"floor {row['floor_s']:8.3f} s  ratio {row['ratio']:.3f}  (GEMMs at chunk {row['gemm_at_chunk_s']:.3f} s, "
                      f"kernel {row['kernel_s']:.3f} s)", flush=True)
    if args.naive_only:
        if args.out:
            write_result(args.out, run.record({"naive": naive, "shape": {"tokens": args.tokens, "hidden": args.hidden,
                                                                          "vocab": args.vocab}}))
        print_json(naive)
        return
    summary = summarize(rows, naive, args)
    if args.out:
        write_result(args.out, run.record({"summary": summary, "naive": naive, "rows": rows}))
    print_json(summary)


if __name__ == "__main__":
    main()

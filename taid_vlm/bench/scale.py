"""Peak memory and step time of real distillation steps at Qwen2-VL-2B widths: precision, checkpointing, sharding.

The pair is built from configs without weights: a Qwen2-VL student with Qwen2-VL-2B's LM width
(1536), heads (12, 2 KV), MLP (8960) and vision tower width (1280, 16 heads), its layer counts
cut so it fits the machine, and a teacher of the same widths with one more LM layer (bf16).
The vocabulary is 151,936 rows on a GPU; on a CPU it is cut (``--vocab``) so two processes fit
beside other work. Every figure comes from the training loop itself (``taid_vlm.train.loop``
``setup`` + ``step``), one warm-up step (which allocates AdamW's state) and then ``--steps``
timed steps:

- fp32, bf16 (autocast over fp32 master weights), bf16_ckpt (+ activation checkpointing):
  one process each, in its own subprocess so a peak is its own;
- lora_r8, lora_r64, lora_r8_bf16base (``--modes``, not in the default list): a LoRA student
  (bf16 autocast, adapters on every linear layer but the head; the last with its frozen base in
  bf16), to set beside bf16 full fine-tuning on the same pair;
- ddp, fsdp: two processes (torchrun; gloo on CPU, NCCL on GPUs) with the global batch of the
  single-process runs, figures per rank; ddp is torch DistributedDataParallel (bucketed
  all-reduce overlapped with backward);
- ddp_summed: the comparator for ddp, the loop's former data parallelism, kept here only: a whole
  student per rank whose gradients are summed by hand after backward, in flattened buckets of
  up to 128 MB (``SummedGradients``), without overlap.

After its timed steps every two-process run also times a checkpoint both ways:
``dcp_save_s``, the loop's checkpoint (torch.distributed.checkpoint: every rank writes its
shard), and ``rank0_save_s``, the former one (the whole student and optimizer state gathered on
rank 0, which writes them alone: ``model.safetensors`` + ``optimizer.pt``).

``peak_mb``: CUDA ``max_memory_allocated`` over the timed steps; on CPU the peak resident set
sampled every 2 ms over them (the whole process: libraries, teacher, student, optimizer).
``transient_mb``: that peak minus the memory held just before the timed steps (what a step adds
on top: activations, gradients, gathered shards, loss temporaries). ``saved_activations_mb``:
what autograd keeps from forward to backward (see ``SavedActivations``). ``param_optim_mb``: bytes of this rank's parameters plus AdamW
state (local shards under fsdp), counted exactly; ``trainable_params``, ``weights_mb`` (every
parameter, frozen ones included) and ``optimizer_state_mb`` (AdamW's moments alone) likewise.
``step_s``: median step wall time.

The last line printed is ONE JSON object:
  {"fp32": {"peak_mb": .., "step_s": ..}, "bf16": {..}, "bf16_ckpt": {..}, "ddp": {.., "dcp_save_s": ..,
   "rank0_save_s": ..}, "ddp_summed": {..}, "fsdp": {..}, "model": .., "device": ..}
and the whole result, with the machine and its load, goes to ``--out`` (docs/results/bench_scale.json).

Usage: python scripts/bench_scale.py [--device cpu|cuda] [--steps 3] [--modes ddp,ddp_summed,fsdp]
       [--out docs/results/bench_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .results import write_result
from .runner import REPO, PeakSampler, Run, child_command, child_env, print_json

SINGLE = {"fp32": dict(mixed_precision="no"), "bf16": dict(mixed_precision="bf16"),
          "bf16_ckpt": dict(mixed_precision="bf16", gradient_checkpointing=True)}
# LoRA students (taid_vlm/models/lora.py) next to bf16 full fine-tuning: adapters on every linear
# layer but the head; "_bf16base" also keeps the frozen base in bf16 (QLoRA-style, no 4-bit).
SINGLE.update({f"lora_r{r}": dict(mixed_precision="bf16", lora_r=r) for r in (8, 64)})
SINGLE["lora_r8_bf16base"] = dict(mixed_precision="bf16", lora_r=8, student_dtype="bfloat16")
PARALLEL = ("ddp", "fsdp", "ddp_summed")
QWEN2_VL_2B = dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                   vision_embed_dim=1280, vision_heads=16, vocab_size=151936)
DEFAULTS = {  # per device: what fits (layer counts and, on CPU, the vocabulary are the cuts)
    "cpu": dict(lm_layers=1, vision_layers=1, vocab=32768, seq=512, batch_size=2, image_size=224),
    "cuda": dict(lm_layers=8, vision_layers=8, vocab=151936, seq=2048, batch_size=4, image_size=448),
}


# ---- the pair and its data ------------------------------------------------------------------------


def build_pair(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Student and teacher checkpoints (random weights) plus a JSONL of image records of ~``seq`` tokens."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from taid_vlm.data import Record, load_records
    from taid_vlm.models import adapt
    from taid_vlm.testing.tiny import _mrope_section, build_tiny

    _, processor = build_tiny("qwen2_vl", image_size=args.image_size)  # the processor only: 14 px patches, 2x2 merge
    tok = processor.tokenizer
    head_dim = QWEN2_VL_2B["hidden_size"] // QWEN2_VL_2B["num_attention_heads"]

    def config(lm_layers: int) -> Any:
        text = dict(vocab_size=args.vocab, hidden_size=QWEN2_VL_2B["hidden_size"], intermediate_size=QWEN2_VL_2B["intermediate_size"],
                    num_hidden_layers=lm_layers, num_attention_heads=QWEN2_VL_2B["num_attention_heads"],
                    num_key_value_heads=QWEN2_VL_2B["num_key_value_heads"], max_position_embeddings=32768,
                    tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)})
        vision = dict(depth=args.vision_layers, embed_dim=QWEN2_VL_2B["vision_embed_dim"], hidden_size=QWEN2_VL_2B["hidden_size"],
                      num_heads=QWEN2_VL_2B["vision_heads"], mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                             image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                             video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                             vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                             vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))

    counts = {}
    for name, layers, dtype in (("student", args.lm_layers, torch.float32), ("teacher", args.lm_layers + 1, torch.bfloat16)):
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(config(layers)).to(dtype)
        counts[name] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(work / name)
        processor.save_pretrained(work / name)
        if name == "student":
            adapter = adapt(model, processor)
        del model

    image_dir = work / "images"
    image_dir.mkdir()
    sentence = "the red circle is left of the blue square and the green triangle is small . "
    probe = Record("probe", [{"role": "user", "content": "<image>Describe the scene."}, {"role": "assistant", "content": sentence}],
                   images=[Image.new("RGB", (args.image_size, args.image_size))])
    base = adapter.render([probe]).input_ids.shape[1]
    per_sentence = len(tok(sentence, add_special_tokens=False)["input_ids"])
    repeats = max(1, (args.seq - base) // per_sentence + 1)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(4 * args.batch_size):
        image = image_dir / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)).save(image)
        rows.append({"id": f"r{i}", "images": [str(image)], "messages": [
            {"role": "user", "content": "<image>Describe the scene."},
            {"role": "assistant", "content": (sentence * repeats).strip()}]})
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seq = adapter.render(load_records(work / "data.jsonl")[:1]).input_ids.shape[1]
    return {"family": "qwen2_vl (Qwen2-VL-2B widths, random weights)", **QWEN2_VL_2B, "vocab_size": args.vocab,
            "student_lm_layers": args.lm_layers, "teacher_lm_layers": args.lm_layers + 1, "vision_layers": args.vision_layers,
            "student_params": counts["student"], "teacher_params": counts["teacher"], "teacher_dtype": "bfloat16",
            "image_size": args.image_size, "tokens_per_record": seq,
            "records_per_step": args.batch_size, "loss": "taid (chunked engine)"}


# ---- one measured run (a subprocess, or one rank of a two-process launch) ------------------------


class SavedActivations:
    """Bytes autograd keeps from forward for backward, the largest over steps: parameters and their
    autocast copies (tensors shaped like a parameter) are weights, not activations, and are left out.

    Activation checkpointing shows here directly: a checkpointed layer keeps only its input (held
    by the checkpoint itself, not counted) instead of every intermediate. The peak falls by less,
    since backward recomputes one layer at a time; with few layers that layer is most of it.
    """

    def __init__(self, weight_shapes: set[tuple[int, ...]]) -> None:
        self.largest, self._step, self._seen = 0, 0, set()
        self.weight_shapes = weight_shapes

    def hooks(self) -> Any:
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: Any) -> Any:
        import torch

        if not isinstance(tensor, torch.nn.Parameter) and tuple(tensor.shape) not in self.weight_shapes:
            key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
            if key not in self._seen:
                self._seen.add(key)
                self._step += key[1]
        return tensor

    def end_step(self) -> None:
        self.largest, self._step, self._seen = max(self.largest, self._step), 0, set()


def _parameter_bytes(run: Any) -> dict[str, Any]:
    """Trainable parameters, every parameter's bytes (frozen base included) and AdamW's state alone."""
    import torch

    params = list(run.student.model.parameters())
    state = [v for s in run.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "weights_mb": round(sum(p.numel() * p.element_size() for p in params) / 2**20, 1),
            "optimizer_state_mb": round(sum(v.numel() * v.element_size() for v in state) / 2**20, 1)}


def summed_gradients_strategy(env: Any) -> Any:
    """The former ddp (the comparator): whole students, gradients summed by hand after backward."""
    import torch
    import torch.distributed as dist

    from taid_vlm.train.parallel import Strategy

    class SummedGradients(Strategy):
        name = "ddp_summed"

        def place(self, student: Any, teacher: Any) -> None:
            super().place(student, teacher)
            env.broadcast_parameters(student.model)

        def reduce_gradients(self, extra: list[Any], bucket_elements: int = 1 << 25) -> None:
            params = [p for p in self.student.model.parameters() if p.requires_grad] + list(extra)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            bucket: list[Any] = []
            for grad in [p.grad for p in params] + [None]:
                size = sum(g.numel() for g in bucket)
                if bucket and (grad is None or size + grad.numel() > bucket_elements or grad.dtype != bucket[0].dtype):
                    flat = torch.cat([g.reshape(-1) for g in bucket])
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                    offset = 0
                    for g in bucket:
                        g.copy_(flat[offset : offset + g.numel()].view_as(g))
                        offset += g.numel()
                    bucket = []
                if grad is not None:
                    bucket.append(grad)

    return SummedGradients(env)


def time_checkpoints(run: Any) -> dict[str, float]:
    """The loop's DCP checkpoint against the former rank-0 gather-and-write, same state, same disk."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from taid_vlm.train.loop import _save_checkpoint

    env = run.env
    env.barrier()
    start = time.perf_counter()
    _save_checkpoint(run)
    env.barrier()
    dcp_s = time.perf_counter() - start
    module = run.strategy.state_module(run.loss.modules())
    target = Path(run.out) / "rank0-checkpoint"
    env.barrier()
    start = time.perf_counter()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(run.student.model, options=options)
    optim = get_optimizer_state_dict(module, run.optimizer, options=options)
    if env.is_main:
        target.mkdir(exist_ok=True)
        seen: set[int] = set()  # tied weights once
        unique = {k: v.contiguous() for k, v in weights.items() if not (v.data_ptr() in seen or seen.add(v.data_ptr()))}
        save_file(unique, str(target / "model.safetensors"))
        torch.save(optim, target / "optimizer.pt")
        for f in target.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    env.barrier()
    rank0_s = time.perf_counter() - start
    return {"dcp_save_s": round(dcp_s, 3), "rank0_save_s": round(rank0_s, 3)}


def worker(args: argparse.Namespace) -> None:
    import torch

    from taid_vlm.train.config import load_config
    from taid_vlm.train.loop import setup, step
    from taid_vlm.train.parallel import Distributed, local_state_bytes

    work = Path(args.workdir)
    settings = dict(SINGLE.get(args.worker, {}))
    strategy = None
    if args.worker == "ddp_summed":
        settings["distributed"] = "ddp"
        strategy = summed_gradients_strategy(Distributed())
    elif args.worker in PARALLEL:
        settings["distributed"] = args.worker
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = load_config(None, dict(
        student=str(work / "student"), teacher=str(work / "teacher"), data=str(work / "data.jsonl"),
        output=str(work / f"run-{args.worker}"), overwrite=True, batch_size=args.batch_size // world, max_steps=1000,
        save_every=100_000, log_every=100_000, progress=False, teacher_dtype="bfloat16", lr=1e-5, **settings))
    run = setup(config, strategy=strategy)
    step(run)  # warm-up: allocates AdamW's state
    times = []
    saved = SavedActivations({tuple(p.shape) for p in run.student.model.parameters()})
    with PeakSampler(args.device) as peak:
        for _ in range(args.steps):
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with saved.hooks():
                step(run)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            saved.end_step()
    checkpoints = time_checkpoints(run) if args.worker in PARALLEL else {}
    run.data.close()
    result = {**checkpoints, "peak_mb": round(peak.peak, 1), "transient_mb": round(peak.peak - peak.start, 1),
              "saved_activations_mb": round(saved.largest / 2**20, 1), "step_s": round(statistics.median(times), 3),
              "all_step_s": [round(t, 3) for t in times],
              "param_optim_mb": round(local_state_bytes(run.params, run.optimizer) / 2**20, 1),
              **_parameter_bytes(run),
              "torch_threads": torch.get_num_threads(), "records_per_rank": config.batch_size}
    (work / f"result-{args.worker}-rank{rank}.json").write_text(json.dumps(result))


# ---- the driver -----------------------------------------------------------------------------------


def ensure_pair(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``build_pair`` into ``work``, or the pair an earlier call left there (same settings)."""
    described = work / "pair.json"
    if described.exists() and (work / "data.jsonl").exists():
        model = json.loads(described.read_text())
        if model.get("settings") == _pair_settings(args):
            return model
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = dict(build_pair(work, args), settings=_pair_settings(args))
    described.write_text(json.dumps(model))
    return model


def _pair_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in DEFAULTS["cuda"]}


def cuda_pair_args() -> argparse.Namespace:
    """The settings of the GPU pair (DEFAULTS["cuda"]), for callers that build it without this CLI."""
    return argparse.Namespace(**DEFAULTS["cuda"])


def launch(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    env = child_env()
    common = ["--worker", mode, "--workdir", str(work), "--device", args.device,
              "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    if mode in PARALLEL:
        if args.device == "cuda":
            import torch

            if torch.cuda.device_count() < 2:
                return {"skipped": "needs 2 GPUs"}
        else:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
        command = child_command("scale", common, launcher=["torch.distributed.run", "--nproc_per_node", "2"])
    else:
        command = child_command("scale", common)
    print(f"[bench_scale] {mode} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-4000:]}")
    ranks = sorted(work.glob(f"result-{mode}-rank*.json"))
    results = [json.loads(p.read_text()) for p in ranks]
    if mode not in PARALLEL:
        return results[0]
    return {"per_rank": results, "peak_mb": max(r["peak_mb"] for r in results),
            "transient_mb": max(r["transient_mb"] for r in results),
            "saved_activations_mb": max(r["saved_activations_mb"] for r in results),
            "param_optim_mb": max(r["param_optim_mb"] for r in results), "step_s": max(r["step_s"] for r in results),
            "dcp_save_s": results[0]["dcp_save_s"], "rank0_save_s": results[0]["rank0_save_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--lm-layers", type=int, help="student LM layers (teacher: one more)")
    parser.add_argument("--vision-layers", type=int)
    parser.add_argument("--vocab", type=int, help="LM head rows (151936 = Qwen2-VL)")
    parser.add_argument("--seq", type=int, help="tokens per record (image tokens included)")
    parser.add_argument("--batch-size", type=int, help="records per optimizer step (split over 2 ranks for ddp/fsdp)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--modes", default="fp32,bf16,bf16_ckpt,ddp,ddp_summed,fsdp")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "bench_scale.json"))
    parser.add_argument("--pair-dir", help="build the pair here and keep it (reused when its settings match); default: a temporary folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.worker:
        worker(args)
        return

    run = Run()
    work = Path(args.pair_dir) if args.pair_dir else Path(tempfile.mkdtemp(prefix="bench_scale-"))
    try:
        model = ensure_pair(work, args) if args.pair_dir else build_pair(work, args)
        results: dict[str, Any] = {}
        for mode in args.modes.split(","):
            results[mode] = launch(args, work, mode)
    finally:
        if not args.pair_dir:
            shutil.rmtree(work, ignore_errors=True)
    shown = ("peak_mb", "transient_mb", "saved_activations_mb", "step_s", "param_optim_mb", "trainable_params", "weights_mb",
             "optimizer_state_mb", "dcp_save_s", "rank0_save_s", "skipped")
    line = {**{m: {k: v for k, v in r.items() if k in shown} for m, r in results.items()},
            "model": model, "device": args.device}
    payload = run.record({**line, "details": results, "steps": args.steps,
                          "notes": ("ddp/fsdp run 2 processes with half the threads each (CPU) and half the records each: "
                                    "compare their per-rank peak_mb and param_optim_mb with each other, not their step_s "
                                    "with fp32's")})
    write_result(args.out, payload)
    print_json(line)


if __name__ == "__main__":
    main()

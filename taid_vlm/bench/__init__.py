"""The project's benchmarks: what the committed figures in docs/results/ come from.

It sits above every other part of the package (nothing imports it): each benchmark is a module
with a ``main()`` (its entry points are in ``scripts/``; ``python -m taid_vlm.bench.NAME``
runs the same), and all of them record the machine, the load, the command and the timings
through one runner (``runner``) and write through one results writer (``results``).

- ``loss``: the chunked loss engine against the plain path and the GEMM floor;
- ``step``: one training step of a demo-sized pair, chunked against plain logits;
- ``vs_trl``: one forward-KL step against TRL's distillation trainers;
- ``fused``: the fused-linear loss alone, ours against Liger's fused-linear JSD and TRL's chunked
  divergence, each checked against fp64;
- ``scale``: precision, checkpointing and sharding at Qwen2-VL-2B widths;
- ``data_scale``: distill's start-up (time, peak memory) on 20,000 against 200,000 LLaVA records;
- ``cache``: the offline teacher cache's cost and its students' quality;
- ``quality``: the loss zoo, the capacity gap and TAID's settings on the synthetic scenes;
- ``sizing``: one candidate configuration of the demo, measured end to end;
- ``generation``: generation speed, the Hugging Face backend against vLLM;
- ``gpu_check``: every CUDA measurement in one command (``scripts/gpu_check.sh``), each part under its own limit;
- ``fuzz_cli``: bad inputs through the real CLI, one verdict each;
- ``tables``: the README's and docs/results/README.md's result blocks, rendered from the JSON.

``runs`` holds the keyed student runs the long benchmarks reuse after an interruption; the
demo's building blocks (``taid_vlm.demo.pipeline``) do the training and evaluation.
"""

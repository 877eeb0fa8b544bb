"""Quality benchmark on the synthetic shapes set, in two regimes.

``--regime transfer`` (the default; taid_vlm/bench/quality/transfer.py says how it is built): the
teacher learns from the demo's whole scenes set, the students only from a small transfer set
(13x smaller), so the teacher knows more than the student's data shows. Parts, in the order
they run by default: ``plateau`` (every loss, 5 seeds, at the budget where the students end their
rise; taid's per-seed paired difference against each), ``gap`` (three teachers of growing size,
taid vs fkl vs skew_fkl, same budget), ``noanswer`` (the transfer set's answers withheld: the
teacher answers it once and students learn from that), and on request ``zoo`` (the plateau zoo
at a third of the budget: which loss learns fastest from the teacher), ``sizing`` (a few
losses at a few budgets, how the student budget was chosen) and ``xtok`` (a student on its own
tokenizer: taid over span, uld and sft; docs/CROSS-TOKENIZER.md).
Outputs go to ``OUT/transfer/{part}.{json,md,png}``; each JSON is rewritten after every
finished seed (``complete: false`` until the part ends) and carries the sentences the numbers
support (taid_vlm/bench/quality/stats.py).

``--regime same-data``: the earlier benchmark, everyone trained on the demo's set.
Part 1, ``zoo``: one trained teacher; for every loss of the zoo (and TAID with the linear
schedule only) and every seed, a student of the demo's student size is distilled under the
same budget (steps, batch, lr); the seed sets the student's initial weights and data order.
Reports mean +- std (over seeds) of VQA accuracy and CIDEr-D, and the share of the
sft -> teacher gap each loss closes.

Part 2, ``gap``: teachers of growing size (each trained from scratch, bigger ones for more
steps), one student size; students distilled with taid, fkl and skew_fkl. TAID's central
claim is that its student improves as the teacher grows while the others stall or degrade.

Part 3, ``taid``: TAID's own settings on the zoo's teacher and seeds (t_start 0.2 / 0.4 / 0.7,
linear schedule only, an alpha large enough for the adaptive rule to act in a short run), to
see which of them matters where TAID does not win.

Same-data outputs under ``--out`` (default docs/results/quality): ``{zoo,gap,taid}.{json,md,png}``; each
JSON holds the exact command and the machine. In both regimes finished student runs are reused when nothing
that decides them changed, so an interrupted benchmark resumes where it stopped.
Captions are scored by pycocoevalcap whenever Java runs (``--caption-backend auto``, the default)
and by the python fallback only without Java or when asked for; the backend actually used is
recorded in every JSON and named in every table. VQA accuracy uses the official rules
(docs/EVALUATION.md); the question counts in the tables are those actually scored.
Each teacher runs ONCE: its top-64 log-probs over the students' training set go to a
teacher cache that every loss and seed trains from (same-data: ``--cache-top-k 0`` for a live
teacher per run; docs/TEACHER_CACHE.md says what the top-k approximation changes per loss).

Usage:
  python scripts/bench_quality.py                                   # transfer: plateau, gap, noanswer; seeds 0-4
  python scripts/bench_quality.py --jobs 2 --threads 1               # the same, a helper sharing the plateau runs
  python scripts/bench_quality.py --jobs 2 --threads 1 --parts zoo   # the 200-step zoo (learning speed)
  python scripts/bench_quality.py --parts sizing --seeds 0           # how the student budget was sized
  python scripts/bench_quality.py --parts xtok --seeds 0 1 2 --threads 1   # cross-tokenizer students vs sft
  python scripts/bench_quality.py --regime same-data --preset default --seeds 0 1 2 --parts zoo gap
  python scripts/bench_quality.py --preset quick --seeds 0 --losses sft taid --parts zoo   # a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import same_data, transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", default="transfer", choices=["transfer", "same-data"],
                        help="transfer (default): teacher on the big set, students on a small transfer set "
                             "(taid_vlm/bench/quality/transfer.py); same-data: everyone on the demo's set")
    parser.add_argument("--preset", default="default", choices=["quick", "default", "full"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 2 3 4 (transfer), 0 1 2 (same-data)")
    parser.add_argument("--gap-seeds", type=int, nargs="+", default=None, help="seeds of the capacity-gap part (default: --seeds)")
    parser.add_argument("--losses", nargs="+", default=None, help=f"zoo losses; transfer: {', '.join(transfer.ZOO)}; "
                        f"same-data: {', '.join(same_data.ZOO)}")
    parser.add_argument("--parts", nargs="+", default=None,
                        help=f"transfer: {', '.join(transfer.PARTS)} (default: plateau gap noanswer, in that order); "
                             "same-data: zoo gap taid")
    parser.add_argument("--caption-backend", default="auto", choices=["auto", "pycocoevalcap", "python"],
                        help="auto: pycocoevalcap when Java runs, else the python fallback (named in every table)")
    parser.add_argument("--work", default="runs/bench-quality", help="where checkpoints and evaluations go")
    parser.add_argument("--out", default="docs/results/quality", help="where the tables, plots and JSON go "
                        "(the transfer regime writes to OUT/transfer)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md tables and plots from the JSON already in --out (no training)")
    parser.add_argument("--cache-top-k", type=int, default=64,
                        help="students read the teacher's top-k from a cache built once (same-data only: 0 = live teacher)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="transfer: processes training the plateau and zoo runs side by side (2 with --threads 1 on "
                             "a 2-core machine); helpers take the seeds and losses in reverse order, the main process "
                             "waits for a run a helper is writing and reuses it when done")
    parser.add_argument("--helper", type=int, default=0, help=argparse.SUPPRESS)  # set by --jobs for its helpers
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (1 on a shared 2-core machine: two threads fighting other "
                             "processes for the cores made each step several times slower)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more processes")
    transfer_regime = args.regime == "transfer"
    args.seeds = args.seeds or ([0, 1, 2, 3, 4] if transfer_regime else [0, 1, 2])
    args.gap_seeds = args.gap_seeds or args.seeds
    args.parts = args.parts or (["plateau", "gap", "noanswer"] if transfer_regime else ["zoo", "gap", "taid"])
    args.losses = args.losses or list(transfer.ZOO if transfer_regime else same_data.ZOO)
    allowed_parts, allowed_losses = (transfer.PARTS, transfer.ZOO) if transfer_regime else (("zoo", "gap", "taid"), same_data.ZOO)
    for kind, given, allowed in (("--parts", args.parts, allowed_parts), ("--losses", args.losses, allowed_losses)):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            parser.error(f"{kind} {' '.join(unknown)} not in the {args.regime} regime; choose from {', '.join(allowed)}")
    if transfer_regime:
        if args.render_only:
            transfer.render_transfer(Path(args.out) / "transfer", args.parts)
        else:
            transfer.main(args)
        return
    if args.render_only:
        same_data.render_existing(Path(args.out), args.parts)
        return
    same_data.main(args)

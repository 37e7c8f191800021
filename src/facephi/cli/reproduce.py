"""`facephi reproduce`: the paper's Table 1 protocol on any extracted landmark set.

Example::

    facephi reproduce --data data/ferplus --preset cpu --out runs/table1-ferplus

Re-running the same command skips finished steps and resumes interrupted training.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the paper's Table 1 (encoders, two LLM stages, evaluation)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="extracted landmark set (facephi extract)")
    p.add_argument("--out", required=True, help="run directory (created, or continued)")
    p.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                   help="encoder and LLM-stage hyper-parameters (default: cpu)")
    p.add_argument("--llm", help="LLM name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file", help="GGUF file name inside --llm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--eval-limit", metavar="N|all",
                   help="score every row on the same seeded subset of N test samples "
                        "(default: 1000 with --preset cpu, all with --preset paper)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--encoder-epochs", type=int, help="override the preset's encoder epochs")
    p.add_argument("--stage-limit-train", type=int, metavar="N",
                   help="override the preset's class-balanced training subset of both LLM stages")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.pipelines.reproduce import EVAL_LIMITS, ReproduceConfig, reproduce
    from facephi.utils.errors import FacePhiError

    if args.eval_limit is None:
        eval_limit = EVAL_LIMITS[args.preset]
    elif args.eval_limit == "all":
        eval_limit = None
    elif args.eval_limit.isdigit() and int(args.eval_limit) >= 1:
        eval_limit = int(args.eval_limit)
    else:
        raise FacePhiError(f"--eval-limit must be a positive number or 'all', got {args.eval_limit!r}")
    encoder_overrides = {} if args.encoder_epochs is None else {"epochs": args.encoder_epochs}
    stage_overrides = {} if args.stage_limit_train is None else {"limit_train": args.stage_limit_train}
    config = ReproduceConfig(
        data=args.data, out=args.out, preset=args.preset, llm=args.llm, gguf_file=args.gguf_file, seed=args.seed,
        threads=args.threads, eval_limit=eval_limit, eval_batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens, encoder_overrides=encoder_overrides, stage_overrides=stage_overrides,
        progress=not args.no_progress)
    reproduce(config)
    print((Path(args.out) / "table1.md").read_text())
    return 0

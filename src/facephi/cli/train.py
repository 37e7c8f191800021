"""`facephi train`: stage 1 (projector) or stage 2 (LLM) training of FacePhi.

Examples::

    facephi train --stage 1 --encoder runs/align/final --data data/ferplus --out runs/stage1
    facephi train --stage 2 --init runs/stage1/final --data data/ferplus --out runs/stage2
    accelerate launch --num_processes 4 "$(which facephi)" train --stage 2 ... --preset paper
"""

from __future__ import annotations

import argparse
import dataclasses
import os

# Flags that override one TrainConfig field each: flag -> (field, type, help).
_OVERRIDES: dict[str, tuple[str, type, str]] = {
    "--batch-size": ("batch_size", int, "samples per optimizer step, all processes together"),
    "--grad-accum": ("grad_accum", int, "micro-batches per optimizer step (memory)"),
    "--lr": ("lr", float, "peak learning rate (AdamW)"),
    "--epochs": ("epochs", int, "passes over the training subset"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--warmup-ratio": ("warmup_ratio", float, "fraction of the steps with linear warm-up"),
    "--max-length": ("max_length", int, "token length of the training sequences"),
    "--max-steps": ("max_steps", int, "cap on the total number of optimizer steps (sets the schedule)"),
    "--log-every": ("log_every", int, "optimizer steps between loss log entries"),
    "--keep-checkpoints": ("keep_checkpoints", int, "number of checkpoints kept"),
    "--threads": ("num_threads", int, "torch CPU threads"),
    "--seed": ("seed", int, "seed of data order, templates and initialisation"),
    "--lora-r": ("lora_r", int, "LoRA rank"),
    "--lora-alpha": ("lora_alpha", int, "LoRA alpha"),
    "--lora-dropout": ("lora_dropout", float, "LoRA dropout"),
}
# Like _OVERRIDES, but "all" (or "none") removes the limit.
_LIMITS: dict[str, tuple[str, str]] = {
    "--limit-train": ("limit_train", "class-balanced subset of the train split ('all': every sample)"),
    "--limit-valid": ("limit_valid", "valid samples for the reported loss ('all'; 'none' is the same)"),
    "--save-every": ("save_every", "optimizer steps between checkpoints ('none': only at the end)"),
}
_UNLIMITED = object()


def _count_or_all(text: str) -> object:
    if text.lower() in ("all", "none"):
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the projector (stage 1) or the LLM (stage 2)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--data", required=True, help="extracted landmark set (facephi extract)")
    p.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    p.add_argument("--encoder", help="stage 1: landmark encoder checkpoint (facephi align)")
    p.add_argument("--init", help="stage 2: FacePhi model to start from, e.g. RUN1/final")
    p.add_argument("--llm", help="stage 1: LLM name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file", help="stage 1: GGUF file name inside --llm")
    p.add_argument("--preset", choices=("cpu", "paper"),
                   help="starting hyper-parameters (default: paper with a GPU, cpu without)")
    for flag, (field, kind, help_text) in _OVERRIDES.items():
        p.add_argument(flag, dest=field, type=kind, help=help_text)
    for flag, (field, help_text) in _LIMITS.items():
        p.add_argument(flag, dest=field, type=_count_or_all, help=help_text)
    p.add_argument("--scheduler", choices=("cosine", "linear"), help="learning-rate decay after warm-up")
    p.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"))
    p.add_argument("--lora", action="store_true", default=None, help="stage 2: train a LoRA adapter, not the full LLM")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N optimizer steps of this invocation (checkpointed; continue with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """The preset of ``args.stage`` with every given flag applied."""
    import torch

    from facephi.train.presets import TrainConfig, preset

    name = args.preset or ("paper" if torch.cuda.is_available() else "cpu")
    config = preset(name, args.stage)
    fields = [f for f, *_ in _OVERRIDES.values()] + [f for f, _ in _LIMITS.values()]
    changes = {f: getattr(args, f) for f in fields + ["scheduler", "mixed_precision", "lora"]}
    limits = {f: None for f, v in changes.items() if v is _UNLIMITED}
    config = config.override(**{f: v for f, v in changes.items() if v is not _UNLIMITED})
    return TrainConfig(**{**dataclasses.asdict(config), **limits}), name


def run(args: argparse.Namespace) -> int:
    from facephi.train.runner import run_stage
    from facephi.utils.errors import FacePhiError

    if args.stop_after is not None and args.stop_after < 1:
        raise FacePhiError(f"--stop-after must be >= 1, got {args.stop_after}")
    config, preset_name = resolve_config(args)
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun / accelerate launch set RANK
    if main_process:
        print(f"facephi train: stage {config.stage}, preset {preset_name}, batch {config.batch_size} "
              f"(x{config.grad_accum} accumulation), lr {config.lr:g}, {config.epochs} epoch(s), "
              f"train subset {config.limit_train or 'all'} -> {args.out}")
    result = run_stage(config, args.data, args.out, encoder=args.encoder, init=args.init, llm=args.llm,
                       gguf_file=args.gguf_file, resume=args.resume, stop_after=args.stop_after,
                       progress=not args.no_progress)
    if not main_process:
        return 0
    metrics = result.metrics
    if not result.finished:
        print(f"stopped at step {result.global_step}/{result.total_steps}; continue with --resume")
        return 0
    end = metrics.get("valid_loss_end")
    print(f"done: {result.global_step} steps, {metrics['train_seconds']:.0f} s training "
          f"({metrics.get('samples_per_second') or 0:.1f} samples/s)"
          + (f", valid loss {metrics['valid_loss_start']:.4f} -> {end:.4f}" if end is not None else "")
          + f"; model in {result.final_dir}")
    return 0

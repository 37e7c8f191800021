"""`facephi train`: stage 1 (projector) or stage 2 (LLM) training of FacePhi.

Examples::

    facephi train --stage 1 --encoder runs/align --data data/ferplus --out runs/stage1
    facephi train --stage 2 --init runs/stage1/final --data data/ferplus --out runs/stage2
    accelerate launch --num_processes 4 -m facephi.cli train --stage 2 ... --preset paper

The hyper-parameters start from --preset (facephi.presets.STAGE_PRESETS) and every flag below
changes one of them.
"""

from __future__ import annotations

import argparse
import os

from facephi.cli import add_progress_flag
from facephi.config import add_arguments, from_args
from facephi.train.config import TrainCommand, TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the projector (stage 1) or the LLM (stage 2)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, TrainCommand)
    add_arguments(p.add_argument_group("hyper-parameters"), TrainConfig, default_note="from --preset")
    add_progress_flag(p)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> tuple[TrainCommand, TrainConfig, str]:
    """The command's settings, its stage preset with every given flag applied, and the preset's name."""
    command = from_args(TrainCommand, args)
    name = command.preset
    if name is None:
        import torch

        name = "paper" if torch.cuda.is_available() else "cpu"
    return command, from_args(TrainConfig, args, base=TrainConfig.for_preset(name, command.stage)), name


def run(args: argparse.Namespace) -> int:
    from facephi.train.runner import run_stage

    command, config, preset_name = resolve_config(args)
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun / accelerate launch set RANK
    if main_process:
        print(f"facephi train: stage {config.stage}, preset {preset_name}, batch {config.batch_size} "
              f"(x{config.grad_accum} accumulation), lr {config.lr:g}, {config.epochs} epoch(s), "
              f"train subset {config.limit_train or 'all'} -> {command.out}")
    result = run_stage(config, command.data, command.out, encoder=command.encoder, init=command.init,
                       llm=command.llm, gguf_file=command.gguf_file, max_length=command.max_length,
                       resume=command.resume, stop_after=command.stop_after, progress=args.progress)
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

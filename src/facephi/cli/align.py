"""`facephi align`: train the landmark encoder (ULIP/CLIP feature alignment or classification)."""

from __future__ import annotations

import argparse

from facephi.cli import add_progress_flag
from facephi.config import add_arguments, given
from facephi.presets import ENCODER_PRESETS
from facephi.train.config import AlignConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="train the landmark encoder (feature alignment or classification)",
        description=(
            "Train the PointMLP landmark encoder on an extracted landmark set. "
            "--objective align (default): CLIP contrastive loss against frozen class-caption "
            "embeddings (paper section 3.3); --objective classify: cross-entropy (the paper's "
            "ablation encoder). The best epoch by Valid is saved in OUT, the latest in OUT/last."
        ),
    )
    p.add_argument("--preset", choices=tuple(ENCODER_PRESETS), default="paper",
                   help="starting settings (facephi.presets.ENCODER_PRESETS); the flags below change them "
                        "(default: paper, whose values the defaults below show)")
    add_arguments(p, AlignConfig)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.train.align import train_encoder

    config = AlignConfig.for_preset(args.preset, **given(args, AlignConfig))
    metrics = train_encoder(config, progress=args.progress)
    best, test = metrics["best"], metrics["test"]
    head = "zero-shot" if config.objective == "align" else "classifier"
    print(f"best epoch {best['epoch']} (valid {config.select_metric} {best['valid'][config.select_metric]:.4f})")
    print(f"test {head}: accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f}; "
          f"linear probe: accuracy {test['probe_accuracy']:.4f}, balanced {test['probe_balanced_accuracy']:.4f}")
    print(f"checkpoint: {config.out}  (metrics.json, run.json; resumable state in {config.out}/checkpoints)")
    return 0

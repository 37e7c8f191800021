"""`facephi align`: train the landmark encoder (ULIP/CLIP feature alignment or classification)."""

from __future__ import annotations

import argparse
import json

from facephi.landmarks.augment import AUGMENTATIONS
from facephi.train.align_options import CLASS_WEIGHTS, ENCODERS, LR_SCHEDULES, OBJECTIVES, SELECT_METRICS


def _encoder_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


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
    p.add_argument("--data", required=True, help="landmark set folder (facephi extract output)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--objective", choices=OBJECTIVES, default="align")
    p.add_argument("--encoder", choices=ENCODERS, default="pointmlp")
    p.add_argument("--encoder-option", type=_encoder_option, action="append", default=[], metavar="KEY=VALUE",
                   help="override a PointMLPConfig field, JSON value (e.g. k_neighbors=[16,16,16,16])")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="none",
                   help="cross-entropy class weights (classify only): balanced = inverse class frequency, "
                        "sqrt = its square root")
    p.add_argument("--limit-train", type=int, default=None, metavar="N", help="random N training samples")
    p.add_argument("--limit-valid", type=int, default=None, metavar="N", help="random N validation samples")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="random N test samples")
    p.add_argument("--probe-samples", type=int, default=5000, metavar="N",
                   help="training samples for the per-epoch linear probe")
    p.add_argument("--select-metric", default="accuracy",
                   choices=SELECT_METRICS,
                   help="Valid metric that picks the best epoch")
    p.add_argument("--augment", choices=AUGMENTATIONS, default="full",
                   help="training augmentation: full = mirror, rotation, scale, jitter; mirror = the mirror only")
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="= --augment none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--text-tower", default=None, metavar="NAME_OR_PATH",
                   help="frozen text encoder for --objective align (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.model.text_tower import DEFAULT_TEXT_TOWER
    from facephi.train.align import AlignConfig, train_encoder

    config = AlignConfig(
        data=args.data, out=args.out, objective=args.objective, encoder=args.encoder,
        encoder_options=dict(args.encoder_option), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        class_weights=args.class_weights, limit_train=args.limit_train, limit_valid=args.limit_valid,
        limit_test=args.limit_test, probe_samples=args.probe_samples, augment=args.augment, seed=args.seed,
        threads=args.threads,
        text_tower=args.text_tower or DEFAULT_TEXT_TOWER, select_metric=args.select_metric,
        resume=args.resume, overwrite=args.overwrite,
    )
    metrics = train_encoder(config)
    best, test = metrics["best"], metrics["test"]
    head = "zero-shot" if args.objective == "align" else "classifier"
    print(f"best epoch {best['epoch']} (valid {config.select_metric} {best['valid'][config.select_metric]:.4f})")
    print(f"test {head}: accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f}; "
          f"linear probe: accuracy {test['probe_accuracy']:.4f}, balanced {test['probe_balanced_accuracy']:.4f}")
    print(f"checkpoint: {args.out}  (metrics.json, run.json; resumable state in {args.out}/last)")
    return 0

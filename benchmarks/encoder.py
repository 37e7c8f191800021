"""Benchmark the landmark encoders on FER+ (plurality labels): chosen on Valid, reported on Test.

    python benchmarks/encoder.py --data data/ferplus --runs runs/encoders \
        --out benchmarks/results/encoder.md [facephi align options for both encoders]

Rows: (a) the aligned encoder zero-shot (nearest class caption), (b) a linear probe on the aligned
encoder's frozen 256-d features, (c) the classification-pretrained encoder, (d) logistic regression
on the flattened normalised landmarks without and with "balanced" class weights (C chosen on Valid
accuracy). Encoders are trained with ``facephi.train.align.train_encoder`` into ``RUNS/align`` and
``RUNS/classify`` (``--reuse`` scores existing checkpoints instead of training). The probes of (b)
use the per-run probe (logistic regression, C = 1, on ``--probe-samples`` training samples). Every
row is scored on the same Test samples (``--limit-test`` draws a seeded subset; the baseline is
also reported on the full Test split).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from facephi.config import add_arguments, given
from facephi.presets import ENCODER_PRESETS
from facephi.train.config import CLASS_WEIGHTS, AlignConfig


def logistic_baseline(landmark_set, indices, normalizer, Cs, seed) -> dict[str, dict]:
    """(d): logistic regression on flattened normalised landmarks, per class-weight setting."""
    from facephi.scoring.metrics import compute_metrics
    from facephi.train.probe import select_linear_probe

    def flat(split):
        idx = indices[split]
        return normalizer(landmark_set.landmarks[idx], landmark_set.sizes[idx]).reshape(len(idx), -1)

    x = {split: flat(split) for split in indices}
    y = {split: landmark_set.labels[idx] for split, idx in indices.items()}
    rows = {}
    for class_weight in (None, "balanced"):
        started = time.perf_counter()
        probe = select_linear_probe(x["train"], y["train"], x["valid"], y["valid"], Cs=Cs,
                                    class_weights=(class_weight,), seed=seed)
        seconds = time.perf_counter() - started
        rows[class_weight or "none"] = {
            "C": probe.C, "valid": probe.valid.accuracy, "seconds": seconds,
            **{split: compute_metrics(y[split], probe.predict(x[split])) for split in ("test", "test_full")},
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", required=True, help="folder for the align/ and classify/ checkpoints")
    parser.add_argument("--out", required=True, help="markdown results file")
    parser.add_argument("--reuse", action="store_true", help="score existing checkpoints, do not train")
    parser.add_argument("--preset", choices=tuple(ENCODER_PRESETS), default="cpu",
                        help="encoder preset of both encoders (facephi.presets); the flags below change it")
    add_arguments(parser, AlignConfig, exclude=("data", "out", "objective", "class_weights", "resume", "overwrite"),
                  default_note="from --preset")
    parser.add_argument("--classify-weights", default="balanced", choices=CLASS_WEIGHTS)
    parser.add_argument("--baseline-C", type=float, nargs="+", default=[0.1, 1.0])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from facephi.landmarks.store import LandmarkSet
    from facephi.model.encoder import LandmarkEncoder
    from facephi.train.align import split_indices, train_encoder

    values = {"threads": 2, **given(args, AlignConfig)}
    torch.set_num_threads(values["threads"])
    runs = Path(args.runs)
    configs = {
        objective: AlignConfig.for_preset(
            args.preset, **values, data=args.data, out=str(runs / objective), objective=objective, overwrite=True,
            class_weights=args.classify_weights if objective == "classify" else "none")
        for objective in ("align", "classify")
    }
    args.seed, args.threads = configs["align"].seed, configs["align"].threads  # for the report
    results = {}
    for objective, config in configs.items():
        if not args.reuse:
            print(f"training the {objective} encoder ...", flush=True)
            train_encoder(config)
        results[objective] = json.loads((runs / objective / "metrics.json").read_text())

    print("logistic-regression baseline ...", flush=True)
    landmark_set = LandmarkSet.load(args.data)
    indices = split_indices(landmark_set, configs["align"])
    indices["test_full"] = split_indices(landmark_set, configs["align"].replace(limit_test=None))["test"]
    indices["train"] = split_indices(landmark_set, configs["align"].replace(limit_train=None))["train"]
    indices["valid"] = split_indices(landmark_set, configs["align"].replace(limit_valid=None))["valid"]
    normalizer = LandmarkEncoder.from_pretrained(runs / "align").normalizer
    baseline = logistic_baseline(landmark_set, indices, normalizer, args.baseline_C, args.seed)

    write_report(Path(args.out), args, results, baseline, {k: len(v) for k, v in indices.items()}, runs)
    print(Path(args.out).read_text())
    return 0


def _settings(info: dict) -> str:
    """One line describing how an encoder was trained, from its ``run.json``."""
    config, sizes = info["settings"]["align"], info["split_sizes"]
    weights = f", {config['class_weights']} class weights" if config["objective"] == "classify" else ""
    return (f"encoder {config['encoder']} {json.dumps(config['encoder_options'])}, AdamW lr {config['lr']:g} "
            f"({config['lr_schedule']}), {config['epochs']} epoch(s) over {sizes['train']} training faces, "
            f"batch {config['batch_size']}, augmentation "
            f"{config['augment']}{weights}; "
            f"epoch chosen on {sizes['valid']} Valid faces")


def write_report(path: Path, args, results: dict, baseline: dict, sizes: dict, runs: Path) -> None:
    from facephi.utils.io import write_text

    align, classify = results["align"], results["classify"]

    def enc_row(name, metrics, acc_key, bal_key):
        hist = metrics["history"]
        seconds = sum(r["train_seconds"] for r in hist)
        rate = np.mean([r["samples_per_second"] for r in hist])
        return (f"| {name} | {metrics['test'][acc_key]:.3f} | {metrics['test'][bal_key]:.3f} | "
                f"{seconds / 60:.1f} min ({len(hist)} ep.) | {rate:.1f} |")

    def lr_row(name, row, split):
        return (f"| {name} (C={row['C']:g}) | {row[split].accuracy:.3f} | {row[split].balanced_accuracy:.3f} | "
                f"{row['seconds']:.0f} s (grid) | – |")

    run_info = {objective: json.loads((runs / objective / "run.json").read_text())
                for objective in ("align", "classify")}
    lines = [
        "# Landmark encoder benchmark on FER+",
        "",
        f"Command: `python benchmarks/encoder.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch threads = {args.threads}; torch {run_info['align']['versions'].get('torch')}.",
        f"Samples: train {sizes['train']}, valid {sizes['valid']}, test {sizes['test']} of {sizes['test_full']} "
        "(the encoders' own training and selection sizes are in their settings below).",
        "",
        "Settings versus the paper (AdamW, lr 2e-5, 20 epochs, batch 64, full PointMLP, full data), as each "
        "encoder's `run.json` records them (every deviation is forced by the CPU budget, see the notes below):",
        "",
        *[f"- {objective}: {_settings(info)}" for objective, info in run_info.items()],
        "",
        "Test accuracy and balanced accuracy (macro recall); epochs / C chosen on Valid.",
        "",
        "| model | accuracy | balanced acc. | training time | train samples/s |",
        "|---|---|---|---|---|",
        enc_row("(a) aligned encoder, zero-shot", align, "accuracy", "balanced_accuracy"),
        enc_row("(b) linear probe on aligned features", align, "probe_accuracy", "probe_balanced_accuracy"),
        enc_row(f"(c) classification encoder ({run_info['classify']['settings']['align']['class_weights']} class weights)",
                classify, "accuracy", "balanced_accuracy"),
        enc_row("(c') linear probe on classification features", classify, "probe_accuracy", "probe_balanced_accuracy"),
        lr_row("(d) logistic regression, flattened landmarks", baseline["none"], "test"),
        lr_row("(d) same, balanced class weights", baseline["balanced"], "test"),
        "",
        f"Baseline (d) on the full Test split ({sizes['test_full']}): "
        f"{baseline['none']['test_full'].accuracy:.3f} / {baseline['none']['test_full'].balanced_accuracy:.3f}, "
        f"balanced weights {baseline['balanced']['test_full'].accuracy:.3f} / "
        f"{baseline['balanced']['test_full'].balanced_accuracy:.3f}.",
        "",
        "Per-epoch Valid history (head accuracy / balanced / probe accuracy):",
        "",
    ]
    for name, metrics in results.items():
        for r in metrics["history"]:
            v = r["valid"]
            lines.append(f"- {name} epoch {r['epoch']}: loss {r['train_loss']:.4f}, {v['accuracy']:.3f} / "
                         f"{v['balanced_accuracy']:.3f} / {v['probe_accuracy']:.3f}, "
                         f"{r['samples_per_second']:.1f} samples/s")
    write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Time the two LLM training stages of a `facephi train` preset end to end, then score the model.

    python benchmarks/train_preset.py --data data/ferplus --encoder runs/enc/align \
        --run runs/train-cpu --out benchmarks/results/train_cpu.md [--preset cpu] [--threads 2]

Stage 1 (projector) and stage 2 (LLM) run exactly as `facephi train --preset PRESET` would, with
the embedded LLM unless `--llm` is given; each stage's wall time covers everything the command
does (loading the LLM and the data, training, the valid loss, checkpoints). The final model is
then scored on a seeded subset of Test (`--eval-limit`, keyword matching as `facephi eval`; with
`--eval-mode both` also by class scoring). On a GPU (`--preset paper` picks bf16 mixed precision
there) training and evaluation run on it; the report names the device.
A finished stage is not re-run (its recorded timing is reused), so the script continues an
interrupted measurement; the timing of a resumed stage is marked as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def timed_stages(args) -> list[dict]:
    """Run (or continue) both stages into ``RUN/stage{1,2}``; return each stage's timing record.

    A stage's timing is written to ``RUN/stage{N}_timing.json`` as soon as it finishes; a stage
    finished by an earlier call keeps the timing recorded then.
    """
    from facephi.train.config import TrainConfig
    from facephi.train.runner import StageRun, run_both_stages
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import read_json, write_json

    def configs(stage: int):
        overrides = {"limit_train": args.limit_train, "grad_accum": args.grad_accum, "epochs": args.epochs}
        changes = {key: value for key, value in overrides.items() if value is not None}
        return TrainConfig.for_preset(args.preset, stage, threads=args.threads, seed=args.seed, **changes)

    def record_timing(run: StageRun) -> None:
        timing_path = Path(args.run) / f"stage{run.stage}_timing.json"
        if run.seconds is None and timing_path.is_file():
            return
        if run.seconds is None:
            raise FacePhiError(f"{run.run_dir}: finished earlier but {timing_path} is missing; "
                             "its time cannot be reported (remove the run to measure it again)")
        metrics = read_json(run.run_dir / "metrics.json")
        write_json(timing_path, {
            "stage": run.stage, "command_seconds": run.seconds, "resumed": run.resumed,
            "train_seconds": metrics.get("train_seconds"), "samples_seen": metrics.get("samples_seen"),
            "samples_per_second": metrics.get("samples_per_second"), "config": run.config.to_dict()})

    run_both_stages(configs, args.data, args.run, encoder=args.encoder, llm=args.llm,
                    progress=not args.no_progress, on_stage_done=record_timing)
    return [read_json(Path(args.run) / f"stage{stage}_timing.json") for stage in (1, 2)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="extracted landmark set")
    parser.add_argument("--encoder", required=True, help="landmark encoder checkpoint (facephi align)")
    parser.add_argument("--run", required=True, help="folder for the two stage runs")
    parser.add_argument("--out", required=True, help="markdown results file")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "paper"))
    parser.add_argument("--llm", default=None, help="LLM name or path (default: embedded SmolLM2)")
    parser.add_argument("--limit-train", type=int, default=None, help="override the preset's subset size")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (both stages)")
    parser.add_argument("--grad-accum", type=int, default=None,
                        help="override the preset's micro-batches per step (1 for small LLMs on a GPU)")
    parser.add_argument("--eval-limit", type=int, default=1000, help="Test faces to score (0: all)")
    parser.add_argument("--eval-mode", default="generate", choices=("generate", "score", "both"))
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="evaluation device (auto: cuda when available)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from facephi.eval.evaluate import EvalResult, evaluate_model
    from facephi.landmarks.store import LandmarkSet
    from facephi.model.facephi import FacePhiModel
    from facephi.model.precision import resolve_device
    from facephi.train.stages import FINAL_DIR
    from facephi.utils.io import write_text

    device = resolve_device(args.device)  # a wrong --device fails before any training
    torch.set_num_threads(args.threads)
    stage1, stage2 = timed_stages(args)

    eval_dir = Path(args.run) / "eval"
    result = EvalResult.load_if_finished(eval_dir)
    if result is None:
        model = FacePhiModel.from_pretrained(Path(args.run) / "stage2" / FINAL_DIR).to(device)
        result = evaluate_model(model, LandmarkSet.load(args.data), split="test", batch_size=args.eval_batch_size,
                                limit=args.eval_limit or None, seed=args.seed, mode=args.eval_mode,
                                out_dir=eval_dir, progress=not args.no_progress)
    metrics = result.metrics.to_dict()

    total = stage1["command_seconds"] + stage2["command_seconds"]
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    lines = [
        f"# `facephi train --preset {args.preset}`: stage 1 + stage 2, timed end to end",
        "",
        f"Command: `python benchmarks/train_preset.py {' '.join(argv)}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads = {args.threads}"
        f"{gpu}; torch {torch.__version__}. LLM: {args.llm or 'embedded SmolLM2-135M-Instruct'}; "
        f"encoder: `{args.encoder}`.",
        "",
        "| stage | training samples | settings | command wall time | training loop | samples/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for record in (stage1, stage2):
        config = record["config"]
        lines.append(
            f"| {record['stage']}{' (resumed)' if record['resumed'] else ''} | {record['samples_seen']} | "
            f"batch {config['batch_size']}, {config['epochs']} epoch(s), lr {config['lr']:g} | "
            f"{record['command_seconds'] / 60:.1f} min | {record['train_seconds'] / 60:.1f} min | "
            f"{record['samples_per_second']:.2f} |")
    lines += [
        f"| **both** | | | **{total / 60:.1f} min** | | |",
        "",
        f"Final model on {metrics.get('n')} Test faces (keyword matching, greedy): accuracy "
        f"{100 * metrics['accuracy']:.1f} %, macro recall {100 * metrics['balanced_accuracy']:.1f} %, "
        f"macro-F1 {100 * metrics['macro_f1']:.1f} %, answers naming no emotion "
        f"{100 * metrics['miss_rate']:.1f} %; evaluation {result.seconds / 60:.1f} min on {device}.",
        "",
        *_scoring_lines({**metrics, **result.extra}),
        "Stage settings (resolved):",
        "",
        "```json",
        json.dumps({"stage1": stage1["config"], "stage2": stage2["config"]}, indent=2),
        "```",
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print(Path(args.out).read_text())
    return 0


def _scoring_lines(metrics: dict) -> list[str]:
    """The class-scoring figures of an ``--eval-mode score|both`` evaluation (none otherwise)."""
    from facephi.eval.report import scoring_summary

    if "score" not in metrics:
        return []
    lines = [f"Class scoring (argmax of the 8 answer likelihoods): {scoring_summary(metrics['score'])}."]
    if "agreement" in metrics:
        lines[0] += f" Generated and scored class agree on {100 * metrics['agreement']:.1f} % of the faces."
    return [*lines, ""]


def cli(argv: list[str] | None = None) -> int:
    """``main`` with facephi's input errors as one line on stderr and exit status 2."""
    from facephi.utils.errors import FacePhiError

    try:
        return main(argv)
    except FacePhiError as exc:
        print(f"train_preset.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())

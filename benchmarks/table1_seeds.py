"""Table 1's central claim re-tested: classification-encoder LLM (b) vs aligned-encoder LLM (c), several seeds.

    python benchmarks/table1_seeds.py --data data/ferplus --aligned runs/ship/encoder \\
        --classify runs/table1/encoder-classify --runs runs/table1 --seeds 0 1 2 \\
        --out benchmarks/results/table1_seeds_ferplus_cpu.md

Both encoders are given (trained beforehand with the same recipe, only ``--objective`` differs).
For every seed and encoder the script runs, in order and each only if its result is missing:
``facephi train --stage 1`` (projector), ``facephi train --stage 2`` (the LLM too, full fine-tuning
as in the paper) and ``facephi eval --split test`` on all of Test; an interrupted step is resumed
(``--resume``). Seeds go first, so that a stopped queue leaves whole (b)/(c) pairs. ``--report-only``
skips the training and writes the table from the finished evaluations.

The table: per run, accuracy and macro recall with 95 % bootstrap intervals over the Test faces;
per row, the mean over seeds with a 95 % t-interval over seeds (training variation); the paired
difference (c) − (b) per seed and averaged over seeds, with a paired bootstrap interval (the same
resampled faces for every run) and the t-interval over seeds. The verdict says "aligned helps"
only where both intervals of the seed-averaged difference lie above zero (with one seed: the
bootstrap interval alone).
Printed at the end: ``diff_accuracy=``, ``diff_macro_recall=`` (seed-averaged (c) − (b)).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROWS = {"classify": "(b) classification PointMLP + LLM", "align": "(c) FacePhi: aligned PointMLP + LLM"}
METRICS = {"accuracy": "accuracy", "balanced_accuracy": "macro recall"}
RESAMPLES = 1000


@dataclass
class Run:
    """One (encoder, seed) pair of the queue and its folders."""

    objective: str
    seed: int
    encoder: Path
    folder: Path

    @property
    def stage1(self) -> Path:
        return self.folder / "s1"

    @property
    def stage2(self) -> Path:
        return self.folder / "s2"

    @property
    def evaluation(self) -> Path:
        return self.folder / "eval-test"


def plan(args: argparse.Namespace) -> list[Run]:
    encoders = {"classify": args.classify, "align": args.aligned}
    return [Run(objective, seed, encoders[objective], args.runs / f"{objective}-seed{seed}")
            for seed in args.seeds for objective in ROWS]


def commands(run: Run, args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    """The steps of ``run``: (file that marks the step done, command)."""
    common = ["--data", str(args.data), "--preset", "cpu", "--limit-train", str(args.limit_train),
              "--seed", str(run.seed), "--threads", str(args.threads), "--resume", "--no-progress"]
    return [
        (run.stage1 / "final" / "config.json",
         ["facephi", "train", "--stage", "1", "--encoder", str(run.encoder), "--out", str(run.stage1), *common]),
        (run.stage2 / "final" / "config.json",
         ["facephi", "train", "--stage", "2", "--init", str(run.stage1 / "final"), "--out", str(run.stage2),
          *common]),
        (run.evaluation / "metrics.json",
         ["facephi", "eval", "--model", str(run.stage2 / "final"), "--data", str(args.data), "--split", "test",
          "--limit", "all", "--mode", "score", "--precision", args.precision, "--threads", str(args.threads),
          "--out", str(run.evaluation), "--no-progress"]),
    ]


def execute(runs: list[Run], args: argparse.Namespace) -> None:
    for run in runs:
        for done, command in commands(run, args):
            if done.is_file():
                continue
            print("+ " + " ".join(command), flush=True)
            subprocess.run(command, check=True)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (seeds); None for a single value."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean = float(np.mean(values))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean - half, mean + half


def load(run: Run) -> dict[str, Any]:
    """Truth, sample indices and scoring predictions of a finished evaluation, with its metrics."""
    from facephi.eval.results import EvalResult
    from facephi.scoring.metrics import compute_metrics
    from facephi.utils.errors import FacePhiError

    result = EvalResult.load(run.evaluation)
    probs = result.class_probabilities()
    if probs is None:
        raise FacePhiError(f"{run.evaluation}: not a class-scoring evaluation (no class probabilities)")
    truth, pred = result.truth(), probs.argmax(axis=1)
    return {"truth": truth, "index": [r["index"] for r in result.records], "pred": pred,
            "metrics": compute_metrics(truth, pred, bootstrap=RESAMPLES)}


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def interval(pair: tuple[float, float] | list[float] | None) -> str:
    return "[–]" if pair is None else f"[{pct(pair[0])}, {pct(pair[1])}]"


def build(runs: list[Run], args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    from facephi.labels import CLASSES
    from facephi.scoring.metrics import percentile_interval, resampled_rates

    finished = {(r.objective, r.seed): load(r) for r in runs if (r.evaluation / "metrics.json").is_file()}
    seeds = [s for s in args.seeds if all((o, s) in finished for o in ROWS)]
    lines = ["# Table 1 re-tested: classification vs aligned encoder inside the LLM, several seeds", "",
             f"`python benchmarks/table1_seeds.py --data {args.data} --aligned {args.aligned} --classify "
             f"{args.classify} --runs {args.runs} --seeds {' '.join(map(str, args.seeds))} --limit-train "
             f"{args.limit_train} --precision {args.precision}`", "",
             f"Each run: stage 1 and stage 2 (full fine-tuning) of the `cpu` preset on a class-balanced "
             f"{args.limit_train}-face Train subset (the `facephi reproduce --preset cpu` budget), then class "
             f"scoring (argmax of the 8 answer likelihoods, `facephi eval --mode score`, {args.precision}) on "
             f"all of FER+ Test. The seed changes the LLM stages (data order, instruction draws, projector "
             f"initialisation); the two encoders are fixed.", ""]
    for objective, encoder in (("classify", args.classify), ("align", args.aligned)):
        path = encoder / "metrics.json"
        if path.is_file():
            test = json.loads(path.read_text(encoding="utf-8")).get("test", {})
            lines.append(f"- {ROWS[objective]}: encoder `{encoder}` on its own (Test): accuracy "
                         f"{pct(test['accuracy'])} %, macro recall {pct(test['balanced_accuracy'])} %.")
        else:
            lines.append(f"- {ROWS[objective]}: encoder `{encoder}` (no metrics.json: its own accuracy unknown).")
    lines += ["", "| row | seed | Test accuracy % (95 % CI) | Test macro recall % (95 % CI) | macro-F1 % |",
              "|---|---:|---|---|---:|"]
    for run in runs:
        found = finished.get((run.objective, run.seed))
        if found is None:
            lines.append(f"| {ROWS[run.objective]} | {run.seed} | not run (no {run.evaluation}/metrics.json) | | |")
            continue
        m = found["metrics"]
        lines.append(f"| {ROWS[run.objective]} | {run.seed} | {pct(m.accuracy)} {interval(m.intervals['accuracy'])} "
                     f"| {pct(m.balanced_accuracy)} {interval(m.intervals['balanced_accuracy'])} "
                     f"| {pct(m.macro_f1)} |")
    summary: dict[str, float] = {}
    if not seeds:
        lines += ["", "No seed has both rows finished: no comparison yet."]
        return "\n".join(lines) + "\n", summary
    truth = finished[("align", seeds[0])]["truth"]
    for objective in ROWS:
        for seed in seeds:
            other = finished[(objective, seed)]
            if other["index"] != finished[("align", seeds[0])]["index"]:
                raise ValueError(f"{objective} seed {seed} was evaluated on other Test faces than align seed "
                                 f"{seeds[0]}: the paired comparison needs the same faces in the same order")
    rates = resampled_rates(truth, [finished[(o, s)]["pred"] for o in ROWS for s in seeds], len(CLASSES), RESAMPLES)
    per_row = {o: rates[i * len(seeds):(i + 1) * len(seeds)] for i, o in enumerate(ROWS)}
    lines += ["", f"Over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): mean, 95 % t-interval over seeds "
              f"(training variation), and the paired bootstrap interval over the same resampled Test faces "
              f"({RESAMPLES} resamples; face sampling).", "",
              "| | " + " | ".join(f"{label}: mean [t over seeds] [bootstrap]" for label in METRICS.values()) + " |",
              "|---|" + "---|" * len(METRICS)]
    verdicts = []
    for label, keep in ((ROWS["classify"], "classify"), (ROWS["align"], "align"), ("(c) − (b)", None)):
        cells = []
        for key in METRICS:
            def value(o: str, s: int) -> float:
                return getattr(finished[(o, s)]["metrics"], key)

            if keep is None:
                per_seed = np.array([value("align", s) - value("classify", s) for s in seeds])
                boot = np.mean([a[key] - b[key] for a, b in zip(per_row["align"], per_row["classify"])], axis=0)
            else:
                per_seed = np.array([value(keep, s) for s in seeds])
                boot = np.mean([r[key] for r in per_row[keep]], axis=0)
            t_low_high, b_low_high = t_interval(per_seed), percentile_interval(boot)
            cells.append(f"{'+' if keep is None and per_seed.mean() >= 0 else ''}{pct(per_seed.mean())} "
                         f"{interval(t_low_high)} {interval(b_low_high)}")
            if keep is None:
                summary[key] = float(per_seed.mean())
                low = b_low_high[0] if t_low_high is None else max(t_low_high[0], b_low_high[0])
                high = b_low_high[1] if t_low_high is None else min(t_low_high[1], b_low_high[1])
                verdicts.append((METRICS[key], per_seed, low, high))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, per_seed, low, high in verdicts:
        signs = ", ".join(f"{'+' if d >= 0 else ''}{pct(d)}" for d in per_seed)
        both = "both intervals" if len(seeds) > 1 else "the bootstrap interval (one seed: no t-interval)"
        if low > 0:
            word = f"the aligned encoder helps ({both} above 0)"
        elif high < 0:
            word = f"the classification encoder is better ({both} below 0)"
        else:
            word = "no difference that the seeds and faces can resolve (an interval contains 0)"
        lines.append(f"- **{name}**: (c) − (b) per seed {signs} points: {word}.")
    if len(seeds) < len(args.seeds):
        lines.append(f"- Only {len(seeds)} of {len(args.seeds)} seeds finished.")
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="extracted landmark set")
    parser.add_argument("--aligned", type=Path, required=True, help="aligned encoder (facephi align --objective align)")
    parser.add_argument("--classify", type=Path, required=True, help="classification encoder (--objective classify)")
    parser.add_argument("--runs", type=Path, required=True, help="folder of the runs (one sub-folder per encoder+seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit-train", type=int, default=2000, help="class-balanced Train faces per LLM stage")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="of the scoring")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="write the table from finished evaluations")
    parser.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    args = parser.parse_args(argv)
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import write_text

    problems = [f"{flag} {path}: not a folder with config.json" for flag, path in
                (("--aligned", args.aligned), ("--classify", args.classify)) if not (path / "config.json").is_file()]
    if not (args.data / "manifest.json").is_file():
        problems.append(f"--data {args.data}: no manifest.json (run facephi extract first)")
    if len(set(args.seeds)) != len(args.seeds) or args.limit_train < 1:
        problems.append("--seeds must be distinct and --limit-train >= 1")
    if problems:
        print("table1_seeds: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    runs = plan(args)
    try:
        if not args.report_only:
            execute(runs, args)
        text, summary = build(runs, args)
    except subprocess.CalledProcessError as exc:
        print(f"table1_seeds: error: step failed (exit {exc.returncode}): {' '.join(exc.cmd)}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, FacePhiError) as exc:
        print(f"table1_seeds: error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        write_text(args.out, text)
    print(text if args.out is None else f"wrote {args.out}")
    for key, value in summary.items():
        print(f"diff_{'macro_recall' if key == 'balanced_accuracy' else key}={value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The accuracy-lever table: one row per lever, Valid for choosing, all of Test with 95 % intervals.

    python benchmarks/levers.py --spec benchmarks/levers.json --out benchmarks/results/levers_ferplus.md

``--spec`` lists the rows (see ``benchmarks/levers.json``): each names its training command, its run
folder and two finished ``facephi eval`` folders, ``valid`` (class scoring on Valid, what a lever is
chosen on) and ``test`` (all of Test; class scoring, and the answers in words where the evaluation
generated them). A row whose folders are missing, or that says ``not_run``, is printed with the
reason: no row is dropped. Intervals: percentile bootstrap over the evaluated faces (1,000 resamples,
seed 0), recomputed from ``predictions.jsonl`` so that older evaluations get them too.

Printed at the end: ``best_valid=<row name>`` (among the rows run, the one whose Valid class scoring
comes nearest the target on both figures at once: the highest min(accuracy / 0.72, macro recall /
0.56)) and its Test figures as ``best_test_accuracy=`` / ``best_test_macro_recall=``. Each row with
class probabilities gets a second, prior-corrected row: the same model's scores with the mean Valid
probabilities divided out (``facephi eval --prior-correction``), computed here from the stored scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESAMPLES = 1000
TARGET = {"accuracy": 0.72, "balanced_accuracy": 0.56}
"""The issue's target on all of FER+ Test, for one model at once."""


def figures(folder: Path) -> dict[str, Any]:
    """Metrics with intervals of a finished evaluation: ``score`` (argmax of the class probabilities,
    kept as ``probs`` with the labels ``truth``) and, where answers were generated, ``answer``
    (keyword matching); plus n and seconds."""
    from facephi.eval.results import EvalResult
    from facephi.scoring.metrics import compute_metrics

    result = EvalResult.load(folder)
    truth, probs, answered = result.truth(), result.class_probabilities(), result.answered()
    out: dict[str, Any] = {"n": len(truth), "seconds": result.seconds, "truth": truth}
    if probs is not None:
        out["probs"] = probs
        out["score"] = compute_metrics(truth, probs.argmax(axis=1), bootstrap=RESAMPLES)
    if answered is not None:
        out["answer"] = compute_metrics(truth, answered, bootstrap=RESAMPLES)
    return out


def prior_corrected(fig: dict[str, Any], prior: np.ndarray) -> Any:
    """Metrics of the argmax of ``fig``'s class probabilities with ``prior`` divided out."""
    from facephi.scoring.calibration import adjust_by_prior
    from facephi.scoring.metrics import compute_metrics

    return compute_metrics(fig["truth"], adjust_by_prior(fig["probs"], prior).argmax(axis=1), bootstrap=RESAMPLES)


def cell(metrics: Any, key: str, interval: bool = True) -> str:
    if metrics is None:
        return "–"
    value = 100 * getattr(metrics, key)
    if not interval or not metrics.intervals:
        return f"{value:.1f}"
    low, high = (100 * v for v in metrics.intervals[key])
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def target_progress(metrics: Any) -> tuple[float, float]:
    """How near ``metrics`` come to :data:`TARGET` on both figures at once: the smaller of the two
    ratios figure / target (then the larger, to break ties)."""
    ratios = sorted(getattr(metrics, key) / goal for key, goal in TARGET.items())
    return ratios[0], ratios[1]


def row_line(name: str, lever: str, valid: Any, test: dict[str, Any], time: str) -> str:
    return (f"| {name} | {lever} | {cell(valid, 'accuracy', False)} / {cell(valid, 'balanced_accuracy', False)} "
            f"| {cell(test.get('score'), 'accuracy')} | {cell(test.get('score'), 'balanced_accuracy')} "
            f"| {cell(test.get('answer'), 'accuracy')} | {cell(test.get('answer'), 'balanced_accuracy')} | {time} |")


def wall_time(run: Path) -> str:
    path = run / "metrics.json"
    if not path.is_file():
        return "–"
    seconds = json.loads(path.read_text(encoding="utf-8")).get("wall_seconds")
    return "–" if not seconds else f"{seconds / 60:.0f} min"


def build(spec: dict[str, Any], root: Path) -> tuple[str, dict[str, Any]]:
    lines = [f"# {spec['title']}", "", spec.get("base", ""), "",
             "Scoring = argmax of the 8 class probabilities (likelihood of each class's answer); answers = the "
             "generated answer in words, keyword matching (the paper's metric; only where that evaluation "
             "generated). Percent, with 95 % bootstrap intervals over the Test faces.", "",
             "| row | lever | Valid scoring acc / macro recall | Test scoring accuracy | Test scoring macro recall "
             "| Test answers accuracy | Test answers macro recall | stage-2 time |",
             "|---|---|---|---|---|---|---|---|"]
    measured: dict[str, Any] = {}
    notes: list[str] = []
    for row in spec["rows"]:
        name, lever = row["name"], row.get("lever", "")
        if "not_run" in row:
            lines.append(f"| {name} | {lever} | not run: {row['not_run']} | | | | | |")
            continue
        missing = [key for key in ("valid", "test") if not (root / row[key] / "metrics.json").is_file()]
        if missing:
            lines.append(f"| {name} | {lever} | not run: no finished {' / '.join(missing)} evaluation "
                         f"({', '.join(row[k] for k in missing)}) | | | | | |")
            continue
        valid, test = figures(root / row["valid"]), figures(root / row["test"])
        measured[name] = {"valid": valid, "test": test}
        lines.append(row_line(name, lever, valid.get("score"), test, wall_time(root / row["run"])))
        if "probs" in valid and "probs" in test:
            from facephi.scoring.calibration import estimate_prior

            prior = estimate_prior(valid["probs"])  # the mean Valid probabilities, as `eval --prior-from`
            corrected = f"{name}, prior-corrected scoring"
            measured[corrected] = {"valid": {**valid, "score": prior_corrected(valid, prior)},
                                   "test": {**test, "score": prior_corrected(test, prior), "answer": None}}
            lines.append(row_line(corrected, "class balance at scoring (logit adjustment by the Valid prior)",
                                  measured[corrected]["valid"]["score"], measured[corrected]["test"], "same model"))
        notes.append(f"- **{name}**: `{row['command']}`; Valid n = {valid['n']}, Test n = {test['n']}.")
    best = None
    if measured:
        best = max(measured, key=lambda k: target_progress(measured[k]["valid"]["score"]))
    lines += ["", "Commands (each followed by `facephi eval --model RUN/final --data data/ferplus --split valid "
              "--limit 1000 --mode score` and `--split test --mode score`, or `--mode both`):", "", *notes, ""]
    summary: dict[str, Any] = {"best": best}
    if best is not None:
        test = measured[best]["test"]
        reading = "answer" if test.get("answer") is not None else "score"
        metrics = test[reading]
        summary.update(reading=reading, accuracy=metrics.accuracy, balanced_accuracy=metrics.balanced_accuracy)
        met = all(getattr(metrics, key) >= goal for key, goal in TARGET.items())
        gaps = ("met" if met else
                f"NOT met: short by {max(0.0, 100 * (TARGET['accuracy'] - metrics.accuracy)):.1f} points of accuracy "
                f"and {max(0.0, 100 * (TARGET['balanced_accuracy'] - metrics.balanced_accuracy)):.1f} of macro recall")
        lines.append(f"Chosen on Valid (class scoring closest to the target: the highest min(accuracy / "
                     f"{TARGET['accuracy']}, macro recall / {TARGET['balanced_accuracy']})): **{best}**. On Test "
                     f"({'answers in words' if reading == 'answer' else 'class scoring'}): accuracy "
                     f"{100 * metrics.accuracy:.1f} %, macro recall {100 * metrics.balanced_accuracy:.1f} %. "
                     f"Target (accuracy ≥ {100 * TARGET['accuracy']:.0f} % and macro recall ≥ "
                     f"{100 * TARGET['balanced_accuracy']:.0f} % at once): {gaps}.")
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "benchmarks" / "levers.json", help="rows (JSON)")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder the spec's paths are relative to")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import write_text

    try:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        text, summary = build(spec, args.root)
    except (OSError, ValueError, KeyError, FacePhiError) as exc:
        print(f"levers: error: {args.spec}: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        write_text(args.out, text)
    else:
        print(text)
    if summary["best"] is not None:
        print(f"best_valid={summary['best']}")
        print(f"best_test_accuracy={summary['accuracy']:.4f}")
        print(f"best_test_macro_recall={summary['balanced_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

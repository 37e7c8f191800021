"""The accuracy-lever table: one row per lever, Valid for choosing, all of Test with 95 % intervals.

    python benchmarks/levers.py --spec benchmarks/levers.json --out benchmarks/results/levers_ferplus.md

``--spec`` lists the rows (see ``benchmarks/levers.json``): each names its training command, its run
folder and two finished ``facephi eval`` folders, ``valid`` (class scoring on Valid, what a lever is
chosen on) and ``test`` (all of Test; class scoring, and the answers in words where the evaluation
generated them), and optionally ``webdev``: the finished web-dev evaluation of ``benchmarks/webdev.py``
(every photo, one without a face counted as a wrong answer); a row without one says "not measured".
A row whose folders are missing, or that says ``not_run``, is printed with the reason: no row is
dropped.

    python benchmarks/levers.py --update benchmarks/results/levers_ferplus.md

refreshes only the web-dev columns of an existing table from the rows' ``webdev`` folders, leaving
every FER+ figure as it is (for a machine that holds the web-dev evaluations but not the FER+ ones). Intervals: percentile bootstrap over the evaluated faces (1,000 resamples,
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


NOT_MEASURED = "not measured"
WEBDEV_HEADERS = ("web-dev answers acc / macro recall", "web-dev scoring acc / macro recall")


def webdev_figures(folder: Path, prior: np.ndarray | None = None) -> dict[str, Any]:
    """All-photo metrics of a finished web-dev evaluation (a photo without a face counts as a wrong
    answer): ``answer`` and ``score``; with ``prior``, ``score`` is the prior-corrected argmax."""
    from facephi.eval.results import EvalResult

    result = EvalResult.load(folder)
    if prior is not None:
        return {"answer": None, "score": None if result.class_probabilities() is None else result.rescored(prior)}
    readings = result.readings()
    return {"answer": readings.get("answers"), "score": readings.get("score")}


def webdev_cells(web: dict[str, Any] | None) -> list[str]:
    if web is None:
        return [NOT_MEASURED, NOT_MEASURED]
    return [NOT_MEASURED if web.get(key) is None else
            f"{cell(web[key], 'accuracy')} / {cell(web[key], 'balanced_accuracy')}" for key in ("answer", "score")]


def row_line(name: str, lever: str, valid: Any, test: dict[str, Any], time: str,
             web: dict[str, Any] | None = None) -> str:
    return (f"| {name} | {lever} | {cell(valid, 'accuracy', False)} / {cell(valid, 'balanced_accuracy', False)} "
            f"| {cell(test.get('score'), 'accuracy')} | {cell(test.get('score'), 'balanced_accuracy')} "
            f"| {cell(test.get('answer'), 'accuracy')} | {cell(test.get('answer'), 'balanced_accuracy')} "
            f"| {' | '.join(webdev_cells(web))} | {time} |")


def webdev_note(spec: dict[str, Any]) -> str:
    """The paragraph above the table about its web-dev columns (and the spec's ``webdev_note``)."""
    return ("Web-dev: every photo of the shared web-dev half (`python benchmarks/webdev.py --model MODEL`; a photo "
            "without a face counts as a wrong answer), accuracy / macro recall with 95 % intervals. "
            + spec.get("webdev_note", "")).strip()


def row_webdev(row: dict[str, Any], root: Path, prior: np.ndarray | None = None) -> dict[str, Any] | None:
    """The web-dev figures of a spec row, None where it has no finished web-dev evaluation."""
    folder = row.get("webdev")
    if not folder or not (root / folder / "metrics.json").is_file():
        return None
    return webdev_figures(root / folder, prior)


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
             webdev_note(spec), "", HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    measured: dict[str, Any] = {}
    notes: list[str] = []
    for row in spec["rows"]:
        name, lever = row["name"], row.get("lever", "")
        web = " | ".join(webdev_cells(row_webdev(row, root)))
        if "not_run" in row:
            lines.append(f"| {name} | {lever} | not run: {row['not_run']} | | | | | {web} | |")
            continue
        missing = [key for key in ("valid", "test") if not (root / row[key] / "metrics.json").is_file()]
        if missing:
            lines.append(f"| {name} | {lever} | not run: no finished {' / '.join(missing)} evaluation "
                         f"({', '.join(row[k] for k in missing)}) | | | | | {web} | |")
            continue
        valid, test = figures(root / row["valid"]), figures(root / row["test"])
        measured[name] = {"valid": valid, "test": test}
        lines.append(row_line(name, lever, valid.get("score"), test, wall_time(root / row["run"]),
                              row_webdev(row, root)))
        if "probs" in valid and "probs" in test:
            from facephi.scoring.calibration import estimate_prior

            prior = estimate_prior(valid["probs"])  # the mean Valid probabilities, as `eval --prior-from`
            corrected = f"{name}, prior-corrected scoring"
            measured[corrected] = {"valid": {**valid, "score": prior_corrected(valid, prior)},
                                   "test": {**test, "score": prior_corrected(test, prior), "answer": None}}
            lines.append(row_line(corrected, "class balance at scoring (logit adjustment by the Valid prior)",
                                  measured[corrected]["valid"]["score"], measured[corrected]["test"], "same model",
                                  row_webdev(row, root, prior)))
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


HEADER = ("| row | lever | Valid scoring acc / macro recall | Test scoring accuracy | Test scoring macro recall "
          "| Test answers accuracy | Test answers macro recall | " + " | ".join(WEBDEV_HEADERS) + " | stage-2 time |")
CORRECTED = ", prior-corrected scoring"


def update_webdev(text: str, spec: dict[str, Any], root: Path) -> str:
    """``text`` (a table written by :func:`build`, with or without web-dev columns) with its web-dev
    columns filled from the spec rows' ``webdev`` folders; every other cell kept as it is. A
    prior-corrected row needs the Valid prior, which only :func:`build` has: "not measured" here."""
    rows = {row["name"]: row for row in spec["rows"]}
    out: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("Web-dev: every photo") or (not line and number and lines[number - 1].startswith("Web-dev:")):
            continue  # written again above the header
        if not line.startswith("|"):
            out.append(line)
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "row":
            out += [webdev_note(spec), "", HEADER]
            continue
        if set(cells[0]) <= {"-"}:
            out.append("|" + "---|" * 10)
            continue
        if len(cells) not in (8, 10):
            raise ValueError(f"a table row with {len(cells)} cells, expected 8 or 10: {line[:60]}")
        name = cells[0]
        row = rows.get(name.removesuffix(CORRECTED)) if name.endswith(CORRECTED) else rows.get(name)
        if row is None:
            raise ValueError(f"table row {name!r} is not in the spec")
        web = None if name.endswith(CORRECTED) else row_webdev(row, root)
        kept = cells[:7] + [cells[-1]]
        out.append("| " + " | ".join([*kept[:7], *webdev_cells(web), kept[7]]) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "benchmarks" / "levers.json", help="rows (JSON)")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder the spec's paths are relative to")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--update", type=Path, default=None,
                        help="refresh only the web-dev columns of this existing table (written in place)")
    args = parser.parse_args(argv)
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import write_text

    try:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        if args.update is not None:
            write_text(args.update, update_webdev(args.update.read_text(encoding="utf-8"), spec, args.root))
            print(f"levers: web-dev columns of {args.update} refreshed")
            return 0
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

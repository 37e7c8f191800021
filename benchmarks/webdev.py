"""The web-dev row of any model: every photo of the shared web-dev half, as issue 20 counts it.

    facephi extract ../shared/data/webfaces-dev --out data/webfaces-dev
    python benchmarks/webdev.py --model src/facephi/models/facephi-smollm2-ferplus --out benchmarks/results/webdev.md

Runs ``facephi eval --split all --mode both`` (an encoder: its classifier) into ``--eval-dir``
(resumable; a finished evaluation there is reused when it was made with the same settings and the
same model and data content, refused otherwise) and writes, for each reading (answers in words; class
scoring; class scoring with ``--prior`` divided out where one is given, computed from the stored
class probabilities: the model is not run again), over all photos, a photo without a face counting
as a wrong answer:

* accuracy and macro recall with 95 % bootstrap intervals, per-class recall;
* how often each class is answered against its share of the photos, and issue 20's criterion
  (no class answered for more than 1.5 x its share, or for more than 5 % of the photos where its
  share is below 3 %) as pass / fail, with the target (accuracy and macro recall >= 45 %, answers
  in words) as pass / fail.

Beside the markdown, ``--out`` with ``.json``: the same figures for tables (``benchmarks/levers.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = {"accuracy": 0.45, "balanced_accuracy": 0.45}
"""Issue 20's bar on web-dev for the answers in words (moonshot: 50 / 50)."""
READING_TITLES = {"answers": "answers in words (keyword matching)", "classifier": "the encoder's classifier",
                  "score": "class scoring (argmax of the 8 class probabilities)",
                  "score_prior_corrected": "class scoring, prior divided out"}


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def with_interval(metrics: Any, key: str) -> str:
    value = percent(getattr(metrics, key))
    if not metrics.intervals or key not in metrics.intervals:
        return value
    low, high = metrics.intervals[key]
    return f"{value} [{percent(low)}, {percent(high)}]"


def reading_figures(metrics: Any) -> dict[str, Any]:
    """The JSON figures of one reading: headline metrics, intervals, per-class recall, answer shares."""
    from facephi.scoring.metrics import answer_shares

    shares = answer_shares(metrics)
    return {"n": metrics.n, "accuracy": metrics.accuracy, "balanced_accuracy": metrics.balanced_accuracy,
            "intervals": metrics.intervals, "miss_rate": metrics.miss_rate,
            "recall": {name: row["recall"] for name, row in metrics.per_class.items()},
            "shares": shares, "shares_within": all(row["within"] for row in shares.values()),
            "target_met": all(getattr(metrics, key) >= goal for key, goal in TARGET.items())}


def figures(eval_dir: Path, prior: str = "uniform", prior_tau: float = 1.0, prior_data: Any = None) -> dict[str, Any]:
    """Figures of every reading of a finished web-dev evaluation folder (all photos); with ``prior``
    (``facephi eval --prior``; ``prior_data``: a dataset folder or ``LandmarkSet``), the class scores
    with it divided out as one more reading."""
    from facephi.eval.results import EvalResult, resolve_prior
    from facephi.labels import CLASSES
    from facephi.landmarks.store import LandmarkSet

    result = EvalResult.load(eval_dir)
    no_face = result.extra.get("no_face") or {"n": 0, "counted": True}
    readings = {name: reading_figures(m) for name, m in result.readings().items() if name != "score_prior_corrected"}
    if isinstance(prior_data, (str, Path)):
        prior_data = LandmarkSet.load(prior_data, check_faces=False)
    values, source = resolve_prior(prior, result.settings.get("score_templates"), prior_data)
    if values is not None:
        readings["score_prior_corrected"] = reading_figures(result.rescored(values, prior_tau))
        source = {**source, "tau": prior_tau, "values": {c: float(p) for c, p in zip(CLASSES, values)}}
    return {"eval_dir": str(eval_dir), "model": result.settings.get("model"), "data": result.settings.get("data"),
            "faces": result.metrics.n, "no_face": no_face, "prior": source, "readings": readings,
            "instruction_policy": result.settings.get("instruction_policy"), "precision": result.settings.get("precision"),
            "seconds": result.seconds}


def markdown(fig: dict[str, Any], command: str) -> str:
    from facephi.labels import CLASSES, display_name

    no_face = fig["no_face"]
    photos = fig["faces"] + (no_face["n"] if no_face.get("counted") else 0)
    lines = [f"# Web-dev: {fig['model']}", "", f"`{command}`", "",
             f"{photos} photos of {fig['data']}: {fig['faces']} faces found, {no_face['n']} without a face"
             + ("" if no_face.get("counted") else f" (NOT counted: {no_face.get('note')})")
             + "; a photo without a face counts as a wrong answer (no class). Percent, 95 % bootstrap intervals "
             "(1,000 resamples).", "",
             f"`facephi eval --split all --mode both` in `{fig['eval_dir']}`: instructions "
             f"{fig.get('instruction_policy')}{' (a seeded Table-2 instruction per face)' if fig.get('instruction_policy') == 'random' else ''}, greedy answers, "
             f"{fig.get('precision')}; {fig.get('seconds', 0) / 60:.0f} min.", ""]
    if fig["prior"].get("name") != "uniform":
        prior = fig["prior"]
        values = ", ".join(f"{c} {100 * v:.1f}" for c, v in prior["values"].items())
        lines += [f"Class scoring, prior divided out: the {prior['name']} prior of {prior.get('from', '')} "
                  f"(tau {prior['tau']}; percent: {values}), from the stored class probabilities.", ""]
    lines += ["| reading | accuracy | macro recall | target (both ≥ 45 %) | no class over-answered |",
              "|---|---|---|---|---|"]
    for name, r in fig["readings"].items():
        m = Metrics(r)
        lines.append(f"| {READING_TITLES[name]} | {with_interval(m, 'accuracy')} | "
                     f"{with_interval(m, 'balanced_accuracy')} | {'pass' if r['target_met'] else 'FAIL'} | "
                     f"{'pass' if r['shares_within'] else 'FAIL'} |")
    names = [display_name(c) for c in CLASSES]
    lines += ["", "## Per-class recall", "", "| reading | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for name, r in fig["readings"].items():
        lines.append(f"| {READING_TITLES[name]} | " + " | ".join(percent(r["recall"][c]) for c in CLASSES) + " |")
    lines += ["", "## Answered vs share of the photos", "",
              "Per class: share of the photos → share of the answers naming it (answers / photos); FAIL where it "
              "is answered for more than 1.5 × its share, or for more than 5 % of the photos where its share is "
              "below 3 %.", "", "| reading | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, r in fig["readings"].items():
        cells = []
        for c in CLASSES:
            s = r["shares"][c]
            cells.append(f"{percent(s['share'])} → {percent(s['answered'])} ({s['count']})"
                         + ("" if s["within"] else " FAIL"))
        lines.append(f"| {READING_TITLES[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class Metrics:
    """Attribute access to a reading's JSON figures (what ``with_interval`` reads)."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.__dict__.update(figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="FacePhi model or landmark encoder folder")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "webfaces-dev",
                        help="`facephi extract` of webfaces-dev (default: data/webfaces-dev)")
    parser.add_argument("--eval-dir", type=Path, default=None,
                        help="the evaluation folder (default: runs/webdev/<model folder name>)")
    parser.add_argument("--out", type=Path, default=None, help="markdown results (and .json beside it)")
    parser.add_argument("--prior", default="uniform", help="also a class-scoring reading with this prior divided "
                                                           "out (facephi eval --prior: uniform|train|FILE)")
    parser.add_argument("--prior-data", type=Path, default=None, help="--prior train: the model's training data")
    parser.add_argument("--prior-tau", type=float, default=1.0, help="strength of the prior correction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from facephi.cli import main as facephi
    from facephi.eval.results import resolve_prior
    from facephi.landmarks.store import LandmarkSet
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import write_json, write_text

    eval_dir = args.eval_dir or ROOT / "runs" / "webdev" / args.model.resolve().name
    command = f"python benchmarks/webdev.py --model {args.model} --data {args.data}" + (
        f" --prior {args.prior} --prior-tau {args.prior_tau}" if args.prior != "uniform" else "") + (
        f" --prior-data {args.prior_data}" if args.prior_data else "")
    try:
        if not args.data.is_dir():
            raise FacePhiError(f"{args.data}: not found (--data; run `facephi extract` of webfaces-dev first)")
        if args.prior_data is not None and not args.prior_data.is_dir():
            raise FacePhiError(f"{args.prior_data}: not found (--prior-data)")
        prior_data = LandmarkSet.load(args.prior_data, check_faces=False) if args.prior_data else None
        resolve_prior(args.prior, None, prior_data)  # a bad --prior fails before the model runs
        flags = ["--model", str(args.model), "--data", str(args.data), "--split", "all", "--out", str(eval_dir),
                 "--mode", "both", "--batch-size", str(args.batch_size), "--device", args.device,
                 *(["--threads", str(args.threads)] if args.threads else [])]
        code = facephi(["eval", *flags])  # reuses a finished evaluation of the same model, data and settings
        if code != 0:
            return code
        fig = figures(eval_dir, args.prior, args.prior_tau, prior_data)
    except FacePhiError as exc:
        print(f"webdev: error: {exc}", file=sys.stderr)
        return 2
    fig["data"] = str(args.data)
    fig["eval_dir"] = str(eval_dir.relative_to(ROOT) if eval_dir.is_relative_to(ROOT) else eval_dir)
    text = markdown(fig, command)
    print(text)
    if args.out is not None:
        write_text(args.out, text)
        write_json(args.out.with_suffix(".json"), {**fig, "command": command})
    for name, r in fig["readings"].items():
        print(f"{name}: accuracy={r['accuracy']:.4f} macro_recall={r['balanced_accuracy']:.4f} "
              f"target={'pass' if r['target_met'] else 'fail'} shares={'pass' if r['shares_within'] else 'fail'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A class prior estimated from the photos themselves (issue 20's balanced-error lever, label shift):
EM re-estimation of the target class prior (Saerens, Latinne & Decaestecker, "Adjusting the outputs of
a classifier to new a priori probabilities", 2002) on a model's class probabilities, against the fixed
priors the shipped model can use.

    python benchmarks/prior_em.py --valid runs/webdev/eval-valid --web runs/webdev/eval-web \\
        --out benchmarks/results/prior_em.md

``--valid`` / ``--web``: finished ``facephi eval --mode score|both`` folders of one model without an
answer prior (its own class probabilities p in ``predictions.jsonl``) on FER+ Valid and on web-dev
(all photos; those without a face count as wrong answers). The training prior π is the model's mean
p over ``--valid`` (the shipped ``answer_prior``). EM on a set of faces: π' ← mean over the faces of
p · (π' / π) renormalised, from π' = π, until it stops moving. Readings (argmax of the class scores):
``log p − τ · log π`` for τ = 0, 0.5, 1 (the fixed priors), and ``log p + α · (log π' − log π)`` for
α = 0.5, 1 with π' estimated on that set (its own photos, no labels). No lever here is shipped unless
it beats τ = 0.5 on web-dev macro recall with FER+ Valid accuracy ≥ 63 % (the rule of
``answer_prior.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

VALID_FLOOR = 0.63


def em_prior(probs: np.ndarray, train_prior: np.ndarray, steps: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """The class prior of the faces behind ``probs`` [N, K] (a classifier trained under ``train_prior``)."""
    prior = train_prior.copy()
    for _ in range(steps):
        adjusted = probs * (prior / train_prior)
        adjusted /= adjusted.sum(1, keepdims=True)
        new = adjusted.mean(0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def load(eval_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class probabilities [N, 8], true class [N], true class of each photo without a face) of a folder."""
    from facephi.eval.results import read_jsonl, record_probabilities, record_truth
    from facephi.labels import CLASSES
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import read_json

    if not (eval_dir / "predictions.jsonl").is_file() or not (eval_dir / "metrics.json").is_file():
        raise FacePhiError(f"{eval_dir}: no predictions.jsonl / metrics.json (a finished `facephi eval` folder?)")
    records = read_jsonl(eval_dir / "predictions.jsonl")
    probs = record_probabilities(records)
    if probs is None:
        raise FacePhiError(f"{eval_dir}: no class probabilities (evaluate with --mode score or both)")
    settings = read_json(eval_dir / "metrics.json").get("settings", {})
    if settings.get("prior_tau") or (settings.get("prior") not in (None, "uniform")):
        raise FacePhiError(f"{eval_dir}: evaluated with a prior; this needs the model's own probabilities")
    no_face = read_json(eval_dir / "metrics.json").get("no_face") or {}
    by_class = (no_face.get("by_class") or {}) if no_face.get("counted") else {}
    missed = np.array([CLASSES.index(name) for name, count in by_class.items() for _ in range(count)], dtype=np.int64)
    return probs, record_truth(records), missed


def reading(probs: np.ndarray, truth: np.ndarray, missed: np.ndarray, bias: np.ndarray) -> Any:
    """Metrics of argmax(log p + bias) with 95 % intervals; photos without a face are wrong answers."""
    from facephi.scoring.metrics import MISS, compute_metrics

    pred = (np.log(np.clip(probs, 1e-30, None)) + bias).argmax(1)
    return compute_metrics(np.concatenate([truth, missed]), np.concatenate([pred, np.full(len(missed), MISS)]),
                           bootstrap=1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--valid", required=True, type=Path, help="facephi eval folder on FER+ Valid (scores)")
    parser.add_argument("--web", required=True, type=Path, help="facephi eval folder on web-dev (scores)")
    parser.add_argument("--out", required=True, type=Path, help="markdown results file")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from webdev import with_interval

    from facephi.labels import CLASSES
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import check_writable_dir, write_text

    try:
        check_writable_dir(args.out.parent, "--out")
        sets = {"FER+ Valid": load(args.valid), "web-dev": load(args.web)}
    except (FacePhiError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train_prior = sets["FER+ Valid"][0].mean(0)
    estimated = {name: em_prior(probs, train_prior) for name, (probs, _, _) in sets.items()}
    readings: list[tuple[str, dict[str, np.ndarray]]] = [
        (f"fixed prior, τ = {tau:g}", {name: -tau * np.log(train_prior) for name in sets}) for tau in (0, 0.5, 1)]
    readings += [(f"EM prior of the set itself, α = {alpha:g}",
                  {name: alpha * (np.log(estimated[name]) - np.log(train_prior)) for name in sets})
                 for alpha in (0.5, 1)]
    command = f"python benchmarks/prior_em.py --valid {args.valid} --web {args.web} --out {args.out}"
    lines = ["# A class prior estimated by EM on the photos themselves (label shift)", "", f"`{command}`", "",
             (__doc__ or "").split("\n\n")[2].replace("\n", " ").replace("``", "`"), "",
             "| reading | FER+ Valid accuracy | FER+ Valid macro recall | web-dev accuracy | web-dev macro recall | "
             "web-dev 'neutral' answers |", "|---|---|---|---|---|---:|"]
    results = {}
    for label, biases in readings:
        metrics = {name: reading(*sets[name], biases[name]) for name in sets}
        results[label] = metrics
        valid, web = metrics["FER+ Valid"], metrics["web-dev"]
        lines.append(f"| {label} | {with_interval(valid, 'accuracy')} | {with_interval(valid, 'balanced_accuracy')} | "
                     f"{with_interval(web, 'accuracy')} | {with_interval(web, 'balanced_accuracy')} | "
                     f"{web.per_class['neutral']['predicted']} |")
    truth_share = {name: np.bincount(np.concatenate([t, m]), minlength=len(CLASSES)) / (len(t) + len(m))
                   for name, (_, t, m) in sets.items()}
    lines += ["", "Class priors in % (training prior π: the model's mean probability on FER+ Valid; EM: π' "
              "estimated on each set from its photos alone; true: the set's labels):", "",
              "| prior | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES),
              "| π (training) | " + " | ".join(f"{100 * v:.1f}" for v in train_prior) + " |"]
    for name in sets:
        lines += [f"| EM on {name} | " + " | ".join(f"{100 * v:.1f}" for v in estimated[name]) + " |",
                  f"| true {name} | " + " | ".join(f"{100 * v:.1f}" for v in truth_share[name]) + " |"]
    baseline = results["fixed prior, τ = 0.5"]["web-dev"].balanced_accuracy
    better = [label for label, m in results.items() if label.startswith("EM")
              and m["web-dev"].balanced_accuracy > baseline and m["FER+ Valid"].accuracy >= VALID_FLOOR]
    lines += ["", "On FER+ Valid EM returns π itself (π is that set's mean probability: EM's starting point is its "
              "fixed point).", "", f"EM beats τ = 0.5 by the rule: **{', '.join(better) if better else 'no'}**."]
    write_text(args.out, "\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

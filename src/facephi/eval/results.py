"""A finished evaluation folder and what is read back from it (``facephi eval``'s output).

* ``metrics.json``: :class:`~facephi.scoring.metrics.ClassificationMetrics` fields, the class-scoring
  blocks (:data:`EXTRA_KEYS`), ``settings``, ``seconds`` and ``run``;
* ``predictions.jsonl``: one record per sample (``index``, ``true_index``, ``predicted_index``; with
  class scoring also ``scores``: class -> probability).

:class:`EvalResult` is what :mod:`facephi.eval.evaluate` returns and what benchmarks and the prior
correction (:func:`read_prior`) read back: the per-sample arrays come from here, in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facephi.labels import CLASSES
from facephi.scoring.calibration import estimate_prior
from facephi.scoring.metrics import ClassificationMetrics
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.jsonl"
PARTIAL_NAME = "predictions.partial.jsonl"
SCORE_BLOCKS = ("score", "score_prior_corrected")
EXTRA_KEYS = (*SCORE_BLOCKS, "agreement", "prior", "no_face", "all_photos")
"""Keys of ``metrics.json`` beside the top-level metrics (``EvalResult.extra``): the class-scoring
blocks, the class prior divided out of them, the photos without a face and the metrics of all
photos (those without a face counted as wrong answers)."""
PRIOR_NAMES = ("uniform", "train")
"""The named values of ``--prior``; anything else is a file or folder (:func:`resolve_prior`)."""
BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the 95 % bootstrap intervals every evaluation reports (accuracy, macro recall, macro-F1)."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a truncated last line (interrupted write) is dropped."""
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise FacePhiError(f"{path}:{number}: invalid JSON line ({exc})") from exc
    return records


def jsonl_text(records: Sequence[dict[str, Any]]) -> str:
    """``records`` as JSON lines."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def record_truth(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """True class indices ``[N]`` of evaluation records."""
    return np.array([r["true_index"] for r in records], dtype=np.int64)


def record_probabilities(records: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """Class probabilities ``[N, 8]`` (``CLASSES`` order) of scored records; None unless every record was scored."""
    if not records or any("scores" not in r for r in records):
        return None
    return np.array([[r["scores"][name] for name in CLASSES] for r in records], dtype=np.float64)


@dataclass
class EvalResult:
    """Metrics, per-sample records and where they were written (``out_dir`` may be None).

    ``metrics`` are those of the evaluated faces; ``extra["all_photos"]`` (where the split had photos
    without a face and they could be counted) holds the same figures over every photo, a photo
    without a face counting as a wrong answer (:meth:`whole_set`)."""

    metrics: ClassificationMetrics
    records: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    out_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Class-scoring blocks of ``metrics.json`` (``score``, ``score_prior_corrected``, ``agreement``)."""

    @classmethod
    def load(cls, out_dir: str | Path) -> "EvalResult":
        """Read a finished evaluation folder back (``metrics.json`` + ``predictions.jsonl``)."""
        out_dir = Path(out_dir)
        metrics_path, predictions_path = out_dir / METRICS_NAME, out_dir / PREDICTIONS_NAME
        for path in (metrics_path, predictions_path):
            if not path.is_file():
                raise FacePhiError(f"{path}: missing; {out_dir} is not a finished evaluation")
        data = read_json(metrics_path)
        settings, seconds = data.pop("settings", {}), data.pop("seconds", 0.0)
        data.pop("run", None)
        extra = {key: data.pop(key) for key in EXTRA_KEYS if key in data}
        records = read_jsonl(predictions_path)
        return cls(ClassificationMetrics.from_dict(data), records, settings, seconds, out_dir, extra)

    @classmethod
    def load_if_finished(cls, out_dir: str | Path) -> "EvalResult | None":
        """:meth:`load`, or ``None`` when ``out_dir`` holds no finished evaluation (to resume a run)."""
        try:
            return cls.load(out_dir)
        except FacePhiError:
            return None

    def whole_set(self, block: str | None = None) -> ClassificationMetrics:
        """Metrics over every photo of the split (those without a face counted as wrong answers) of the
        top-level prediction (``block=None``) or of a class-scoring block (``"score"``,
        ``"score_prior_corrected"``); the faces' own metrics where no photo lacked a face."""
        photos = self.extra.get("all_photos")
        if block is None:
            return ClassificationMetrics.from_dict({k: v for k, v in photos.items() if k not in SCORE_BLOCKS}) \
                if photos else self.metrics
        if photos and block in photos:
            return ClassificationMetrics.from_dict(photos[block])
        if block not in self.extra:
            raise FacePhiError(f"{self.out_dir}: no {block!r} block (evaluated with --mode "
                               f"{self.settings.get('mode', 'generate')})")
        return ClassificationMetrics.from_dict({k: v for k, v in self.extra[block].items() if k != "calibration"})

    def rescored(self, prior: Sequence[float] | np.ndarray, tau: float = 1.0) -> ClassificationMetrics:
        """Metrics over all photos (as :meth:`whole_set`) of the stored class probabilities with
        ``prior ** tau`` divided out (logit adjustment after the fact: the model is not run again)."""
        from facephi.scoring.calibration import adjust_by_prior
        from facephi.scoring.metrics import MISS, compute_metrics

        probabilities = self.class_probabilities()
        if probabilities is None:
            raise FacePhiError(f"{self.out_dir}: no class probabilities to adjust (evaluated with --mode "
                               f"{self.settings.get('mode', 'generate')})")
        no_face = self.extra.get("no_face") or {}
        counts = no_face.get("by_class") if no_face.get("counted") else None
        missing = np.repeat(np.arange(len(CLASSES)), [counts[c] for c in CLASSES]) if counts else np.zeros(0, np.int64)
        truth = np.concatenate([self.truth(), missing])
        predicted = np.concatenate([adjust_by_prior(probabilities, prior, tau).argmax(axis=1),
                                    np.full(len(missing), MISS)])
        return compute_metrics(truth, predicted, bootstrap=BOOTSTRAP_RESAMPLES)

    def readings(self) -> dict[str, ClassificationMetrics]:
        """Every reading of this evaluation over all photos (:meth:`whole_set`): ``"answers"`` (generated
        answers, keyword matching), ``"classifier"`` (an encoder's own), ``"score"`` and
        ``"score_prior_corrected"`` (class scoring), those that were evaluated."""
        out: dict[str, ClassificationMetrics] = {}
        if self.settings.get("kind", "facephi") != "facephi":
            out["classifier"] = self.whole_set()
        elif self.settings.get("mode", "generate") != "score":
            out["answers"] = self.whole_set()
        for block in SCORE_BLOCKS:
            if block in self.extra:
                out[block] = self.whole_set(block)
        return out

    def truth(self) -> np.ndarray:
        """True class index per sample ``[N]``."""
        return record_truth(self.records)

    def class_probabilities(self) -> np.ndarray | None:
        """The 8 class probabilities per sample ``[N, 8]`` (class scoring), or None for an
        evaluation that did not score (``--mode generate``) or an encoder's."""
        return record_probabilities(self.records)

    def answered(self) -> np.ndarray | None:
        """The class named by each generated answer ``[N]`` (``-1``: none), or None where nothing was
        generated (``--mode score``, encoder evaluations)."""
        if self.settings.get("kind", "facephi") != "facephi" or self.settings.get("mode", "generate") == "score":
            return None
        return np.array([r["predicted_index"] for r in self.records], dtype=np.int64)


def resolve_prior(spec: str | Path, score_templates: str | None = None,
                  train_data: Any = None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The class prior ``--prior`` divides out of the class scores: (prior [8] or None, where it came from).

    ``"uniform"``: none (None: the model's own scores); ``"train"``: the class frequencies of the train
    split of ``train_data`` (a ``LandmarkSet``; add-one smoothed, so that no class has prior 0); a
    folder: a finished ``--mode score`` evaluation on the valid split (:func:`read_prior`); a file: JSON,
    8 positive numbers in ``CLASSES`` order or an object ``{class: number}`` naming every class
    (normalised to sum 1)."""
    if str(spec) == "uniform":
        return None, {"name": "uniform"}
    if str(spec) == "train":
        if train_data is None:
            raise FacePhiError("--prior train: name the training data with --prior-data DIR")
        labels = train_data.labels[train_data.select("train")]
        counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
        return (counts + 1) / (counts.sum() + len(CLASSES)), {
            "name": "train", "from": str(train_data.root), "split": "train", "n_samples": int(len(labels)),
            "counts": {name: int(c) for name, c in zip(CLASSES, counts)}, "smoothing": "add-one"}
    path = Path(spec)
    if path.is_dir():
        prior, source = read_prior(path, score_templates)
        return prior, {"name": "valid scores", **source}
    if not path.is_file():
        raise FacePhiError(f"--prior {spec}: not uniform, train, a file or a folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FacePhiError(f"{path}: not a JSON file of class priors ({exc})") from None
    if isinstance(data, dict):
        unknown, missing = set(data) - set(CLASSES), [c for c in CLASSES if c not in data]
        if unknown or missing:
            raise FacePhiError(f"{path}: needs one number per class ({', '.join(CLASSES)}); "
                               f"{'unknown ' + ', '.join(sorted(unknown)) if unknown else 'missing ' + ', '.join(missing)}")
        data = [data[c] for c in CLASSES]
    try:
        prior = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        prior = np.zeros(0)
    if prior.shape != (len(CLASSES),) or not np.isfinite(prior).all() or (prior <= 0).any():
        raise FacePhiError(f"{path}: needs {len(CLASSES)} finite positive numbers (a list in the order "
                           f"{', '.join(CLASSES)}, or an object class -> number)")
    return prior / prior.sum(), {"name": "file", "from": str(path)}


def read_prior(folder: str | Path, score_templates: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The class prior of ``--prior VALID_EVAL``: the mean predicted probability per class of a finished
    ``score``/``both`` evaluation on the valid split; returns (prior [8], where it came from)."""
    result = EvalResult.load(folder)
    probabilities = result.class_probabilities()
    if result.settings.get("mode") not in ("score", "both") or probabilities is None:
        raise FacePhiError(f"{folder}: not a class-scoring evaluation (make one with "
                           "`facephi eval --mode score --split valid`)")
    if result.settings.get("split") != "valid":
        raise FacePhiError(f"{folder}: the prior must come from the valid split, this evaluation is on "
                           f"{result.settings.get('split')!r}")
    if score_templates is not None and result.settings.get("score_templates") != score_templates:
        raise FacePhiError(f"{folder}: scored with --score-templates {result.settings.get('score_templates')}, "
                           f"this evaluation uses {score_templates}")
    return estimate_prior(probabilities), {"from": str(folder), "split": "valid", "n_samples": len(result.records),
                                           "model": result.settings.get("model")}

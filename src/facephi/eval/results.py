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
EXTRA_KEYS = (*SCORE_BLOCKS, "agreement")
"""Keys of ``metrics.json`` beside the top-level metrics (``EvalResult.extra``)."""
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
    """Metrics, per-sample records and where they were written (``out_dir`` may be None)."""

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


def read_prior(folder: str | Path, score_templates: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The class prior of ``--prior-from``: the mean predicted probability per class of a finished
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

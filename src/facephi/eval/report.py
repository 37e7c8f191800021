"""Human-readable views of :class:`~facephi.scoring.metrics.ClassificationMetrics`: markdown and a PNG."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from facephi.eval.results import SCORE_BLOCKS
from facephi.scoring.metrics import ClassificationMetrics
from facephi.labels import display_name
from facephi.utils.io import atomic_path

_SUMMARY_ROWS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("accuracy_contains", "Accuracy, lenient (true class named anywhere)"),
    ("balanced_accuracy", "Balanced accuracy (macro recall)"),
    ("macro_f1", "Macro-F1"),
    ("miss_rate", "No class keyword (miss rate)"),
    ("ambiguous_rate", "Several classes named (ambiguous rate)"),
)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def summary_lines(metrics: ClassificationMetrics) -> list[tuple[str, str]]:
    """(label, formatted value) pairs of the headline numbers; rows that do not apply are dropped
    (None values; the miss rate of a classifier, which has no keyword matching)."""
    classifier = metrics.ambiguous_rate is None and metrics.miss_rate == 0
    lines = [("Samples", str(metrics.n))]
    for key, label in _SUMMARY_ROWS:
        value = getattr(metrics, key)
        if value is not None and not (classifier and key == "miss_rate"):
            lines.append((label, _percent(value) + interval_text(metrics.intervals, key)))
    return lines


def interval_text(intervals: dict[str, Any] | None, key: str) -> str:
    """`` (95 % CI 65.4–68.6)`` for metric ``key`` of a metrics' ``intervals``, else ``""``."""
    if not intervals or key not in intervals:
        return ""
    low, high = intervals[key]
    return f" ({100 * intervals['level']:.0f} % CI {100 * low:.1f}–{100 * high:.1f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def metrics_markdown(metrics: ClassificationMetrics, title: str = "Evaluation", info: dict[str, Any] | None = None,
                     level: int = 1) -> str:
    """A markdown report: summary, per-class table, confusion matrix (counts), optional run info;
    ``level``: the heading level of the title (sections one below)."""
    names = [display_name(n) for n in metrics.class_names]
    h = "#" * level
    parts = [f"{h} {title}", "", _table(["Metric", "Value"], [list(r) for r in summary_lines(metrics)]), ""]
    per_class = [
        [names[k], str(row["support"]), str(row["predicted"]), _percent(row["recall"]),
         _percent(row["precision"]), _percent(row["f1"])]
        for k, row in enumerate(metrics.per_class.values())
    ]
    parts += [f"{h}# Per class", "", _table(["Class", "Support", "Predicted", "Recall", "Precision", "F1"], per_class), ""]
    confusion = [[names[k], *map(str, row)] for k, row in enumerate(metrics.confusion)]
    parts += [
        f"{h}# Confusion matrix", "",
        "Rows: true class; columns: predicted class; *none*: no class keyword in the answer.", "",
        _table(["true \\ predicted", *names, "none"], confusion), "",
    ]
    if info:
        parts += [f"{h}# Run", "", _table(["Setting", "Value"], [[k, f"`{v}`"] for k, v in info.items()]), ""]
    return "\n".join(parts)


def save_confusion_png(metrics: ClassificationMetrics, path: str | os.PathLike[str], title: str = "") -> None:
    """Row-normalised confusion matrix (colour) with counts (text) as a PNG, written atomically.

    Uses a bare matplotlib ``Figure`` (Agg canvas), so no GUI backend or pyplot state is touched.
    """
    from matplotlib.figure import Figure

    counts = np.asarray(metrics.confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    columns = [display_name(n) for n in metrics.class_names] + ["none"]
    rows = columns[:-1]

    fig = Figure(figsize=(1.0 + 0.8 * len(columns), 1.0 + 0.7 * len(rows)), dpi=120)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title or f"accuracy {_percent(metrics.accuracy)} (n = {metrics.n})", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def save_reliability_png(calibration: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> None:
    """Reliability diagram of a ``calibration_summary`` block (``facephi.scoring.calibration``) as a PNG,
    written atomically: accuracy per confidence bin (bars) against the diagonal of perfect calibration,
    the bins' mean confidence (dots) and their sample counts (lower panel). Bare matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    rows = calibration["reliability"]
    lower = np.array([row["lower"] for row in rows])
    width = np.array([row["upper"] - row["lower"] for row in rows])
    filled = [k for k, row in enumerate(rows) if row["count"]]
    fig = Figure(figsize=(5.0, 5.6), dpi=120)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    top.bar(lower[filled], [rows[k]["accuracy"] for k in filled], width=width[filled], align="edge",
            color="tab:blue", edgecolor="black", alpha=0.8, label="accuracy")
    top.plot([rows[k]["confidence"] for k in filled], [rows[k]["confidence"] for k in filled], "o",
             color="tab:red", markersize=3, label="mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.text(0.98, 0.02, f"ECE {100 * calibration['ece']:.1f} %\nNLL {calibration['nll']:.3f}", ha="right",
             va="bottom", transform=top.transAxes, fontsize=9)
    top.set_title(title or "reliability diagram", fontsize=10)
    bottom.bar(lower, [row["count"] for row in rows], width=width, align="edge", color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (max class probability)")
    bottom.set_ylabel("samples")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def scoring_summary(block: dict[str, Any]) -> str:
    """One line of a class-scoring block (``metrics.json``'s ``score``): accuracy, macro recall,
    macro-F1, ECE and NLL, as ``facephi eval`` and the benchmarks print it."""
    line = (f"accuracy {100 * block['accuracy']:.1f} %, macro recall {100 * block['balanced_accuracy']:.1f} %, "
            f"macro-F1 {100 * block['macro_f1']:.1f} %")
    calibration = block.get("calibration")
    if calibration:
        line += f", ECE {100 * calibration['ece']:.1f} %, NLL {calibration['nll']:.3f}"
    return line


def scoring_markdown(extra: dict[str, Any]) -> str:
    """The class-scoring section of ``report.md`` (empty without scoring)."""
    columns = [key for key in SCORE_BLOCKS if key in extra]
    if not columns:
        return ""
    names = {"score": "Class scoring", "score_prior_corrected": "Prior corrected"}
    rows = [("Accuracy", "accuracy", True), ("Balanced accuracy", "balanced_accuracy", True),
            ("Macro-F1", "macro_f1", True), ("ECE (15 bins)", "ece", True), ("NLL of the true class (nats)", "nll", False),
            ("Mean confidence", "mean_confidence", True)]
    lines = ["## Class scoring", "", "| Metric | " + " | ".join(names[c] for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, key, percent in rows:
        cells = []
        for c in columns:
            value = extra[c].get(key, extra[c]["calibration"].get(key))
            cells.append(f"{100 * value:.1f} %{interval_text(extra[c].get('intervals'), key)}" if percent
                         else f"{value:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "agreement" in extra:
        lines += ["", f"Agreement of the generated class with the scored argmax: {100 * extra['agreement']:.1f} %"]
    return "\n".join(lines) + "\n"


def no_face_summary(no_face: dict[str, Any]) -> str:
    """One line about the photos without a face of an evaluation (``metrics.json``'s ``no_face``)."""
    reasons = ", ".join(f"{n} × {reason}" for reason, n in no_face["reasons"].items())
    line = f"{no_face['n']} (extraction: {reasons})"
    if not no_face["counted"]:
        return f"{line}: not counted ({no_face['note']})"
    return f"{line}, counted as wrong answers in the figures of all photos"


def whole_set_markdown(extra: dict[str, Any]) -> str:
    """The section of ``report.md`` about the photos without a face and the figures of all photos
    (empty when the split had none)."""
    no_face = extra.get("no_face")
    if not no_face or not no_face["n"]:
        return ""
    parts = ["## Photos without a face", "", "Photos without a face: " + no_face_summary(no_face) + ".", ""]
    photos = extra.get("all_photos")
    if photos:
        metrics = ClassificationMetrics.from_dict({k: v for k, v in photos.items() if k not in SCORE_BLOCKS})
        parts.append(metrics_markdown(metrics, title="All photos (no face = wrong answer)", level=3))
        for key in SCORE_BLOCKS:
            if key in photos:
                block = ClassificationMetrics.from_dict(photos[key])
                label = "class scoring" if key == "score" else "class scoring, prior corrected"
                parts.append(f"All photos, {label}: accuracy {_percent(block.accuracy)}"
                             f"{interval_text(block.intervals, 'accuracy')}, macro recall "
                             f"{_percent(block.balanced_accuracy)}{interval_text(block.intervals, 'balanced_accuracy')}\n")
    return "\n".join(parts) + "\n"

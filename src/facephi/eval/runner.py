"""The loop every evaluation shares: resume, predict in batches, compute the figures, write the files.

:func:`run_evaluation` takes a dataset of ``{"points", "label", "index"}`` items and a function
that turns a batch of them into records (``true_index``, ``predicted_index``, ...). An output folder
holds, while it runs, ``predictions.partial.jsonl`` and ``settings.partial.json``: a rerun with the
same settings continues after the finished batches, one with other settings starts over. Settings
are compared without their paths (:data:`PATH_KEYS`): the model's and the data's content
fingerprints decide. A finished evaluation in the folder is returned as it is when its settings
are the same, refused when they are not (unless ``overwrite``). At the end: ``predictions.jsonl``,
``metrics.json``, ``confusion.png``, ``report.md`` (and the reliability diagrams of class scoring).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facephi.config import differences
from facephi.eval.figures import all_photos_block
from facephi.eval.no_face import PhotosWithoutFace
from facephi.eval.report import (
    metrics_markdown,
    save_confusion_png,
    save_reliability_png,
    scoring_markdown,
    whole_set_markdown,
)
from facephi.eval.results import (
    BOOTSTRAP_RESAMPLES,
    METRICS_NAME,
    PARTIAL_NAME,
    PREDICTIONS_NAME,
    SCORE_BLOCKS,
    EvalResult,
    jsonl_text,
    read_jsonl,
)
from facephi.labels import CLASSES
from facephi.scoring.metrics import compute_metrics
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json, write_json, write_text
from facephi.utils.runinfo import run_info

logger = logging.getLogger(__name__)


def batches(dataset: Any, batch_size: int, skip: set[int]) -> Any:
    """Yield lists of items of ``dataset`` in order, leaving out sample indices in ``skip``."""
    batch: list[dict[str, Any]] = []
    for position in range(len(dataset)):
        item = dataset[position]
        if int(item["index"]) in skip:
            continue
        if not 0 <= int(item["label"]) < len(CLASSES):
            raise FacePhiError(f"sample {int(item['index'])} has no class label ({int(item['label'])})")
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


PATH_KEYS = ("model", "data")
"""Recorded settings that are paths: recorded, but the content fingerprints decide whether two
evaluations are the same."""


def _same_settings(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return differences(old, new, ignore=PATH_KEYS) == []


def run_evaluation(
    dataset: Any, predict_batch: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    settings: dict[str, Any], batch_size: int, out_dir: str | Path | None, progress: bool,
    title: str, summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    no_face: PhotosWithoutFace | None = None,
    scored: Callable[[list[dict[str, Any]]], dict[str, np.ndarray]] | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Shared loop: resume, predict batches, append partial records, compute and write results.

    A finished evaluation in ``out_dir`` with the same settings (content fingerprints included) is
    returned as it is; one with other settings is refused unless ``overwrite``. ``no_face``: the
    split's photos without a face, reported and counted in ``all_photos`` with the top-level
    predictions and those of ``scored(records)`` (class-scoring block -> predictions)."""
    from facephi.utils.progress import progress_bar

    if batch_size <= 0:
        raise FacePhiError(f"batch size must be positive, got {batch_size}")
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from JSON
    out = Path(out_dir) if out_dir is not None else None
    done: list[dict[str, Any]] = []
    partial = out / PARTIAL_NAME if out else None
    finished = EvalResult.load_if_finished(out) if out and not overwrite else None
    if finished is not None:
        if _same_settings(finished.settings, settings):
            logger.info("%s: already evaluated with these settings (same model and data content): reused", out)
            return finished
        changed = differences(finished.settings, settings, ignore=PATH_KEYS)
        raise FacePhiError(f"{out}: holds a finished evaluation made with other settings ({'; '.join(changed[:3])}"
                           f"{' ...' if len(changed) > 3 else ''}); pass --overwrite to replace it, or choose "
                           "another --out")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        settings_path = out / "settings.partial.json"
        if partial.is_file() and settings_path.is_file() and _same_settings(read_json(settings_path), settings):
            done = read_jsonl(partial)
            logger.info("resuming %s: %d samples already evaluated", out, len(done))
        write_json(settings_path, settings)
        write_text(partial, jsonl_text(done))  # drops a truncated last line, starts fresh otherwise

    start = time.perf_counter()
    skip = {int(r["index"]) for r in done}
    records = list(done)
    with progress_bar(total=len(dataset), initial=len(done), enabled=progress, unit="samples",
                      desc=title) as bar:
        for batch in batches(dataset, batch_size, skip):
            new = predict_batch(batch)
            records.extend(new)
            if partial is not None:
                with open(partial, "a", encoding="utf-8") as fh:
                    fh.write(jsonl_text(new))
            bar.update(len(batch))
    seconds = time.perf_counter() - start

    if not records:
        raise FacePhiError("nothing to evaluate: the dataset is empty")
    metrics = compute_metrics(
        [r["true_index"] for r in records], [r["predicted_index"] for r in records],
        ambiguous=[r["ambiguous"] for r in records] if "ambiguous" in records[0] else None,
        contains_correct=[r["correct_contains"] for r in records] if "correct_contains" in records[0] else None,
        bootstrap=BOOTSTRAP_RESAMPLES,
    )
    extra = summarize(records) if summarize else {}
    if no_face is not None:
        extra["no_face"] = no_face.to_dict()
        if no_face.counted and len(no_face.labels):
            extra["all_photos"] = all_photos_block(records, no_face.labels, scored(records) if scored else {})
    result = EvalResult(metrics, records, settings, seconds, out, extra)
    if out:
        _write_outputs(result, title)
        partial.unlink(missing_ok=True)
        (out / "settings.partial.json").unlink(missing_ok=True)
    return result


def _write_outputs(result: EvalResult, title: str) -> None:
    out = result.out_dir
    assert out is not None
    write_text(out / PREDICTIONS_NAME, jsonl_text(result.records))
    write_json(out / METRICS_NAME, {**result.metrics.to_dict(), **result.extra, "settings": result.settings,
                                    "seconds": result.seconds, "run": run_info(result.settings.get("seed"))})
    save_confusion_png(result.metrics, out / "confusion.png", title=f"{title}: accuracy "
                       f"{100 * result.metrics.accuracy:.1f} % (n = {result.metrics.n})")
    for key in SCORE_BLOCKS:
        if key in result.extra:
            block = result.extra[key]
            name = "reliability.png" if key == "score" else "reliability_prior_corrected.png"
            label = "class scoring" if key == "score" else "class scoring, prior corrected"
            save_reliability_png(block["calibration"], out / name,
                                 title=f"{title}, {label}: accuracy {100 * block['accuracy']:.1f} % (n = {block['n']})")
    info = {k: v for k, v in result.settings.items() if not isinstance(v, (dict, list))}
    write_text(out / "report.md", metrics_markdown(result.metrics, title=title, info=info)
               + scoring_markdown(result.extra) + whole_set_markdown(result.extra))

"""Evaluation of a FacePhi model (LLM answers + keyword matching) or of a landmark encoder's classifier.

Both write the same files into an output folder (all atomic): ``metrics.json`` and
``predictions.jsonl`` (read back by :class:`facephi.eval.results.EvalResult`), ``confusion.png`` and
``report.md``.

LLM evaluation generates greedily in left-padded batches. It is resumable: finished batches are
appended to ``predictions.partial.jsonl``; a re-run with the same settings continues after them,
and the partial file is replaced by ``predictions.jsonl`` at the end.

Instructions (``instruction_policy``): ``"random"`` (default) draws one of the paper's 15
instructions per sample from ``np.random.default_rng([seed, sample_index])`` — as the paper's
data does, and independent of batch size, ``limit`` or resumption; ``"first"`` always uses
instruction 1; ``instruction=TEXT`` uses a fixed custom text.

Modes of ``evaluate_model`` (``facephi eval --mode``):

* ``"generate"`` (default, the paper's metric): greedy answers read by keyword matching; files and
  records exactly as above.
* ``"score"``: class scoring (rank classification, ``FacePhiModel.class_log_likelihoods``): per
  sample the 8 class probabilities (softmax of the answers' log-likelihoods, float64) and their
  argmax. Records get ``scores`` (class -> probability) and ``scored_class``, and their
  ``predicted`` is the scored class, so the top-level metrics of ``metrics.json`` are those of the
  argmax. ``metrics.json`` adds a ``score`` block: the same metrics plus ``calibration``
  (``facephi.scoring.calibration.calibration_summary``: ECE over 15 bins, NLL of the true class,
  reliability bins), drawn in ``reliability.png``.
* ``"both"``: generation as in ``"generate"`` (top-level metrics unchanged), the records also
  scored, the ``score`` block and ``agreement`` (fraction of samples whose generated class, a
  keyword miss counting as a disagreement, equals the scored argmax).

With a ``prior`` (8 numbers, or what :func:`~facephi.eval.results.resolve_prior` reads: ``"train"``
class frequencies, a JSON file, a finished ``score``/``both`` evaluation folder on the valid split),
the block ``score_prior_corrected`` holds the metrics and calibration of the probabilities divided
by ``prior ** prior_tau`` and renormalised (logit adjustment; ``reliability_prior_corrected.png``),
and records get ``scored_class_prior_corrected``; the uncorrected ``score`` block stays. The prior
used (``"uniform"``: none) is the ``prior`` block of ``metrics.json`` in every scoring evaluation.

Resuming is decided by content: the recorded settings hold the fingerprints of the model and of the
data (:mod:`facephi.eval.fingerprint`), so a partial run of another model or other data in the same
folder (paths alike) is started over, never continued; a finished evaluation in the folder is
returned as it is when its settings are the same, refused when they are not (unless ``overwrite``).

Photos without a face: evaluating a ``LandmarkSet`` split whole, the photos of that split where the
extraction found no face (``failures.csv``, :mod:`facephi.eval.no_face`) are reported (``no_face``)
and counted as wrong answers in the ``all_photos`` block (the top-level metrics, and every class-scoring
block, over every photo: their prediction is "no class"); the top-level metrics stay those of the faces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from facephi.scoring.calibration import adjust_by_prior
from facephi.scoring.keywords import match_answer
from facephi.scoring.metrics import MISS
from facephi.eval.config import EVAL_MODES, INSTRUCTION_POLICIES
from facephi.eval.fingerprint import dataset_fingerprint, model_fingerprint
from facephi.eval.figures import score_block, scored_probabilities
from facephi.eval.no_face import PhotosWithoutFace, photos_without_face
from facephi.eval.runner import run_evaluation
from facephi.labels import CLASSES
from facephi.landmarks.store import SPLIT_SEED
from facephi.model.class_scoring import class_probabilities
from facephi.model.precision import module_device
from facephi.utils.errors import FacePhiError
from facephi.eval.results import (  # noqa: F401 - EvalResult and read_prior: part of this module's API
    EvalResult,
    read_prior,
    resolve_prior,
)


def choose_instruction(index: int, policy: str = "random", seed: int = 0) -> str:
    """The instruction asked for sample ``index`` under ``policy`` (see the module docstring)."""
    from facephi.data.templates import INSTRUCTIONS

    if policy == "first":
        return INSTRUCTIONS[0]
    if policy == "random":
        return INSTRUCTIONS[int(np.random.default_rng([seed, int(index)]).integers(len(INSTRUCTIONS)))]
    raise ValueError(f"instruction_policy must be one of {INSTRUCTION_POLICIES}, got {policy!r}")


def _as_dataset(data: Any, split: str, normalizer: Any, limit: int | None, seed: int,
                limit_policy: str = "random") -> tuple[Any, PhotosWithoutFace | None]:
    """(dataset, photos without a face): a ``LandmarkSet`` becomes a ``LandmarkDataset`` of ``split``
    (``LandmarkSet.select``: labelled samples, the standard split of ``SPLIT_SEED``, ``"all"``: every
    sample, a ``limit_policy`` subset of ``limit`` drawn with ``seed``) with the split's photos without
    a face; a dataset is used as is (None: it has no photos)."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "standard_splits"):
        if limit is not None and limit < len(data):
            return torch.utils.data.Subset(data, list(range(limit))), None
        return data, None
    from facephi.data.dataset import LandmarkDataset

    if normalizer is None:
        raise FacePhiError("the model's encoder has no landmark normaliser: pass a LandmarkDataset "
                           "of already normalised landmarks instead of a LandmarkSet")
    indices = data.select(split, limit, limit_policy, seed)
    subset = limit is not None and len(indices) < len(data.select(split))
    return LandmarkDataset(data, indices, normalizer), photos_without_face(data, split, limit if subset else None)


def _class_name(index: int | None) -> str | None:
    return None if index is None else CLASSES[index]


def evaluate_model(
    model: Any,
    data: Any,
    split: str = "test",
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    instruction_policy: str = "random",
    instruction: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    limit_policy: str = "random",
    out_dir: str | Path | None = None,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    mode: str = "generate",
    score_templates: str = "first",
    prior: Sequence[float] | np.ndarray | str | Path | None = None,
    prior_tau: float = 1.0,
    prior_data: Any = None,
    overwrite: bool = False,
) -> EvalResult:
    """Greedy answers of a ``FacePhiModel`` (``model.answer``) on ``split``, scored by keyword matching.

    ``mode``: ``"generate"`` (this), ``"score"`` (class probabilities, ``model.class_log_likelihoods``
    with ``score_templates``) or ``"both"``; ``prior``: 8 class priors, or ``"uniform"`` (none),
    ``"train"`` (the train split of the ``LandmarkSet`` ``prior_data``), a JSON file or a valid
    evaluation folder (:func:`~facephi.eval.results.resolve_prior`): adds the block of the scores
    with ``prior ** prior_tau`` divided out (see the module docstring).

    ``data`` is a ``LandmarkSet`` (normalised with the model encoder's normaliser, ``split`` and
    ``limit`` applied, see ``LandmarkSet.select``) or any dataset of ``{"points", "label",
    "index"}`` items (used whole; ``limit`` keeps its first items). ``settings`` adds entries (e.g.
    the checkpoint path) to the recorded settings.
    """
    if instruction is None:
        choose_instruction(0, instruction_policy, seed)  # validates the policy early
    if max_new_tokens <= 0:
        raise FacePhiError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if mode not in EVAL_MODES:
        raise FacePhiError(f"mode must be one of {EVAL_MODES}, got {mode!r}")
    if score_templates not in ("first", "all"):
        raise FacePhiError(f"score_templates must be 'first' or 'all', got {score_templates!r}")
    if mode != "generate" and not hasattr(model, "class_log_likelihoods"):
        raise FacePhiError(f"mode {mode!r}: {type(model).__name__} has no class_log_likelihoods (class scoring)")
    if prior is not None and str(prior) != "uniform" and mode == "generate":
        raise FacePhiError("a class prior applies to class scoring (mode 'score' or 'both')")
    if not (np.isfinite(prior_tau) and prior_tau >= 0):
        raise FacePhiError(f"prior_tau must be a finite number >= 0, got {prior_tau}")
    prior_source: dict[str, Any] | None = None
    if isinstance(prior, (str, Path)):
        prior, prior_source = resolve_prior(prior, score_templates, prior_data)
    if prior is not None:
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (len(CLASSES),) or not np.isfinite(prior).all() or (prior <= 0).any():
            raise FacePhiError(f"prior: need {len(CLASSES)} finite positive numbers, got {prior.tolist()}")
        prior_source = prior_source or {"name": "given"}
    encoder = getattr(model, "encoder", None)
    dataset, no_face = _as_dataset(data, split, getattr(encoder, "normalizer", None), limit, seed, limit_policy)
    device = module_device(model)
    model.eval()

    def generate_records(batch: list[dict[str, Any]], indices: list[int], texts: list[str],
                         points: torch.Tensor) -> list[dict[str, Any]]:
        with torch.inference_mode():
            answers = model.answer(points.to(device), texts, max_new_tokens=max_new_tokens)
        if len(answers) != len(batch):
            raise RuntimeError(f"model.answer returned {len(answers)} answers for {len(batch)} prompts")
        records = []
        for item, index, text, answer in zip(batch, indices, texts, answers):
            match, label = match_answer(answer), int(item["label"])
            predicted = match.predicted
            records.append({
                "index": index, "instruction": text, "answer": answer,
                "predicted": _class_name(predicted), "true": CLASSES[label],
                "correct": match.correct(label), "correct_contains": match.contains(label),
                "ambiguous": match.ambiguous, "mentioned": [CLASSES[k] for k in match.mentioned],
                "predicted_index": MISS if predicted is None else predicted, "true_index": label,
            })
        return records

    def predict_batch(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        indices = [int(item["index"]) for item in batch]
        texts = [instruction if instruction is not None else choose_instruction(i, instruction_policy, seed)
                 for i in indices]
        points = torch.stack([torch.as_tensor(item["points"]) for item in batch])
        records = generate_records(batch, indices, texts, points) if mode != "score" else [
            {"index": index, "instruction": text, "true": CLASSES[int(item["label"])], "true_index": int(item["label"])}
            for item, index, text in zip(batch, indices, texts)]
        if mode != "generate":
            with torch.inference_mode():
                scores = model.class_log_likelihoods(points.to(device), texts, templates=score_templates)
            if tuple(scores.shape) != (len(batch), len(CLASSES)):
                raise RuntimeError(f"class_log_likelihoods returned shape {tuple(scores.shape)} for {len(batch)} prompts")
            scores = scores.detach().double().cpu()
            answer_prior = getattr(model, "answer_prior", None)  # a FacePhiModel's; other scorers have none
            if answer_prior is not None:
                scores = answer_prior.adjust(scores, answer_prior.encoder_log_probs(points.to(device)))
            probabilities = class_probabilities(scores).numpy()
            for record, probs in zip(records, probabilities):
                scored = int(probs.argmax())
                if mode == "score":
                    record.update(predicted=CLASSES[scored], correct=scored == record["true_index"],
                                  predicted_index=scored)
                record["scores"] = {name: float(p) for name, p in zip(CLASSES, probs)}
                record["scored_class"] = CLASSES[scored]
                if prior is not None:
                    adjusted = adjust_by_prior(probs[None], prior, prior_tau)[0]
                    record["scored_class_prior_corrected"] = CLASSES[int(adjusted.argmax())]
        return records

    recorded = {
        "kind": "facephi", "split": split, "n_samples": len(dataset), "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "decoding": "greedy",
        "instruction_policy": "fixed" if instruction is not None else instruction_policy,
        "instruction": instruction, "seed": seed, "limit": limit, "limit_policy": limit_policy,
        "split_seed": SPLIT_SEED,
        "keyword_rule": "first class named, negated keywords ignored (strict); lenient 'contains' alongside",
        "model_fingerprint": model_fingerprint(model), **dataset_fingerprint(data),
        **(settings or {}),
    }
    if mode != "generate":
        recorded.update(mode=mode, score_templates=score_templates,
                        prior=None if prior is None else prior.tolist(), prior_source=prior_source,
                        prior_tau=None if prior is None else prior_tau)
        if mode == "score":
            for key in ("max_new_tokens", "decoding", "keyword_rule"):
                recorded.pop(key)

    def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if mode == "generate":
            return extra
        extra["score"] = score_block(records)
        extra["prior"] = {"name": "uniform"} if prior is None else {
            **(prior_source or {}), "tau": prior_tau, "values": {c: float(p) for c, p in zip(CLASSES, prior)}}
        if prior is not None:
            extra["score_prior_corrected"] = score_block(records, prior, prior_tau)
        if mode == "both":
            extra["agreement"] = float(np.mean([r["predicted_index"] == CLASSES.index(r["scored_class"])
                                                for r in records]))
        return extra

    def scored(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if mode == "generate":
            return {}
        blocks = {"score": scored_probabilities(records).argmax(axis=1)}
        if prior is not None:
            blocks["score_prior_corrected"] = scored_probabilities(records, prior, prior_tau).argmax(axis=1)
        return blocks

    title = "FacePhi (class scoring)" if mode == "score" else "FacePhi"
    return run_evaluation(dataset, predict_batch, recorded, batch_size, out_dir, progress, title, summarize, no_face, scored,
                overwrite)


def evaluate_encoder(
    encoder: Any,
    data: Any,
    split: str = "test",
    *,
    batch_size: int = 256,
    seed: int = 0,
    limit: int | None = None,
    limit_policy: str = "random",
    out_dir: str | Path | None = None,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """The landmark encoder's own classifier (``class_logits``, argmax) on ``split``: the Table-1
    reference row, with the same metrics and files as :func:`evaluate_model`."""
    dataset, no_face = _as_dataset(data, split, getattr(encoder, "normalizer", None), limit, seed, limit_policy)
    device = module_device(encoder)
    encoder.eval()

    def predict_batch(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        points = torch.stack([torch.as_tensor(item["points"]) for item in batch]).to(device)
        with torch.inference_mode():
            probabilities = torch.softmax(encoder.class_logits(points).float(), dim=-1).cpu().numpy()
        records = []
        for item, probs in zip(batch, probabilities):
            predicted, label = int(probs.argmax()), int(item["label"])
            records.append({
                "index": int(item["index"]), "predicted": CLASSES[predicted], "true": CLASSES[label],
                "correct": predicted == label, "confidence": round(float(probs[predicted]), 6),
                "predicted_index": predicted, "true_index": label,
            })
        return records

    recorded = {"kind": "encoder", "objective": getattr(encoder, "objective", None), "split": split,
                "n_samples": len(dataset), "batch_size": batch_size, "seed": seed, "limit": limit,
                "limit_policy": limit_policy, "split_seed": SPLIT_SEED,
                "model_fingerprint": model_fingerprint(encoder), **dataset_fingerprint(data), **(settings or {})}
    return run_evaluation(dataset, predict_batch, recorded, batch_size, out_dir, progress, "Encoder classifier",
                no_face=no_face, overwrite=overwrite)

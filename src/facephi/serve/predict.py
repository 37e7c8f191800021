"""Prediction for single inputs: image → MediaPipe landmarks → model → answer + class.

Only landmarks reach the model: the inputs (images, folders, videos, ``.npy`` landmark files,
``facephi extract`` folders) are read into landmarks by :mod:`facephi.serve.inputs`.

:class:`Predictor` answers them in batches (:meth:`Predictor.predict_stream`); the scores are the
model's likelihood class probabilities when it has ``class_probabilities`` (``scores_from =
"likelihood"``), else its encoder's own classifier (``"encoder"``). The public API on top of this
module is :class:`facephi.serve.api.FacePhi`.

A checkpoint is either a FacePhi model (answers in words and class probabilities together, from
``FacePhiModel.answer_and_probabilities``: one shared LLM pass, answers drafted from the trained
sentences; the class is read from the answer by keyword matching) or a landmark encoder (its own classifier only).
Which one is decided by the ``config_type`` / ``model_type`` field of its ``config.json``, and the
folder is checked complete before loading (``facephi.model.checkpoints.check_model_dir``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from facephi.scoring.keywords import match_answer
from facephi.labels import CLASSES
from facephi.model.checkpoints import ENCODER, FACEPHI, check_model_dir
from facephi.model.precision import module_device
from facephi.serve.inputs import LandmarkInput, iter_inputs
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

LIKELIHOOD, ENCODER_SCORES = "likelihood", "encoder"
"""Values of ``scores_from``: the model's ``class_probabilities``, or its encoder's classifier."""

_ALWAYS = ("input", "answer", "predicted_class", "scores", "scores_from")
_WHERE = ("faces", "face", "box", "frame", "time_s", "label")


@dataclass
class Prediction:
    """What the model says about one face; ``error`` is set (and the answer empty) when it failed.

    ``to_dict()`` is the JSON object of ``facephi predict --json`` and of the Python API.
    """

    input: str
    answer: str | None = None
    predicted_class: str | None = None  # canonical class, None when the answer names none
    scores: dict[str, float] | None = None  # class -> probability
    scores_from: str | None = None  # LIKELIHOOD | ENCODER_SCORES
    faces: int | None = None
    face: int | None = None
    box: list[float] | None = None
    frame: int | None = None
    time_s: float | None = None
    label: str | None = None
    error: str | None = None
    landmarks: list[list[float]] | None = None  # 478 [x, y] fractions of the image (on request)

    @classmethod
    def of(cls, item: LandmarkInput) -> "Prediction":
        """The prediction of ``item`` before it is answered (where it came from, or its error)."""
        return cls(item.source, faces=item.faces, face=item.face,
                   box=None if item.box is None else [float(v) for v in item.box],
                   frame=item.frame, time_s=item.time_s, label=item.label, error=item.error)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """``input``, ``answer``, ``predicted_class``, ``scores``, ``scores_from`` (always, possibly
        null), then whichever of ``faces``, ``face``, ``box``, ``frame``, ``time_s``, ``label``,
        ``landmarks`` apply; a failed input: ``input``, ``error`` and where it came from."""
        if not self.ok:
            out = {"input": self.input, "error": self.error}
            out.update({k: getattr(self, k) for k in _WHERE if getattr(self, k) is not None})
            return out
        out = {k: getattr(self, k) for k in _ALWAYS}
        out.update({k: getattr(self, k) for k in (*_WHERE, "landmarks") if getattr(self, k) is not None})
        return out


# ------------------------------------------------------------------------------ checkpoints
class Predictor:
    """A loaded checkpoint ready to answer: ``predict(paths)``, ``predict_inputs(inputs)`` or, lazily,
    ``predict_stream(inputs)``. Model calls hold one lock, so threads may share a predictor.

    Args:
        model: a ``FacePhiModel`` (kind ``"facephi"``; answers through ``model.answer``) or a
            ``LandmarkEncoder`` (kind ``"encoder"``).
        instruction: the question asked (default: the paper's first instruction).
    """

    def __init__(self, model: Any, kind: str, instruction: str | None = None,
                 max_new_tokens: int = 32, batch_size: int = 16) -> None:
        from facephi.data.templates import INSTRUCTIONS

        if kind not in (ENCODER, FACEPHI):
            raise ValueError(f"kind must be {ENCODER!r} or {FACEPHI!r}, got {kind!r}")
        self.model, self.kind = model.eval(), kind
        self.instruction = instruction or INSTRUCTIONS[0]
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        self.encoder = model if kind == ENCODER else model.encoder
        self.classes = tuple(getattr(getattr(self.encoder, "config", None), "classes", CLASSES))
        if getattr(self.encoder, "normalizer", None) is None:
            raise FacePhiError("the checkpoint's encoder has no landmark normaliser; raw landmarks "
                               "cannot be prepared for it")
        if kind == FACEPHI and callable(getattr(model, "class_probabilities", None)):
            self.scores_from: str | None = LIKELIHOOD
        elif hasattr(self.encoder, "class_logits"):
            self.scores_from = ENCODER_SCORES
        else:
            self.scores_from = None
        self.precision = "float32"  # what the LLM computes in (FacePhi.from_pretrained may lower it)
        self.lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str | Path, flag: str | None = "--model", **kwargs: Any) -> "Predictor":
        """Load a FacePhi model or landmark encoder folder, checked complete first (``flag``, the
        option that named ``path``, appears in the error messages; see ``check_model_dir``)."""
        kind = check_model_dir(path, flag)
        if kind == ENCODER:
            from facephi.model.encoder import LandmarkEncoder

            return cls(LandmarkEncoder.from_pretrained(path), ENCODER, **kwargs)
        from facephi.model.facephi import FacePhiModel

        return cls(FacePhiModel.from_pretrained(path), FACEPHI, **kwargs)

    def predict(self, paths: Sequence[str | Path], image_size: tuple[float, float] | None = None,
                all_faces: bool = False, fps: float = 2.0) -> list[Prediction]:
        """Predictions for the inputs of :func:`iter_inputs` (images, folders, ``.npy``, datasets, videos)."""
        return list(self.predict_stream(iter_inputs(paths, image_size, all_faces=all_faces, fps=fps)))

    def predict_inputs(self, inputs: Sequence[LandmarkInput]) -> list[Prediction]:
        """One prediction per input, in order; inputs with an error are passed through."""
        return list(self.predict_stream(inputs))

    def predict_stream(self, inputs: Iterable[LandmarkInput], return_landmarks: bool = False) -> Iterator[Prediction]:
        """One prediction per input, in order, answered ``batch_size`` faces at a time as the inputs
        arrive; inputs with an error are passed through. ``return_landmarks`` adds each face's 478
        [x, y] image fractions."""
        pending: list[tuple[LandmarkInput, Prediction]] = []

        def flush() -> Iterator[Prediction]:
            good = [(item, result) for item, result in pending if item.error is None]
            if good:
                raw = np.stack([item.raw for item, _ in good])
                sizes = np.array([item.size for item, _ in good], dtype=np.float32)
                for (item, result), (answer, predicted, probs) in zip(good, self._predict_raw(raw, sizes)):
                    result.answer, result.predicted_class, result.scores = answer, predicted, probs
                    result.scores_from = None if probs is None else self.scores_from
                    if return_landmarks:
                        result.landmarks = [[round(float(x), 5), round(float(y), 5)] for x, y in item.raw[:, :2]]
            yield from (result for _, result in pending)
            pending.clear()

        waiting = 0
        for item in inputs:
            if item.error is not None and not pending:
                yield Prediction.of(item)  # nothing waits for an answer before it
                continue
            pending.append((item, Prediction.of(item)))
            waiting += item.error is None
            if waiting >= self.batch_size:
                yield from flush()
                waiting = 0
        yield from flush()

    def _predict_raw(self, raw: np.ndarray, sizes: np.ndarray) -> list[tuple[str | None, str | None, dict | None]]:
        device = module_device(self.model)
        points = self.encoder.normalize(raw, sizes).to(device)
        instructions = [self.instruction] * len(raw)
        answers: list[str | None] = [None] * len(raw)
        probabilities = None
        with self.lock, torch.inference_mode():
            if self.kind == FACEPHI and self.scores_from == LIKELIHOOD:  # one shared pass (fast path)
                texts, likelihood = self.model.answer_and_probabilities(points, instructions, self.max_new_tokens)
                answers, probabilities = list(texts), likelihood.float().cpu().numpy()
            else:
                if self.scores_from == ENCODER_SCORES:
                    probabilities = torch.softmax(self.encoder.class_logits(points).float(), -1).cpu().numpy()
                if self.kind == FACEPHI:
                    answers = list(self.model.answer(points, instructions, self.max_new_tokens))
        out = []
        for row, answer in enumerate(answers):
            classes = CLASSES if self.scores_from == LIKELIHOOD else self.classes
            probs = None if probabilities is None else {
                name: round(float(p), 4) for name, p in zip(classes, probabilities[row])}
            if answer is not None:
                index = match_answer(answer).predicted
                predicted = None if index is None else CLASSES[index]
            else:
                predicted = max(probs, key=probs.get) if probs else None
            out.append((answer, predicted, probs))
        return out

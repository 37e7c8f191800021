"""Prediction for single inputs: image → MediaPipe landmarks → model → answer + class.

Only landmarks reach the model: an image is read, meshed and dropped; nothing of it is stored.
Inputs (:func:`read_inputs`):

* an image file (any format Pillow reads): the largest face's 478 landmarks, as ``facephi
  extract`` finds them (same image loading and mesh settings);
* a ``.npy`` file of raw MediaPipe coordinates, ``[478, 3]`` or ``[N, 478, 3]`` (x, y as fractions of
  the image width / height, z on the scale of x); ``image_size=(W, H)`` gives the image size,
  by default the image is taken as square (only the aspect ratio matters after normalisation);
* a folder written by ``facephi extract`` (every sample, with its own image size and label).

A checkpoint is either a FacePhi model (answers in words, from ``FacePhiModel.answer``; the class
is read from the answer by keyword matching) or a landmark encoder (its own classifier only).
Which one is decided by the ``config_type`` / ``model_type`` field of its ``config.json``, and the
folder is checked complete before loading (``facephi.model.checkpoints.check_model_dir``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from facephi.scoring.keywords import match_answer
from facephi.labels import CLASSES
from facephi.landmarks.validate import face_problem, face_problems
from facephi.model.checkpoints import ENCODER, FACEPHI, check_model_dir
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 478


@dataclass
class LandmarkInput:
    """Raw landmarks of one face (or why there are none) and where they came from."""

    source: str
    raw: np.ndarray | None = None  # float32 [478, 3], raw MediaPipe coordinates
    size: tuple[float, float] = (1.0, 1.0)  # image (width, height)
    label: str | None = None  # known class (extracted datasets)
    error: str | None = None


@dataclass
class Prediction:
    """What the model says about one input; ``error`` is set (and the rest empty) when it failed."""

    source: str
    answer: str | None = None
    predicted: str | None = None
    probabilities: dict[str, float] | None = None
    label: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# ----------------------------------------------------------------------------------- inputs
def _read_npy(path: Path, size: tuple[float, float]) -> list[LandmarkInput]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return [LandmarkInput(str(path), error=f"unreadable .npy file ({exc})")]
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        return [LandmarkInput(str(path), error=f"expected a numeric array, got dtype {getattr(array, 'dtype', '?')}")]
    if array.shape == (NUM_LANDMARKS, 3):
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (NUM_LANDMARKS, 3):
        return [LandmarkInput(str(path), error=f"wrong array shape {list(array.shape)}: expected "
                                               f"[{NUM_LANDMARKS}, 3] or [N, {NUM_LANDMARKS}, 3] raw MediaPipe landmarks")]
    if len(array) == 0:
        return [LandmarkInput(str(path), error="the array holds no face ([0, 478, 3])")]
    many = len(array) > 1
    inputs = []
    faces = array.astype(np.float32)
    for i, (face, problem) in enumerate(zip(faces, face_problems(faces))):
        source = f"{path}[{i}]" if many else str(path)
        if problem is not None:
            inputs.append(LandmarkInput(source, error=f"not a usable face: {problem}"))
        else:
            inputs.append(LandmarkInput(source, face, size))
    return inputs


def _read_dataset(path: Path) -> list[LandmarkInput]:
    from facephi.landmarks.store import LandmarkSet

    try:
        data = LandmarkSet.load(path, check_faces=False)  # bad faces are refused one by one below
    except FacePhiError as exc:
        return [LandmarkInput(str(path), error=str(exc))]
    inputs = []
    for i, (row, problem) in enumerate(zip(data.samples, face_problems(data.landmarks))):
        label = CLASSES[data.labels[i]] if data.labels[i] >= 0 else None
        if problem is not None:
            inputs.append(LandmarkInput(f"{path}:{row['path']}", label=label, error=f"not a usable face: {problem}"))
        else:
            inputs.append(LandmarkInput(f"{path}:{row['path']}", data.landmarks[i],
                                        (float(data.sizes[i, 0]), float(data.sizes[i, 1])), label))
    return inputs


def _read_image(path: Path, mesher: Any) -> LandmarkInput:
    from facephi.landmarks.images import ImageError, load_image

    try:
        image = load_image(path)
    except ImageError as exc:
        return LandmarkInput(str(path), error=str(exc))
    result = mesher(image.rgb)
    if result.points is None:
        return LandmarkInput(str(path), error="no face found (also retried with a border)")
    problem = face_problem(result.points)
    if problem is not None:
        return LandmarkInput(str(path), error=f"the face mesh is not usable: {problem}")
    if result.faces > 1:
        logger.info("%s: %d faces, using the largest", path, result.faces)
    return LandmarkInput(str(path), result.points, (float(image.width), float(image.height)))


def read_inputs(paths: Iterable[str | Path], image_size: tuple[float, float] | None = None,
                mesher: Any = None) -> list[LandmarkInput]:
    """Landmarks of every input (see the module docstring); failures become inputs with ``error``.

    ``mesher`` (a ``FaceMesher``) is created on the first image when not given.
    """
    size = (1.0, 1.0) if image_size is None else (float(image_size[0]), float(image_size[1]))
    if min(size) <= 0:
        raise FacePhiError(f"image size must be positive, got {size[0]:g} x {size[1]:g}")
    inputs: list[LandmarkInput] = []
    own_mesher = None
    try:
        for path in map(Path, paths):
            if not path.exists():
                inputs.append(LandmarkInput(str(path), error="no such file or folder"))
            elif path.is_dir():
                inputs += _read_dataset(path)
            elif path.suffix.lower() == ".npy":
                inputs += _read_npy(path, size)
            else:
                if mesher is None:
                    from facephi.landmarks.mesh import FaceMesher

                    mesher = own_mesher = FaceMesher()
                inputs.append(_read_image(path, mesher))
    finally:
        if own_mesher is not None:
            own_mesher.close()
    return inputs


# ------------------------------------------------------------------------------ checkpoints
class Predictor:
    """A loaded checkpoint ready to answer: ``predict(paths)`` or ``predict_inputs(inputs)``.

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

    def predict(self, paths: Sequence[str | Path], image_size: tuple[float, float] | None = None) -> list[Prediction]:
        """Predictions for image files, ``.npy`` landmark files and extracted dataset folders."""
        return self.predict_inputs(read_inputs(paths, image_size))

    def predict_inputs(self, inputs: Sequence[LandmarkInput]) -> list[Prediction]:
        """One prediction per input, in order; inputs with an error are passed through."""
        results: list[Prediction] = [Prediction(i.source, label=i.label, error=i.error) for i in inputs]
        good = [k for k, i in enumerate(inputs) if i.error is None]
        for start in range(0, len(good), self.batch_size):
            chunk = good[start:start + self.batch_size]
            raw = np.stack([inputs[k].raw for k in chunk])
            sizes = np.array([inputs[k].size for k in chunk], dtype=np.float32)
            for k, (answer, predicted, probs) in zip(chunk, self._predict_raw(raw, sizes)):
                results[k].answer, results[k].predicted, results[k].probabilities = answer, predicted, probs
        return results

    def _predict_raw(self, raw: np.ndarray, sizes: np.ndarray) -> list[tuple[str | None, str | None, dict | None]]:
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        points = self.encoder.normalize(raw, sizes).to(device)
        with torch.inference_mode():
            logits = self.encoder.class_logits(points) if hasattr(self.encoder, "class_logits") else None
            probabilities = None if logits is None else torch.softmax(logits.float(), -1).cpu().numpy()
            answers: list[str | None] = [None] * len(raw)
            if self.kind == FACEPHI:
                answers = list(self.model.answer(points, [self.instruction] * len(raw), self.max_new_tokens))
        out = []
        for row, answer in enumerate(answers):
            probs = None if probabilities is None else {
                name: round(float(p), 4) for name, p in zip(self.classes, probabilities[row])}
            if answer is not None:
                index = match_answer(answer).predicted
                predicted = None if index is None else CLASSES[index]
            else:
                predicted = max(probs, key=probs.get) if probs else None
            out.append((answer, predicted, probs))
        return out

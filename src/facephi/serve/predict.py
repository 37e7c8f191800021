"""Prediction for single inputs: image → MediaPipe landmarks → model → answer + class.

Only landmarks reach the model: an image is read, meshed and dropped; nothing of it is stored.
Inputs (:func:`read_inputs`):

* an image file (any format Pillow reads): the largest face's 478 landmarks, as ``facephi
  extract`` finds them (same image loading and mesh settings), or every face with
  ``all_faces=True``; each face has its box in pixels;
* a folder of images (not an extracted dataset: no ``samples.csv`` / ``landmarks.npy``): every
  image file below it (:data:`IMAGE_SUFFIXES`, recursive, hidden entries skipped), in sorted order;
* a video (:data:`VIDEO_SUFFIXES`, decoded with PyAV): ``fps`` frames per second of video, each
  answered as an image, with its ``frame`` index and ``time_s``;
* a ``.npy`` file of raw MediaPipe coordinates, ``[478, 3]`` or ``[N, 478, 3]`` (x, y as fractions of
  the image width / height, z on the scale of x); ``image_size=(W, H)`` gives the image size,
  by default the image is taken as square (only the aspect ratio matters after normalisation);
* a folder written by ``facephi extract`` (every sample, with its own image size and label).

:class:`Predictor` answers them in batches (:meth:`Predictor.predict_stream`); the scores are the
model's likelihood class probabilities when it has ``class_probabilities`` (``scores_from =
"likelihood"``), else its encoder's own classifier (``"encoder"``). The public API on top of this
module is :class:`facephi.serve.api.FacePhi`.

A checkpoint is either a FacePhi model (answers in words, from ``FacePhiModel.answer``; the class
is read from the answer by keyword matching) or a landmark encoder (its own classifier only).
Which one is decided by the ``config_type`` / ``model_type`` field of its ``config.json``, and the
folder is checked complete before loading (``facephi.model.checkpoints.check_model_dir``).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from facephi.scoring.keywords import match_answer
from facephi.labels import CLASSES
from facephi.landmarks.validate import face_problem, face_problems
from facephi.model.checkpoints import ENCODER, FACEPHI, check_model_dir
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 478

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""Files taken from a folder of images (lower-case suffixes)."""

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
"""Files read as videos (lower-case suffixes)."""

LIKELIHOOD, ENCODER_SCORES = "likelihood", "encoder"
"""Values of ``scores_from``: the model's ``class_probabilities``, or its encoder's classifier."""

NO_FACE = "no face found (also retried with a border)"


@dataclass
class LandmarkInput:
    """Raw landmarks of one face (or why there are none) and where they came from."""

    source: str
    raw: np.ndarray | None = None  # float32 [478, 3], raw MediaPipe coordinates
    size: tuple[float, float] = (1.0, 1.0)  # image (width, height)
    label: str | None = None  # known class (extracted datasets)
    error: str | None = None
    faces: int | None = None  # faces found in the image / frame
    face: int | None = None  # which of them, 0 = the largest
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in pixels
    frame: int | None = None  # video frame index
    time_s: float | None = None  # video time of the frame


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

    # names of the first version of this class
    @property
    def source(self) -> str:
        return self.input

    @property
    def predicted(self) -> str | None:
        return self.predicted_class

    @property
    def probabilities(self) -> dict[str, float] | None:
        return self.scores

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


# ----------------------------------------------------------------------------------- inputs
def _read_npy(path: Path, size: tuple[float, float]) -> list[LandmarkInput]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return [LandmarkInput(str(path), error=f"unreadable .npy file ({exc})")]
    return landmark_inputs(array, size, str(path))


def landmark_inputs(array: Any, size: tuple[float, float], source: str) -> list[LandmarkInput]:
    """Inputs of raw MediaPipe landmarks ``[478, 3]`` or ``[N, 478, 3]`` (``source[i]`` for each of
    several faces); a wrong shape or type, or an unusable face, becomes an input with ``error``."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        return [LandmarkInput(source, error=f"expected a numeric array, got dtype {getattr(array, 'dtype', '?')}")]
    if array.shape == (NUM_LANDMARKS, 3):
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (NUM_LANDMARKS, 3):
        return [LandmarkInput(source, error=f"wrong array shape {list(array.shape)}: expected "
                                         f"[{NUM_LANDMARKS}, 3] or [N, {NUM_LANDMARKS}, 3] raw MediaPipe landmarks")]
    if len(array) == 0:
        return [LandmarkInput(source, error="the array holds no face ([0, 478, 3])")]
    many = len(array) > 1
    inputs = []
    faces = array.astype(np.float32)
    for i, (face, problem) in enumerate(zip(faces, face_problems(faces))):
        name = f"{source}[{i}]" if many else source
        if problem is not None:
            inputs.append(LandmarkInput(name, error=f"not a usable face: {problem}"))
        else:
            inputs.append(LandmarkInput(name, face, size))
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


def read_rgb(rgb: np.ndarray, size: tuple[float, float], source: str, mesher: Any, all_faces: bool = False,
             **where: Any) -> list[LandmarkInput]:
    """The largest face (or, with ``all_faces``, every face) of a uint8 RGB image whose original
    size is ``size`` = (width, height); ``where`` (``frame``, ``time_s``) is copied to each input."""
    faces = mesher.find_faces(rgb, size)
    if not faces:
        return [LandmarkInput(source, error=NO_FACE, faces=0, **where)]
    if len(faces) > 1 and not all_faces:
        logger.info("%s: %d faces, using the largest", source, len(faces))
    inputs = []
    for k, face in enumerate(faces if all_faces else faces[:1]):
        problem = face_problem(face.points)
        common = dict(faces=len(faces), face=k, box=face.box, **where)
        if problem is not None:
            inputs.append(LandmarkInput(source, error=f"the face mesh is not usable: {problem}", **common))
        else:
            inputs.append(LandmarkInput(source, face.points, (float(size[0]), float(size[1])), **common))
    return inputs


def _read_image(image_source: Path | bytes, mesher: Any, all_faces: bool = False,
                source: str | None = None) -> list[LandmarkInput]:
    from facephi.landmarks.images import ImageError, load_image

    source = str(image_source) if source is None else source
    try:
        image = load_image(image_source, name=source)
    except ImageError as exc:
        return [LandmarkInput(source, error=str(exc))]
    return read_rgb(image.rgb, (float(image.width), float(image.height)), source, mesher, all_faces)


def read_image_bytes(data: bytes, mesher: Any, all_faces: bool = False, source: str = "<bytes>") -> list[LandmarkInput]:
    """Like an image file, from its encoded bytes (any format Pillow reads; same loading rules), decoded
    in memory: the image is never written anywhere."""
    return _read_image(bytes(data), mesher, all_faces, source)


def is_dataset(folder: Path) -> bool:
    """Whether ``folder`` is (meant to be) a ``facephi extract`` folder rather than a folder of images."""
    return (folder / "samples.csv").exists() or (folder / "landmarks.npy").exists()


def image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in relative) and path.is_file():
            found.append(path)
    return sorted(found)


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_video(path: Path, fps: float, mesher: Any, all_faces: bool = False,
               max_side: int = 1280) -> Iterator[LandmarkInput]:
    """Faces of ``fps`` frames per second of video (the first frame at or after each multiple of
    ``1 / fps`` s); frames are downscaled to ``max_side`` for the mesh (boxes stay in the video's
    pixels). A file that cannot be opened or decoded gives one input with ``error``."""
    import av

    if not fps > 0:
        raise FacePhiError(f"fps must be > 0, got {fps}")
    source = str(path)
    try:
        container = av.open(source)
    except (av.FFmpegError, OSError, ValueError) as exc:
        yield LandmarkInput(source, error=f"unreadable video ({exc})")
        return
    sampled = decoded = 0
    with container:
        if not container.streams.video:
            yield LandmarkInput(source, error="no video stream in the file")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        start = float(stream.start_time * base) if stream.start_time is not None and base is not None else 0.0
        rate = float(stream.average_rate or 25)
        next_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded += 1
                time = float(frame.time) - start if frame.time is not None else index / rate
                if time + 1e-6 < next_time:
                    continue
                next_time = (math.floor(time * fps + 1e-6) + 1) / fps
                width, height = frame.width, frame.height
                scale = min(1.0, max_side / max(width, height))
                rgb = frame.to_ndarray(format="rgb24", width=max(1, round(width * scale)),
                                       height=max(1, round(height * scale)))
                sampled += 1
                yield from read_rgb(rgb, (float(width), float(height)), source, mesher, all_faces,
                                    frame=index, time_s=round(time, 3))
        except (av.FFmpegError, OSError, ValueError) as exc:
            yield LandmarkInput(source, error=f"video decoding failed after {decoded} frames ({exc})")
            return
    if sampled == 0:
        yield LandmarkInput(source, error="no frame could be decoded")


def iter_inputs(paths: Iterable[str | Path], image_size: tuple[float, float] | None = None,
                mesher: Any = None, all_faces: bool = False, fps: float = 2.0) -> Iterator[LandmarkInput]:
    """Landmarks of every input, lazily (see the module docstring); failures become inputs with
    ``error``. ``mesher`` (a ``FaceMesher``) is created on the first image when not given."""
    size = (1.0, 1.0) if image_size is None else (float(image_size[0]), float(image_size[1]))
    if min(size) <= 0:
        raise FacePhiError(f"image size must be positive, got {size[0]:g} x {size[1]:g}")
    own_mesher = None

    def get_mesher() -> Any:
        nonlocal mesher, own_mesher
        if mesher is None:
            from facephi.landmarks.mesh import FaceMesher

            mesher = own_mesher = FaceMesher()
        return mesher

    try:
        for path in map(Path, paths):
            if not path.exists():
                yield LandmarkInput(str(path), error="no such file or folder")
            elif path.is_dir() and is_dataset(path):
                yield from _read_dataset(path)
            elif path.is_dir():
                images = image_files(path)
                if not images:
                    yield LandmarkInput(str(path), error=f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the "
                                                         "folder, nor samples.csv + landmarks.npy of `facephi extract`")
                for image in images:
                    yield from _read_image(image, get_mesher(), all_faces)
            elif path.suffix.lower() == ".npy":
                yield from _read_npy(path, size)
            elif is_video(path):
                yield from read_video(path, fps, get_mesher(), all_faces)
            else:
                yield from _read_image(path, get_mesher(), all_faces)
    finally:
        if own_mesher is not None:
            own_mesher.close()


def read_inputs(paths: Iterable[str | Path], image_size: tuple[float, float] | None = None,
                mesher: Any = None, all_faces: bool = False, fps: float = 2.0) -> list[LandmarkInput]:
    """Every input of :func:`iter_inputs`, as a list."""
    return list(iter_inputs(paths, image_size, mesher, all_faces, fps))


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
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        points = self.encoder.normalize(raw, sizes).to(device)
        instructions = [self.instruction] * len(raw)
        with self.lock, torch.inference_mode():
            if self.scores_from == LIKELIHOOD:
                probabilities = self.model.class_probabilities(points, instructions).float().cpu().numpy()
            elif self.scores_from == ENCODER_SCORES:
                probabilities = torch.softmax(self.encoder.class_logits(points).float(), -1).cpu().numpy()
            else:
                probabilities = None
            answers: list[str | None] = [None] * len(raw)
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

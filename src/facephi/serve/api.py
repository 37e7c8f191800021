"""The Python API of FacePhi: load a model once, ask it about images, landmarks and videos.

```python
from facephi import FacePhi

model = FacePhi.from_pretrained()            # the shipped model (or $FACEPHI_MODEL, or a path)
model.predict("photo.jpg")                   # [{"input", "answer", "predicted_class", "scores", ...}]
model.predict("group.jpg", all_faces=True)   # one dict per face, largest first, each with its "box"
model.predict_one("photo.jpg")               # the largest face's dict itself
model.predict_video("clip.mp4").plot("clip.png")
```

``predict`` always returns a list (one dict per face or failed input, like deepface's ``analyze``);
``predict_one`` is the convenience for one image's largest face. Every answer is a dict with the
fields of ``facephi predict --json`` (see :meth:`facephi.serve.predict.Prediction.to_dict`); an input
that cannot be answered (no face, unreadable file) gives ``{"input": ..., "error": ...}`` instead of
raising. ``facephi predict``
is this class with a command line around it. One lock guards the model and one the face mesh, so
threads (a web server's) may share one ``FacePhi``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from numbers import Integral
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from facephi.labels import CLASSES, display_name
from facephi.model.defaults import MODEL_ENV, SHIPPED_MODEL, default_model
from facephi.model.precision import PRECISIONS, resolve_device
from facephi.serve.config import check_image_size
from facephi.serve.inputs import LandmarkInput, iter_inputs, landmark_inputs, read_image_bytes, read_rgb, read_video
from facephi.serve.predict import Predictor
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_path

IMAGE_MAX_SIDE = 1280
"""Images are meshed at most this large (longest side, in pixels), as image files are."""

Item = Any
"""What ``predict`` accepts: a path (image, folder, ``.npy``, ``facephi extract`` folder, video),
an RGB uint8 array ``[H, W, 3]``, a PIL image (one opened lazily is decoded as a file would be: a
large JPEG at reduced size), encoded image bytes, or raw landmarks ``[478, 3]`` / ``[N, 478, 3]``
(any non-uint8 numeric array, or a 2-D one)."""


class _TorchThreads:
    """torch's CPU thread count is one setting of the process: :meth:`scope` sets it for a block and
    restores the previous value when the last overlapping block (any thread) ends; overlapping blocks
    asking for other counts run with the first one's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = 0

    @contextmanager
    def scope(self, threads: int | None) -> Iterator[None]:
        if threads is None:
            yield
            return
        import torch

        with self._lock:
            if self._depth == 0:
                self._saved = torch.get_num_threads()
                torch.set_num_threads(threads)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    torch.set_num_threads(self._saved)


torch_threads = _TorchThreads().scope
"""``with torch_threads(n):`` runs the block on ``n`` torch CPU threads (None: unchanged), then restores
the process's setting."""


def model_path(path: str | Path | None) -> Path:
    """``path``, or the default model (``$FACEPHI_MODEL``, else the shipped one) when None; a
    missing shipped model is a one-line :class:`FacePhiError`."""
    if path is not None:
        return Path(path)
    path = default_model()
    if path == SHIPPED_MODEL and not (path / "config.json").is_file():
        raise FacePhiError(f"no model given, and the shipped model {SHIPPED_MODEL} is missing from this "
                           f"installation: pass a model folder (--model) or set ${MODEL_ENV}")
    return path


class _SharedMesher:
    """One MediaPipe face mesh for every thread: created on first use, one image at a time."""

    def __init__(self) -> None:
        self._mesher: Any = None
        self._lock = threading.Lock()

    def find_faces(self, rgb: np.ndarray, size: tuple[float, float] | None = None) -> list[Any]:
        with self._lock:
            if self._mesher is None:
                from facephi.landmarks.mesh import FaceMesher

                self._mesher = FaceMesher()
            return self._mesher.find_faces(rgb, size)

    def close(self) -> None:
        with self._lock:
            if self._mesher is not None:
                self._mesher.close()
                self._mesher = None


def per_second(frames: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean class probabilities of each second of video (the largest face of each answered frame):
    ``{"second", "scores", "predicted_class" (the most probable class), "frames" (how many)}``."""
    seconds: dict[int, list[list[float]]] = {}
    names: list[str] = list(CLASSES)
    for row in frames:
        if row.get("error") or not row.get("scores") or row.get("face", 0) != 0 or row.get("time_s") is None:
            continue
        names = list(row["scores"])
        seconds.setdefault(int(row["time_s"] // 1), []).append([row["scores"][n] for n in names])
    out = []
    for second in sorted(seconds):
        mean = np.mean(seconds[second], axis=0)
        scores = {name: round(float(p), 4) for name, p in zip(names, mean)}
        out.append({"second": second, "scores": scores, "predicted_class": max(scores, key=scores.get),
                    "frames": len(seconds[second])})
    return out


@dataclass
class VideoPrediction:
    """Answers for the sampled frames of one video (``frames``: one dict per face, with ``frame``
    and ``time_s``) and their per-second smoothing (``per_second``, see :func:`per_second`)."""

    input: str
    fps: float
    frames: list[dict[str, Any]] = field(default_factory=list)
    per_second: list[dict[str, Any]] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Frames with an answered face."""
        return len({row.get("frame") for row in self.frames if "error" not in row})

    @property
    def sampled(self) -> int:
        return len({row["frame"] for row in self.frames if row.get("frame") is not None})

    def summary(self) -> dict[str, Any]:
        """The last JSON object ``facephi predict --json`` prints for a video."""
        return {"input": self.input, "fps": self.fps, "frames_sampled": self.sampled,
                "frames_answered": self.answered, "per_second": self.per_second}

    def plot(self, path: str | Path) -> Path:
        """Write a PNG of the class probabilities over time: each sampled frame (thin lines, dots)
        and each second's mean (thick steps). Returns ``path``."""
        from matplotlib.figure import Figure

        path = Path(path)
        rows = [r for r in self.frames if "error" not in r and r.get("scores") and r.get("face", 0) == 0]
        names = list(rows[0]["scores"]) if rows else list(CLASSES)
        fig = Figure(figsize=(9, 4), dpi=110)
        ax = fig.subplots()
        colours = [f"C{i}" for i in range(len(names))]
        for name, colour in zip(names, colours):
            if rows:
                ax.plot([r["time_s"] for r in rows], [r["scores"][name] for r in rows], color=colour,
                        lw=0.8, alpha=0.45, marker=".", ms=3)
            xs, ys = [], []
            for second in self.per_second:
                if xs and xs[-1] != second["second"]:  # a second without an answered face: a gap
                    xs.append(np.nan)
                    ys.append(np.nan)
                xs += [second["second"], second["second"] + 1]
                ys += [second["scores"][name]] * 2
            if xs:
                ax.plot(xs, ys, color=colour, lw=2.2, label=display_name(name))
        if not rows:
            ax.text(0.5, 0.5, "no face answered", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("probability")
        ax.set_title(f"{Path(self.input).name}: class probabilities ({self.fps:g} frames/s; thick: mean per second)",
                     fontsize=9)
        if self.per_second:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return path


class FacePhi:
    """A loaded FacePhi model (or landmark encoder) ready to answer; see the module docstring.

    Build it with :meth:`from_pretrained`; ``FacePhi(predictor)`` wraps an existing
    :class:`~facephi.serve.predict.Predictor`.
    """

    def __init__(self, predictor: Predictor, threads: int | None = None) -> None:
        self.predictor = predictor
        self.threads = threads
        self._mesher = _SharedMesher()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: Any = "auto", threads: int | None = None,
                        instruction: str | None = None, max_new_tokens: int = 32, batch_size: int = 16,
                        precision: str = "float32", *, flag: str | None = None,
                        answer_prior_tau: float | None = None, encoder_weight: float | None = None) -> "FacePhi":
        """Load a FacePhi model or landmark encoder folder (default: ``$FACEPHI_MODEL``, else the
        shipped ``facephi/models/facephi-smollm2-ferplus``) onto ``device`` ("auto": CUDA when available).

        ``threads``: torch CPU threads while this model answers (torch's thread count is one setting
        of the process: it is set for each call of this object and restored after, see
        :func:`torch_threads`); ``instruction``: the question asked (default: the paper's
        first); ``max_new_tokens``: answer length limit; ``batch_size``: faces per model call;
        ``precision``: what the LLM computes in (``float32``, the reported figures; ``bfloat16``;
        ``auto``: bfloat16 where the CPU or GPU has native bfloat16 arithmetic, else float32; see
        :mod:`facephi.model.precision`); ``flag``: the command-line option that named ``path``, for
        error messages; ``answer_prior_tau``, ``encoder_weight``: τ and λ of the model's answer prior
        (``model/answer_prior.py``; None: the model's own).
        """
        if precision not in PRECISIONS:
            raise FacePhiError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        target = resolve_device(device, what="device")  # a wrong device fails before the model loads
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("threads", threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
                raise FacePhiError(f"{name} must be a whole number >= 1, got {value!r}")
        with torch_threads(threads):
            predictor = Predictor.from_pretrained(model_path(path), flag=flag, instruction=instruction,
                                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
            predictor.model.to(target)
            if predictor.kind == "facephi":
                predictor.precision = predictor.model.set_precision(precision)
                if answer_prior_tau is not None:
                    predictor.model.answer_prior.set_tau(answer_prior_tau)
                if encoder_weight is not None:
                    predictor.model.answer_prior.set_encoder_weight(encoder_weight)
            else:
                for name, value in (("answer_prior_tau", answer_prior_tau), ("encoder_weight", encoder_weight)):
                    if value is not None:
                        raise FacePhiError(f"{name}: applies to a FacePhi model's answers, {path} is a landmark "
                                           "encoder")
        return cls(predictor, threads=None if threads is None else int(threads))

    @property
    def kind(self) -> str:
        """``"facephi"`` (answers in words) or ``"encoder"`` (a landmark encoder's classifier only)."""
        return self.predictor.kind

    @property
    def precision(self) -> str:
        """What the LLM computes in: ``"float32"`` or ``"bfloat16"``."""
        return self.predictor.precision

    @property
    def scores_from(self) -> str | None:
        """``"likelihood"`` or ``"encoder"``: where the ``scores`` of the answers come from."""
        return self.predictor.scores_from

    # ------------------------------------------------------------------------- inputs
    def _inputs(self, item: Item, all_faces: bool, image_size: tuple[float, float] | None,
                fps: float) -> Iterator[LandmarkInput]:
        if isinstance(item, (str, Path)):
            yield from iter_inputs([item], image_size, self._mesher, all_faces, fps)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            yield from read_image_bytes(bytes(item), self._mesher, all_faces)
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3:
            if item.shape[2] != 3:
                yield LandmarkInput("<array>", error=f"an image array must be RGB [H, W, 3], got {list(item.shape)}")
                return
            from facephi.landmarks.images import ImageError, check_size, downscale

            height, width = item.shape[:2]
            try:
                check_size(width, height, "the array")
            except ImageError as exc:
                yield LandmarkInput("<array>", error=str(exc))
                return
            yield from read_rgb(downscale(np.ascontiguousarray(item), IMAGE_MAX_SIDE), (float(width), float(height)),
                                "<array>", self._mesher, all_faces)
        elif isinstance(item, np.ndarray):
            size = (1.0, 1.0) if image_size is None else check_image_size(image_size)
            yield from landmark_inputs(item, size, "<landmarks>")
        elif hasattr(item, "convert") and hasattr(item, "size") and hasattr(item, "mode"):  # a PIL image
            from facephi.landmarks.images import ImageError, from_pil

            name = str(getattr(item, "filename", "") or "<image>")
            try:
                image = from_pil(item, IMAGE_MAX_SIDE, name)
            except ImageError as exc:
                yield LandmarkInput(name, error=str(exc))
                return
            yield from read_rgb(image.rgb, (float(image.width), float(image.height)), name, self._mesher, all_faces)
        else:
            raise TypeError(f"cannot predict from a {type(item).__name__}: expected a path, an RGB uint8 array, "
                            "a PIL image, encoded image bytes or a landmark array")

    # ------------------------------------------------------------------------ answers
    def iter_predict(self, items: Iterable[Item], all_faces: bool = False,
                     image_size: tuple[float, float] | None = None, return_landmarks: bool = False,
                     fps: float = 2.0) -> Iterator[dict[str, Any]]:
        """Answers for every face of every item, in order, batched across items as they are read."""
        inputs = (i for item in items for i in self._inputs(item, all_faces, image_size, fps))
        answers = self.predictor.predict_stream(inputs, return_landmarks=return_landmarks)
        while True:
            with torch_threads(self.threads):  # only while this model works, not between answers
                prediction = next(answers, None)
            if prediction is None:
                return
            yield prediction.to_dict()

    def predict_many(self, items: Iterable[Item], all_faces: bool = False,
                     image_size: tuple[float, float] | None = None, return_landmarks: bool = False) -> list[dict[str, Any]]:
        """One dict per face (or per failed input) of all ``items``, in order (see :data:`Item`)."""
        return list(self.iter_predict(items, all_faces, image_size, return_landmarks))

    def predict(self, x: Item, all_faces: bool = False, image_size: tuple[float, float] | None = None,
                return_landmarks: bool = False) -> list[dict[str, Any]]:
        """The answers for one image, landmark set or file, always as a list: one dict per face (an
        image's largest face only unless ``all_faces``: then every face, largest first), per face of
        ``[N, 478, 3]`` landmarks, per image of a folder; ``error`` dicts for what cannot be answered.
        ``image_size=(W, H)`` is the image size of raw landmarks in pixels (default: square)."""
        return self.predict_many([x], all_faces, image_size, return_landmarks)

    def predict_one(self, x: Item, image_size: tuple[float, float] | None = None,
                    return_landmarks: bool = False) -> dict[str, Any]:
        """The answer for the largest face of one image (or the one face of ``[478, 3]`` landmarks):
        ``predict(x)[0]``, a dict (with ``error`` when it cannot be answered). :class:`FacePhiError`
        when ``x`` gives several answers (a folder, ``[N, 478, 3]``, a video): use :meth:`predict`."""
        rows = self.predict_many([x], False, image_size, return_landmarks)
        if len(rows) != 1:
            raise FacePhiError(f"predict_one answers one image or face, and this input gave {len(rows)} answers: "
                               "use predict, which returns them all")
        return rows[0]

    def predict_image_bytes(self, data: bytes, all_faces: bool = False,
                            return_landmarks: bool = False) -> list[dict[str, Any]]:
        """One dict per face of an encoded image (the largest only unless ``all_faces``); with
        ``return_landmarks`` each holds ``landmarks``, 478 [x, y] fractions of the image."""
        return self.predict_many([bytes(data)], all_faces, None, return_landmarks)

    def predict_landmarks(self, landmarks: Any, image_size: tuple[float, float] | None,
                          return_landmarks: bool = False) -> list[dict[str, Any]]:
        """One dict per face of raw MediaPipe landmarks ``[478, 3]`` or ``[N, 478, 3]`` (x, y as
        fractions of the ``image_size`` = (W, H) image; None: square)."""
        array = np.asarray(landmarks, dtype=np.float32)
        return self.predict_many([array], False, image_size, return_landmarks)

    def predict_video(self, path: str | Path, fps: float = 2.0, all_faces: bool = False) -> VideoPrediction:
        """Answers for ``fps`` frames per second of a video (decoded with PyAV): ``frames`` (one
        dict per face, with ``frame`` and ``time_s``; a frame without a face is an ``error`` row),
        ``per_second`` (mean class probabilities of each second) and ``plot(path)`` (a PNG)."""
        inputs = read_video(Path(path), fps, self._mesher, all_faces)
        with torch_threads(self.threads):
            frames = [p.to_dict() for p in self.predictor.predict_stream(inputs)]
        return VideoPrediction(str(path), float(fps), frames, per_second(frames))

    def close(self) -> None:
        """Release the face mesh (the model stays usable; a new mesh is made when needed)."""
        self._mesher.close()

    def __enter__(self) -> "FacePhi":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

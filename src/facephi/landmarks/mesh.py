"""MediaPipe FaceMesh wrapper: 478 refined landmarks, padding retry, largest face (or every face
with its box), face count.

What MediaPipe cannot take (an empty image, not uint8 ``[H, W, 3]``) or fails on is a
:class:`MeshError`; the graph is rebuilt after a failure (MediaPipe's stays broken otherwise).
MediaPipe's one-time C++ warning "Using NORM_RECT without IMAGE_DIMENSIONS" (absl logging, which no
environment variable silences) is kept off stderr: calls are silenced until the first face is found.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from facephi.presets import NUM_LANDMARKS

_WARNED = False  # MediaPipe printed its once-per-process NORM_RECT warning (into the silenced stderr)


class MeshError(Exception):
    """An image the face mesh cannot take, or MediaPipe failing on it (one line, the image's problem)."""


@dataclass(frozen=True)
class MeshResult:
    """Landmarks of the largest face in an image, or ``points=None`` when no face was found.

    ``points`` is float32 ``[478, 3]`` in MediaPipe's convention for the *original* image: x and y as
    fractions of its width and height, z on roughly the scale of x (a fraction of the width).
    """

    points: np.ndarray | None
    faces: int
    padded: bool  # found only on the retry with a black border


@dataclass(frozen=True)
class Face:
    """One face of an image: its landmarks (as in :class:`MeshResult`) and its box.

    ``box`` is ``(x0, y0, x1, y1)``: the landmarks' extent in pixels of the image size given to
    :meth:`FaceMesher.find_faces`, clipped to the image.
    """

    points: np.ndarray
    box: tuple[float, float, float, float]
    padded: bool


class FaceMesher:
    """One MediaPipe FaceMesh (``static_image_mode=True, refine_landmarks=True``) reused across images.

    Args:
        max_faces: faces MediaPipe may return; the largest is kept and the count reported.
        padding: on a miss, retry once with a black border of this fraction of the width / height
            on each side, then map the points back to the original frame.
        min_detection_confidence: MediaPipe's face detector threshold.
    """

    def __init__(self, max_faces: int = 4, padding: float = 0.25, min_detection_confidence: float = 0.5):
        self.padding = padding
        self._options = dict(static_image_mode=True, refine_landmarks=True, max_num_faces=max_faces,
                             min_detection_confidence=min_detection_confidence)
        self._mesh = self._build()

    def _build(self) -> object:
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with quiet_stderr():  # MediaPipe/TFLite print start-up banners from C++ on the first call
            import mediapipe as mp

            mesh = mp.solutions.face_mesh.FaceMesh(**self._options)
            mesh.process(np.zeros((64, 64, 3), dtype=np.uint8))
        return mesh

    def process(self, rgb: np.ndarray) -> list[np.ndarray]:
        """The bare model call: every face in a uint8 RGB image as float32 ``[478, 3]`` arrays.

        Raises :class:`MeshError` for an image MediaPipe cannot take or fails on."""
        global _WARNED
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            shape = list(getattr(rgb, "shape", []))
            raise MeshError(f"the face mesh needs an RGB uint8 image [H, W, 3], got {getattr(rgb, 'dtype', '?')} "
                            f"{shape}")
        if min(rgb.shape[:2]) < 1:
            raise MeshError(f"empty image ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
        try:
            with contextlib.nullcontext() if _WARNED else quiet_stderr():
                result = self._mesh.process(np.ascontiguousarray(rgb))
        except RuntimeError as exc:  # MediaPipe's graph failed (and stays broken): rebuild it
            self._mesh.close()
            self._mesh = self._build()
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise MeshError(f"the face mesh failed on the image ({first.strip()})") from None
        faces = result.multi_face_landmarks or []
        _WARNED = _WARNED or bool(faces)
        return [
            np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32) for face in faces
        ]

    def __call__(self, rgb: np.ndarray) -> MeshResult:
        """Landmarks of the largest face, retrying once with a black border when none is found."""
        faces = self.find_faces(rgb)
        if not faces:
            return MeshResult(points=None, faces=0, padded=False)
        return MeshResult(points=faces[0].points, faces=len(faces), padded=faces[0].padded)

    def find_faces(self, rgb: np.ndarray, size: tuple[float, float] | None = None) -> list[Face]:
        """Every face, largest first (the one ``__call__`` keeps), with its box in pixels of
        ``size`` = the original image's (width, height) (default: ``rgb``'s own); retried once
        with a black border when none is found."""
        faces = self.process(rgb)
        padded = False
        if not faces and self.padding > 0:
            faces = self._process_padded(rgb)
            padded = bool(faces)
        h, w = rgb.shape[:2]
        width, height = (float(w), float(h)) if size is None else (float(size[0]), float(size[1]))
        faces = sorted(faces, key=lambda pts: -_box_area(pts, w, h))
        return [Face(pts, _box(pts, width, height), padded) for pts in faces]

    def _process_padded(self, rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        pad_x, pad_y = round(self.padding * w), round(self.padding * h)
        framed = np.zeros((h + 2 * pad_y, w + 2 * pad_x, 3), dtype=np.uint8)
        framed[pad_y : pad_y + h, pad_x : pad_x + w] = rgb
        return [_unpad(pts, w, h, pad_x, pad_y) for pts in self.process(framed)]

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceMesher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unpad(points: np.ndarray, w: int, h: int, pad_x: int, pad_y: int) -> np.ndarray:
    """Map landmarks found in the padded frame back to fractions of the original ``w × h`` image."""
    framed_w, framed_h = w + 2 * pad_x, h + 2 * pad_y
    out = points.copy()
    out[:, 0] = (points[:, 0] * framed_w - pad_x) / w
    out[:, 1] = (points[:, 1] * framed_h - pad_y) / h
    out[:, 2] = points[:, 2] * framed_w / w
    return out


def _box(points: np.ndarray, width: float, height: float) -> tuple[float, float, float, float]:
    x0, y0 = np.clip(points[:, :2].min(axis=0), 0.0, 1.0)
    x1, y1 = np.clip(points[:, :2].max(axis=0), 0.0, 1.0)
    return (round(float(x0) * width, 1), round(float(y0) * height, 1),
            round(float(x1) * width, 1), round(float(y1) * height, 1))


def _box_area(points: np.ndarray, w: int, h: int) -> float:
    span = points[:, :2].max(axis=0) - points[:, :2].min(axis=0)
    return float(span[0] * w * span[1] * h)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging bypasses ``sys.stderr``) for the duration of the block."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture or an unusual stream
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)

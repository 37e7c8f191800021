"""What ``facephi predict``, the Python API and the HTTP API read: images, folders, videos, ``.npy``
landmark files and ``facephi extract`` folders, each turned into :class:`LandmarkInput` (raw
MediaPipe landmarks of one face, or why there are none).

Only landmarks leave this module: an image is read, meshed and dropped; nothing of it is stored.
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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from facephi.labels import CLASSES
from facephi.landmarks.validate import face_problem, face_problems
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 478

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""Files taken from a folder of images (lower-case suffixes)."""

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
"""Files read as videos (lower-case suffixes)."""

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

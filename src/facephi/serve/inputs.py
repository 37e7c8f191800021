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
  a sub-folder that cannot be read is an input with ``error``, as is an image that cannot be read;
* a video (:data:`VIDEO_SUFFIXES`, decoded with PyAV): ``fps`` frames per second of video, each
  answered as an image, with its ``frame`` index and ``time_s``;
* a ``.npy`` file of raw MediaPipe coordinates, ``[478, 3]`` or ``[N, 478, 3]`` (x, y as fractions of
  the image width / height, z on the scale of x); ``image_size=(W, H)`` gives the image size,
  by default the image is taken as square (only the aspect ratio matters after normalisation);
* a folder written by ``facephi extract`` (every sample, with its own image size and label).

An empty path (``""``, e.g. an unset shell variable) is refused as an input with ``error``, never
read as the working directory. :func:`check_image_size` and :func:`check_instruction` are the one
check of those request values, shared by the CLI, the Python API and the server.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from facephi.labels import CLASSES
from facephi.landmarks.validate import face_problem, face_problems
from facephi.presets import NUM_LANDMARKS
from facephi.utils.errors import EMPTY_PATH, FacePhiError
from facephi.utils.io import read_npy_header

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""Files taken from a folder of images (lower-case suffixes)."""

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
"""Files read as videos (lower-case suffixes)."""

NO_FACE = "no face found (also retried with a border)"

MIN_IMAGE_SIDE = 1.0
MAX_IMAGE_SIDE = 100_000.0
"""Bounds of each side of ``image_size`` (pixels): beyond them raw landmarks shrink to a point or overflow."""

MAX_NPY_BYTES = 1 << 30
"""Largest ``.npy`` landmark array read (1 GiB: ~190,000 float32 faces), checked from its header."""



# ----------------------------------------------------------------------------- request values
def check_image_size(size: Any, flag: str = "image_size") -> tuple[float, float]:
    """``(W, H)`` as floats, each side in [:data:`MIN_IMAGE_SIDE`, :data:`MAX_IMAGE_SIDE`] pixels; None
    means a square image ``(1, 1)``. Anything else is a one-line :class:`FacePhiError` naming ``flag``."""
    if size is None:
        return (1.0, 1.0)
    try:
        width, height = (float(v) for v in size)
    except (TypeError, ValueError):
        raise FacePhiError(f"{flag}: expected two numbers W H (pixels), got {size!r}") from None
    if not all(math.isfinite(v) and MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in (width, height)):
        raise FacePhiError(f"{flag}: each side must be between {MIN_IMAGE_SIDE:g} and {MAX_IMAGE_SIDE:g} pixels, "
                           f"got {width:g} x {height:g}")
    return (width, height)


def check_instruction(instruction: str | None, flag: str = "instruction") -> str | None:
    """``instruction`` unchanged; None means the default question. An empty or blank one is a
    :class:`FacePhiError` (it would silently ask the default question)."""
    if instruction is None:
        return None
    if not isinstance(instruction, str) or not instruction.strip():
        raise FacePhiError(f"{flag}: the question must not be empty, got {instruction!r} "
                           "(leave it out for the default question)")
    return instruction


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
def npy_problem(path: Path) -> str | None:
    """Why the ``.npy`` file at ``path`` cannot hold landmarks, from its header alone (nothing large is
    read): not a ``.npy`` file, not numeric, not ``[478, 3]`` / ``[N, 478, 3]``, more than
    :data:`MAX_NPY_BYTES`, or fewer bytes than its header declares; None when it can be loaded."""
    try:
        header = read_npy_header(path)
    except ValueError as exc:
        return f"unreadable .npy file ({exc})"
    shape, dtype = header.shape, header.dtype
    if dtype.kind not in "fiu":
        return f"expected a numeric array, got dtype {dtype}"
    if shape != (NUM_LANDMARKS, 3) and (len(shape) != 3 or shape[1:] != (NUM_LANDMARKS, 3)):
        return (f"wrong array shape {list(shape)}: expected [{NUM_LANDMARKS}, 3] or [N, {NUM_LANDMARKS}, 3] "
                "raw MediaPipe landmarks")
    if header.data_bytes > MAX_NPY_BYTES:
        return (f"the array is too large ({_gigabytes(header.data_bytes)} declared for shape {list(shape)}; "
                f"at most {_gigabytes(MAX_NPY_BYTES)} of landmarks per file)")
    if header.held_bytes < header.data_bytes:
        return (f"truncated .npy file: its header declares {header.data_bytes:,} bytes of data, "
                f"the file holds {header.held_bytes:,}")
    return None


def _gigabytes(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def _read_npy(path: Path, size: tuple[float, float]) -> list[LandmarkInput]:
    try:
        problem = npy_problem(path)
        if problem is not None:
            return [LandmarkInput(str(path), error=problem)]
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return [LandmarkInput(str(path), error=f"unreadable .npy file ({_reason(exc)})")]
    return landmark_inputs(array, size, str(path))


def _reason(exc: Exception) -> str:
    """An exception as a short clause: an OSError's ``strerror`` ("Permission denied"), else its text."""
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc) or type(exc).__name__


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
    size is ``size`` = (width, height); ``where`` (``frame``, ``time_s``) is copied to each input.
    An image the face mesh cannot take (empty, not ``[H, W, 3]`` uint8) or fails on is an input with ``error``."""
    from facephi.landmarks.mesh import MeshError

    try:
        faces = mesher.find_faces(rgb, size)
    except MeshError as exc:
        return [LandmarkInput(source, error=str(exc), **where)]
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
    except OSError as exc:  # e.g. no permission to read the file
        return [LandmarkInput(source, error=f"cannot read the file ({_reason(exc)})")]
    return read_rgb(image.rgb, (float(image.width), float(image.height)), source, mesher, all_faces)


def read_image_bytes(data: bytes, mesher: Any, all_faces: bool = False, source: str = "<bytes>") -> list[LandmarkInput]:
    """Like an image file, from its encoded bytes (any format Pillow reads; same loading rules), decoded
    in memory: the image is never written anywhere."""
    return _read_image(bytes(data), mesher, all_faces, source)


def is_dataset(folder: Path) -> bool:
    """Whether ``folder`` is (meant to be) a ``facephi extract`` folder rather than a folder of images."""
    try:
        return (folder / "samples.csv").exists() or (folder / "landmarks.npy").exists()
    except OSError:  # not searchable: read as a folder of images, whose listing reports the problem
        return False


def _path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read at all (missing, or a parent folder not searchable), or None."""
    try:
        path.stat()
    except FileNotFoundError:
        return "no such file or folder"
    except OSError as exc:
        return f"cannot read it ({_reason(exc)})"
    return None


def scan_folder(folder: Path) -> tuple[list[Path], list[LandmarkInput]]:
    """Image files below ``folder`` (recursive, sorted, hidden files and folders skipped) and an
    input with ``error`` for each folder below it (``folder`` included) that cannot be listed."""
    images: list[Path] = []
    unreadable: list[LandmarkInput] = []
    pending, seen = [folder], set()
    while pending:
        current = pending.pop()
        try:
            info = current.stat()
            if (info.st_dev, info.st_ino) in seen:  # a symbolic link back up the tree
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(current) as entries:
                children = [(entry.name, entry.is_dir(), entry.is_file()) for entry in entries]
        except OSError as exc:
            unreadable.append(LandmarkInput(str(current), error=f"cannot read the folder ({_reason(exc)})"))
            continue
        for name, is_dir, is_file in children:
            if name.startswith("."):
                continue
            if is_dir:
                pending.append(current / name)
            elif is_file and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                images.append(current / name)
    return sorted(images), sorted(unreadable, key=lambda i: i.source)


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_video(path: Path, fps: float, mesher: Any, all_faces: bool = False,
               max_side: int = 1280) -> Iterator[LandmarkInput]:
    """Faces of ``fps`` frames per second of video (the first frame at or after each multiple of
    ``1 / fps`` s); frames are downscaled to ``max_side`` for the mesh (boxes stay in the video's
    pixels). A file that cannot be opened gives one input with ``error``; so does a video that stops
    early (a decoding error, or fewer seconds than it declares: truncated), after the frames
    decoded before, naming the time of the last one."""
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
    last_time: float | None = None
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
        frames = container.decode(stream)
        while True:
            try:  # only decoding errors are reported as such; errors of the mesh below are not caught
                frame = next(frames, None)
                if frame is None:
                    break
                index, decoded = decoded, decoded + 1
                time = float(frame.time) - start if frame.time is not None else index / rate
                last_time = time
                if time + 1e-6 < next_time:
                    continue
                next_time = (math.floor(time * fps + 1e-6) + 1) / fps
                width, height = frame.width, frame.height
                scale = min(1.0, max_side / max(width, height))
                rgb = frame.to_ndarray(format="rgb24", width=max(1, round(width * scale)),
                                       height=max(1, round(height * scale)))
            except (av.FFmpegError, OSError, ValueError) as exc:
                yield LandmarkInput(source, error=f"video decoding failed after {decoded} frames"
                                                  f"{_last_good(last_time)} ({exc})")
                return
            sampled += 1
            yield from read_rgb(rgb, (float(width), float(height)), source, mesher, all_faces,
                                frame=index, time_s=round(time, 3))
        declared = _declared_seconds(container, stream, start)
    if sampled == 0:
        yield LandmarkInput(source, error="no frame could be decoded")
    elif declared is not None and last_time is not None and last_time + 1 / rate < declared - max(1.0, 0.05 * declared):
        yield LandmarkInput(source, error=f"the video stops early (truncated?): decoded up to {last_time:.2f} s of "
                                          f"the {declared:.2f} s it declares; the frames before are answered")


def _last_good(time: float | None) -> str:
    return "" if time is None else f" (the last at {time:.2f} s)"


def _declared_seconds(container: Any, stream: Any, start: float) -> float | None:
    """How long the video stream says it is (its own duration, else the container's), or None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:  # in microseconds (AV_TIME_BASE)
        return container.duration / 1_000_000 - start
    return None


def iter_inputs(paths: Iterable[str | Path], image_size: tuple[float, float] | None = None,
                mesher: Any = None, all_faces: bool = False, fps: float = 2.0) -> Iterator[LandmarkInput]:
    """Landmarks of every input, lazily (see the module docstring); failures become inputs with
    ``error``. ``mesher`` (a ``FaceMesher``) is created on the first image when not given."""
    size = check_image_size(image_size)
    own_mesher = None

    def get_mesher() -> Any:
        nonlocal mesher, own_mesher
        if mesher is None:
            from facephi.landmarks.mesh import FaceMesher

            mesher = own_mesher = FaceMesher()
        return mesher

    try:
        for name in paths:
            path = Path(name)
            if isinstance(name, str) and not name:
                yield LandmarkInput(name, error=EMPTY_PATH)
            elif (problem := _path_problem(path)) is not None:
                yield LandmarkInput(str(path), error=problem)
            elif path.is_dir() and is_dataset(path):
                yield from _read_dataset(path)
            elif path.is_dir():
                images, unreadable = scan_folder(path)
                yield from unreadable
                if not images and not unreadable:
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

"""Atomic file writes and JSON helpers: a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

def _staging_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for its staging file or folder."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _create(path: Path, folder: bool) -> Path:
    """Create a new staging file (mode 0666) or folder (0777) beside ``path``, less the process umask
    (applied by the system: the umask is never read or changed)."""
    while True:
        staging = _staging_name(path)
        try:
            if folder:
                os.mkdir(staging, 0o777)
            else:
                os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return staging
        except FileExistsError:  # pragma: no cover - a uuid clash
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create(path, folder=False)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()



def replace_dir(staging: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the completely written folder ``staging`` to ``path`` (``os.replace``).

    An existing ``path`` is first renamed to a hidden name beside it and removed once the new
    folder is in place; if the final rename fails, the old folder is put back.
    """
    staging, path = Path(staging), Path(path)
    if not (path.exists() or path.is_symlink()):
        os.replace(staging, path)
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(old, path)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh, empty hidden staging folder beside ``path``; write the folder's content there.

    When the body succeeds the staging folder replaces ``path`` (an old ``path`` is removed, see
    :func:`replace_dir`); when it raises, the staging folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _create(path, folder=True)
    try:
        yield staging
        replace_dir(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left there after a successful replace


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with the file name in the error when it is malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` file's header declares, and how many bytes of data the file really holds."""

    shape: tuple[int, ...]
    dtype: np.dtype
    data_bytes: int  # declared: product of the shape x item size
    held_bytes: int  # in the file after the header


def read_npy_header(path: str | os.PathLike[str]) -> NpyHeader:
    """The header of a ``.npy`` file, read without loading its data (so a header that declares
    gigabytes can be refused before any allocation); ``ValueError`` when it is not a ``.npy`` file."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as fh:
        try:
            major, _ = npy_format.read_magic(fh)
            read_header = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
        except (ValueError, EOFError, SyntaxError) as exc:
            raise ValueError(str(exc) or "not a .npy file") from None
        held = os.fstat(fh.fileno()).st_size - fh.tell()
    return NpyHeader(tuple(shape), dtype, math.prod(shape) * dtype.itemsize, held)


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save a numpy array atomically (``np.save`` without pickle)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def check_writable_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """Create ``path`` (with parents) and check that files can be written there; FacePhiError otherwise.

    Run before any expensive work, so that an unwritable ``--out`` fails in the first second.
    """
    from facephi.utils.errors import FacePhiError

    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise FacePhiError(f"{path}: exists and is not a folder ({flag})")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FacePhiError(f"{path}: cannot write here ({flag}): {exc.strerror or exc}") from None
    return path


def file_digest(*paths: str | os.PathLike[str]) -> str:
    """SHA-256 of the contents of ``paths``, in order (a content fingerprint of a dataset's files)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """FacePhiError unless ``path`` is a safetensors file whose header reads (no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    from facephi.utils.errors import FacePhiError

    path = Path(path)
    if not path.is_file():
        raise FacePhiError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FacePhiError(f"{path}: unreadable safetensors file ({reason})") from None

"""Cheap sanity checks of raw MediaPipe faces (``[478, 3]``), vectorised over many faces.

A face is refused when its landmarks are not finite (NaN / inf), all zero, or degenerate in the
image plane: every point at one (x, y) position ("collapsed to a point") or on one straight line
("collapsed to a line"). Real MediaPipe faces, even small, turned or in a very wide image, are far
from these limits; they catch broken files and placeholder rows, not unusual faces.
"""

from __future__ import annotations

import numpy as np

NON_FINITE = "non-finite landmarks (NaN or inf)"
ALL_ZERO = "all landmarks are zero"
POINT = "landmarks collapsed to a point in x-y"
LINE = "landmarks collapsed to a line in x-y"
REASONS = (NON_FINITE, ALL_ZERO, POINT, LINE)
"""Every reason :func:`face_problems` may give, in the order they are checked."""

POINT_TOLERANCE = 1e-6
"""Largest x-y standard deviation (raw units: fractions of the image) of a face collapsed to a point."""
LINE_RATIO = 1e-3
"""Largest ratio of the minor to the major x-y standard deviation of a face collapsed to a line."""
_CHUNK = 4096


def problem_codes(raw: np.ndarray) -> np.ndarray:
    """int8 ``[N]``: 0 for a sound face, ``k + 1`` for ``REASONS[k]`` (the first that applies).

    ``raw``: ``[N, P, 3]`` or ``[P, 3]`` raw landmarks (then the result has one element).
    """
    raw = np.asarray(raw)
    if raw.ndim == 2:
        raw = raw[None]
    if raw.ndim != 3 or raw.shape[-1] != 3:
        raise ValueError(f"expected landmarks shaped [N, P, 3], got {list(raw.shape)}")
    codes = np.zeros(len(raw), dtype=np.int8)
    for start in range(0, len(raw), _CHUNK):
        codes[start:start + _CHUNK] = _codes(raw[start:start + _CHUNK])
    return codes


def _codes(raw: np.ndarray) -> np.ndarray:
    finite = np.isfinite(raw).all(axis=(1, 2))
    xy = np.where(finite[:, None, None], raw[..., :2], 0).astype(np.float64)
    zero = ~np.any(np.where(finite[:, None, None], raw, 1) != 0, axis=(1, 2))
    xy -= xy.mean(axis=1, keepdims=True)
    a, c = (xy[..., 0] ** 2).mean(axis=1), (xy[..., 1] ** 2).mean(axis=1)
    b = (xy[..., 0] * xy[..., 1]).mean(axis=1)
    half_sum, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b**2)
    major = np.sqrt(half_sum + root)
    minor = np.sqrt(np.maximum(half_sum - root, 0.0))
    point = major <= POINT_TOLERANCE
    line = minor <= LINE_RATIO * major
    codes = np.zeros(len(raw), dtype=np.int8)
    for code, mask in ((4, line), (3, point), (2, zero), (1, ~finite)):  # the first reason wins
        codes[mask] = code
    return codes


def face_problems(raw: np.ndarray) -> list[str | None]:
    """Per face of ``raw`` (``[N, P, 3]`` or ``[P, 3]``): ``None`` or the reason it is refused."""
    return [REASONS[code - 1] if code else None for code in problem_codes(raw).tolist()]


def face_problem(face: np.ndarray) -> str | None:
    """The reason one face (``[P, 3]``) is refused, or ``None``."""
    return face_problems(np.asarray(face)[None])[0]

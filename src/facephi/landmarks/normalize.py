"""Landmark normalisation (appendix A.2): pixel units, centred, optionally aligned, scaled to [-1, 1].

Raw MediaPipe landmarks have x, y as fractions of the image width / height and z on the scale of x.
:class:`Normalizer` turns them into an isotropic, centred point cloud, optionally rotates it onto a
canonical template (Kabsch, proper rotation only, so a face is never mirrored) and divides by the
largest absolute coordinate so every sample spans [-1, 1]. Everything is vectorised over any
leading batch dimensions: ``[478, 3]`` and ``[N, 478, 3]`` both work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-12


def _check_points(points: np.ndarray, name: str = "landmarks") -> np.ndarray:
    points = np.asarray(points)
    if points.ndim < 2 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [..., P, 3], got {tuple(points.shape)}")
    return points


def to_pixels(raw: np.ndarray, sizes: np.ndarray | None) -> np.ndarray:
    """Raw MediaPipe coordinates ``[..., P, 3]`` to pixel units: (x·W, y·H, z·W).

    ``sizes`` holds the image (width, height), shape ``[..., 2]`` matching the leading dimensions
    of ``raw`` (or a single ``[2]`` pair for all). ``None`` means ``raw`` is already isotropic.
    """
    raw = _check_points(raw).astype(np.float64, copy=False)
    if sizes is None:
        return raw.copy()
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.shape[-1:] != (2,) or sizes.shape[:-1] not in ((), raw.shape[:-2]):
        raise ValueError(
            f"sizes must have shape [2] or {list(raw.shape[:-2]) + [2]}, got {list(sizes.shape)}"
        )
    width, height = sizes[..., 0], sizes[..., 1]
    factors = np.stack([width, height, width], axis=-1)[..., None, :]  # [..., 1, 3]
    return raw * factors


def center(points: np.ndarray) -> np.ndarray:
    """Subtract the per-sample centroid (mean over the points axis)."""
    points = _check_points(points)
    return points - points.mean(axis=-2, keepdims=True)


def kabsch(points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Rotation ``R`` (``[..., 3, 3]``, det = +1) minimising ``|| points @ R - template ||``.

    Both arguments must already be centred; ``points`` may be batched ``[..., P, 3]``,
    ``template`` is ``[P, 3]``. Apply the result as ``points @ R``.
    """
    points = _check_points(points)
    template = _check_points(template, "template")
    if template.shape[-2] != points.shape[-2]:
        raise ValueError(
            f"template has {template.shape[-2]} points but landmarks have {points.shape[-2]}"
        )
    covariance = np.swapaxes(points, -1, -2) @ template
    u, _, vt = np.linalg.svd(covariance)
    # Flip the smallest singular direction where needed, so R is a rotation, never a reflection.
    sign = np.sign(np.linalg.det(u @ vt))
    sign = np.where(sign == 0, 1.0, sign)
    u = u.copy()
    u[..., :, -1] *= sign[..., None]
    return u @ vt


def scale_to_unit(points: np.ndarray) -> np.ndarray:
    """Divide each sample by its largest absolute coordinate so it spans [-1, 1]."""
    points = _check_points(points)
    scale = np.abs(points).max(axis=(-2, -1), keepdims=True)
    return points / np.maximum(scale, _EPS)


@dataclass
class Normalizer:
    """Pixel units → centred → (aligned onto ``template``) → divided by the max |value|.

    ``template`` is a centred ``[478, 3]`` shape in [-1, 1]; :meth:`fit` estimates it from training
    landmarks. With ``align=False`` no template is needed.
    """

    align: bool = True
    template: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.template is not None:
            template = _check_points(self.template, "template").astype(np.float64)
            if template.ndim != 2 or not np.all(np.isfinite(template)):
                raise ValueError("template must be a finite [P, 3] array")
            self.template = template

    def fit(
        self, raw: np.ndarray, sizes: np.ndarray | None, iterations: int = 5, max_samples: int = 5000
    ) -> "Normalizer":
        """Estimate the template (generalised Procrustes mean, rotation only) and return ``self``.

        Uses at most ``max_samples`` evenly spaced samples; non-finite samples are ignored.
        """
        raw = _check_points(raw)
        flat = raw.reshape(-1, *raw.shape[-2:])
        flat_sizes = None if sizes is None else np.broadcast_to(sizes, raw.shape[:-2] + (2,))
        flat_sizes = None if flat_sizes is None else flat_sizes.reshape(-1, 2)
        if len(flat) > max_samples:
            keep = np.linspace(0, len(flat) - 1, max_samples).round().astype(int)
            flat = flat[keep]
            flat_sizes = None if flat_sizes is None else flat_sizes[keep]
        points = to_pixels(flat, flat_sizes)
        points = points[np.all(np.isfinite(points), axis=(1, 2))]
        if len(points) == 0:
            raise ValueError("cannot fit a template: no finite landmark sample given")
        shapes = center(points)
        shapes /= np.maximum(np.linalg.norm(shapes, axis=(1, 2), keepdims=True), _EPS)
        template = shapes.mean(axis=0)
        for _ in range(max(iterations, 0)):
            template /= max(np.linalg.norm(template), _EPS)
            template = (shapes @ kabsch(shapes, template)).mean(axis=0)
        self.template = scale_to_unit(center(template))
        return self

    def __call__(self, raw: np.ndarray, sizes: np.ndarray | None) -> np.ndarray:
        """Normalise ``[..., P, 3]`` raw landmarks to float32 in [-1, 1]."""
        points = center(to_pixels(raw, sizes))
        if self.align:
            if self.template is None:
                raise ValueError("Normalizer(align=True) needs a template: call fit() first")
            points = points @ kabsch(points, self.template)
        return scale_to_unit(points).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the template as nested lists)."""
        template = None if self.template is None else np.round(self.template, 7).tolist()
        return {"align": bool(self.align), "template": template}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalizer":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or "align" not in data:
            raise ValueError("normalizer config must be a dict with an 'align' key")
        template = data.get("template")
        return cls(
            align=bool(data["align"]),
            template=None if template is None else np.asarray(template, dtype=np.float64),
        )

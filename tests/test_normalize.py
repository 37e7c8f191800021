"""Landmark normalisation: invariances, range, template fit, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facephi.landmarks.normalize import Normalizer, center, kabsch, to_pixels


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy copies of one random shape, as raw MediaPipe-style fractions + image sizes."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(478, 3)) * [0.15, 0.2, 0.1]
    shapes = base + rng.normal(scale=0.01, size=(n, 478, 3))
    sizes = rng.integers(48, 400, size=(n, 2)).astype(np.float32)
    raw = shapes.copy()
    raw[..., 0] = 0.5 + shapes[..., 0] / sizes[:, None, 0] * 100
    raw[..., 1] = 0.5 + shapes[..., 1] / sizes[:, None, 1] * 100
    raw[..., 2] = shapes[..., 2] / sizes[:, None, 0] * 100
    return raw.astype(np.float32), sizes, base


def test_to_pixels_scales_x_and_z_by_width_y_by_height():
    raw = np.ones((2, 478, 3))
    out = to_pixels(raw, np.array([[10, 20], [30, 40]]))
    assert out.shape == raw.shape
    assert np.allclose(out[0, 0], [10, 20, 10]) and np.allclose(out[1, 5], [30, 40, 30])
    with pytest.raises(ValueError, match="sizes"):
        to_pixels(raw, np.ones((3, 2)))


def test_kabsch_recovers_a_proper_rotation():
    rng = np.random.default_rng(1)
    points = center(rng.normal(size=(4, 478, 3)))
    rotations = np.stack([_rotation(rng) for _ in range(4)])
    found = kabsch(points, points[0] @ rotations[0])
    assert np.allclose(found[0], rotations[0], atol=1e-10)
    assert np.allclose(np.linalg.det(found), 1.0)
    # A mirrored target is never matched by a reflection.
    mirrored = points[0] * [-1, 1, 1]
    assert np.linalg.det(kabsch(points[0], mirrored)) == pytest.approx(1.0)


def test_output_range_shapes_and_invariances():
    raw, sizes, _ = _faces(6)
    normalizer = Normalizer(align=True).fit(raw, sizes)
    out = normalizer(raw, sizes)
    assert out.shape == raw.shape and out.dtype == np.float32
    assert np.abs(out).max() == pytest.approx(1.0)
    assert np.allclose(np.abs(out).max(axis=(1, 2)), 1.0)
    assert np.allclose(normalizer(raw[2], sizes[2]), out[2])

    pixels = to_pixels(raw, sizes)
    rng = np.random.default_rng(3)
    rotation = _rotation(rng)
    moved = (pixels @ rotation) * 3.7 + rng.normal(size=3) * 50  # rotate, scale, translate
    assert np.allclose(normalizer(moved, None), normalizer(pixels, None), atol=1e-5)
    assert np.allclose(normalizer(pixels, None), out, atol=1e-5)


def test_without_alignment_rotation_is_kept_but_translation_and_scale_are_not():
    raw, sizes, _ = _faces(2)
    pixels = to_pixels(raw, sizes)
    plain = Normalizer(align=False)
    assert np.allclose(plain(pixels * 2 + 5, None), plain(pixels, None), atol=1e-6)
    rotated = pixels @ _rotation(np.random.default_rng(0))
    assert not np.allclose(plain(rotated, None), plain(pixels, None), atol=1e-2)
    with pytest.raises(ValueError, match="fit"):
        Normalizer(align=True)(raw, sizes)


def test_template_fit_recovers_the_shared_shape_and_round_trips():
    raw, sizes, base = _faces(20)
    normalizer = Normalizer().fit(raw, sizes)
    template = normalizer.template
    assert template.shape == (478, 3)
    assert np.allclose(template.mean(axis=0), 0, atol=1e-9)
    assert np.abs(template).max() == pytest.approx(1.0)
    # The template is the common shape up to rotation and scale.
    reference = center(base) @ kabsch(center(base), template)
    reference /= np.abs(reference).max()
    assert np.abs(reference - template).max() < 0.02

    restored = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored.align and np.allclose(restored.template, template, atol=1e-6)
    assert np.allclose(restored(raw, sizes), normalizer(raw, sizes), atol=1e-5)
    assert Normalizer.from_dict(Normalizer(align=False).to_dict()).template is None

"""Landmark augmentations: a horizontal mirror that swaps left/right landmarks, rotation, scale, jitter.

The mirror needs to know which landmark is the left/right counterpart of which. That permutation
is derived here from MediaPipe's own face-mesh topology (``FACEMESH_TESSELATION``), not typed in:
the mesh graph is laid out in the plane by a harmonic (Tutte) embedding with the face oval on a
circle; the reflection of that layout which best preserves the mesh's edges is turned into a
permutation by an optimal assignment. The 10 iris points (not part of the tessellation) follow
MediaPipe's iris layout, each iris being its centre followed by four contour points listed in the
same image-space rotational order for both eyes, so a horizontal flip maps contour position ``p``
of one iris to position ``(2 - p) mod 4`` of the other. The result is checked (involution, eyes,
eyebrows and irises swapped, tessellation edges preserved) before it is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from facephi.landmarks.mesh import NUM_LANDMARKS

NUM_MESH_VERTICES = 468


def _connections():
    from mediapipe.python.solutions import face_mesh_connections

    return face_mesh_connections


def _vertices(connections: frozenset[tuple[int, int]]) -> set[int]:
    return {int(i) for edge in connections for i in edge}


def _cycle(connections: frozenset[tuple[int, int]]) -> list[int]:
    """The vertices of a closed polyline given as an edge set, in walking order."""
    neighbours: dict[int, list[int]] = {}
    for a, b in connections:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    if any(len(n) != 2 for n in neighbours.values()):
        raise RuntimeError("MediaPipe contour is not a simple cycle")
    order = [min(neighbours)]
    previous = None
    while True:
        current = order[-1]
        following = next(v for v in neighbours[current] if v != previous)
        if following == order[0]:
            return order
        previous = current
        order.append(following)


def _mesh_mirror(edges: np.ndarray, oval: list[int]) -> np.ndarray:
    """Mirror permutation of the 468 mesh vertices from the tessellation graph alone."""
    from scipy.optimize import linear_sum_assignment

    n = NUM_MESH_VERTICES
    adjacency = np.zeros((n, n))
    adjacency[edges[:, 0], edges[:, 1]] = adjacency[edges[:, 1], edges[:, 0]] = 1.0
    laplacian = np.diag(adjacency.sum(1)) - adjacency
    # Harmonic embedding: oval vertices evenly on the unit circle, every other vertex at the
    # average of its neighbours. A reflection of the oval polygon maps vertices onto vertices.
    angles = 2 * np.pi * np.arange(len(oval)) / len(oval)
    layout = np.zeros((n, 2))
    layout[oval] = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    inner = np.setdiff1d(np.arange(n), oval)
    layout[inner] = np.linalg.solve(laplacian[np.ix_(inner, inner)], -laplacian[np.ix_(inner, oval)] @ layout[oval])

    edge_set = set(map(tuple, edges.tolist()))

    def kept_edges(permutation: np.ndarray) -> int:
        return sum((a, b) in edge_set for a, b in np.sort(permutation[edges], axis=1).tolist())

    def reflection_cost(k: int) -> np.ndarray:  # reflection across the axis at angle pi·k / m
        phi = 2 * np.pi * k / len(oval)
        reflect = np.array([[np.cos(phi), np.sin(phi)], [np.sin(phi), -np.cos(phi)]])
        cost = (((layout @ reflect.T)[:, None, :] - layout[None, :, :]) ** 2).sum(-1)
        return cost + cost.T

    # Pick the symmetry axis of the oval polygon by nearest neighbours, then assign optimally.
    axis = max(range(len(oval)), key=lambda k: kept_edges(reflection_cost(k).argmin(axis=1)))
    best = linear_sum_assignment(reflection_cost(axis))[1]
    best_score = kept_edges(best)
    if best_score < 0.99 * len(edges):
        raise RuntimeError(f"face mesh mirror keeps only {best_score} of {len(edges)} edges")
    return best


def _iris_mirror(left_iris: list[int], right_iris: list[int]) -> dict[int, int]:
    """Iris centre ↔ centre and contour position p ↔ (2 - p) mod 4 (see the module docstring)."""
    pairs: dict[int, int] = {}
    for source, target in ((left_iris, right_iris), (right_iris, left_iris)):
        source_ring, target_ring = sorted(source), sorted(target)
        pairs[source_ring[0] - 1] = target_ring[0] - 1  # the centre precedes its contour
        for position, index in enumerate(source_ring):
            pairs[index] = target_ring[(2 - position) % 4]
    return pairs


@lru_cache(maxsize=1)
def _mirror_permutation() -> np.ndarray:
    fm = _connections()
    edges = np.array(sorted({tuple(sorted(map(int, e))) for e in fm.FACEMESH_TESSELATION}))
    permutation = np.empty(NUM_LANDMARKS, dtype=np.int64)
    permutation[:NUM_MESH_VERTICES] = _mesh_mirror(edges, _cycle(fm.FACEMESH_FACE_OVAL))
    for source, target in _iris_mirror(_cycle(fm.FACEMESH_LEFT_IRIS), _cycle(fm.FACEMESH_RIGHT_IRIS)).items():
        permutation[source] = target

    checks = {
        "an involution": np.array_equal(permutation[permutation], np.arange(NUM_LANDMARKS)),
        "a permutation": np.array_equal(np.sort(permutation), np.arange(NUM_LANDMARKS)),
    }
    for left, right in (("LEFT_EYE", "RIGHT_EYE"), ("LEFT_EYEBROW", "RIGHT_EYEBROW"), ("LEFT_IRIS", "RIGHT_IRIS")):
        left_set, right_set = _vertices(getattr(fm, f"FACEMESH_{left}")), _vertices(getattr(fm, f"FACEMESH_{right}"))
        checks[f"swapping {left} and {right}"] = {int(permutation[i]) for i in left_set} == right_set
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError(f"derived mirror permutation is not {', '.join(failed)}")
    permutation.flags.writeable = False
    return permutation


def mirror_permutation() -> np.ndarray:
    """``int64 [478]``: index of each landmark's left/right counterpart (midline points map to
    themselves). Derived once from MediaPipe's mesh, then cached; the array is read-only."""
    return _mirror_permutation()


def mirror(points: np.ndarray) -> np.ndarray:
    """Horizontal mirror of normalised landmarks ``[..., 478, 3]``: negate x, swap left/right indices."""
    points = np.asarray(points)
    if points.ndim < 2 or points.shape[-2:] != (NUM_LANDMARKS, 3):
        raise ValueError(f"mirror needs landmarks [..., {NUM_LANDMARKS}, 3], got {list(points.shape)}")
    flipped = points[..., mirror_permutation(), :].copy()
    flipped[..., 0] *= -1
    return flipped


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` from angles ``[..., 3]`` (radians about x, y, z; R = Rz·Ry·Rx)."""
    cos, sin = np.cos(angles), np.sin(angles)
    ones, zeros = np.ones_like(angles[..., 0]), np.zeros_like(angles[..., 0])

    def matrix(rows: list[list[np.ndarray]]) -> np.ndarray:
        return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)

    cx, cy, cz = cos[..., 0], cos[..., 1], cos[..., 2]
    sx, sy, sz = sin[..., 0], sin[..., 1], sin[..., 2]
    rx = matrix([[ones, zeros, zeros], [zeros, cx, -sx], [zeros, sx, cx]])
    ry = matrix([[cy, zeros, sy], [zeros, ones, zeros], [-sy, zeros, cy]])
    rz = matrix([[cz, -sz, zeros], [sz, cz, zeros], [zeros, zeros, ones]])
    return rz @ ry @ rx


AUGMENTATIONS = ("full", "mirror", "none")


@dataclass
class Augmenter:
    """Random mirror, rotation about all three axes, isotropic scale and Gaussian jitter.

    Applied to normalised landmarks ``[478, 3]`` or ``[B, 478, 3]`` (each sample drawn
    independently). Samples that leave [-1, 1] are divided by their max |value|, so the output
    always stays in range while down-scaling is kept.
    """

    mirror_prob: float = 0.5
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    jitter_std: float = 0.005

    def __post_init__(self) -> None:
        if not 0.0 <= self.mirror_prob <= 1.0:
            raise ValueError(f"mirror_prob must be in [0, 1], got {self.mirror_prob}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if self.max_rotation_deg < 0 or self.jitter_std < 0:
            raise ValueError("max_rotation_deg and jitter_std must be non-negative")

    @classmethod
    def preset(cls, name: str) -> "Augmenter | None":
        """``"full"`` (every transform, the defaults), ``"mirror"`` (the label-preserving mirror
        only: rigidly aligned test faces have no rotation or scale left to imitate) or ``"none"``."""
        if name not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
        if name == "none":
            return None
        if name == "mirror":
            return cls(max_rotation_deg=0.0, scale_range=(1.0, 1.0), jitter_std=0.0)
        return cls()

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        single = points.ndim == 2
        batch = points[None] if single else points
        if batch.ndim != 3 or batch.shape[-1] != 3:
            raise ValueError(f"augmenter needs points [P, 3] or [B, P, 3], got {list(points.shape)}")
        size = len(batch)
        # All draws happen in a fixed order, so a seed always gives the same result.
        flip = rng.random(size) < self.mirror_prob
        angles = np.deg2rad(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg, size=(size, 3)))
        scales = rng.uniform(*self.scale_range, size=(size, 1, 1))
        noise = rng.normal(0.0, 1.0, size=batch.shape) * self.jitter_std

        out = batch.copy()
        if flip.any():
            out[flip] = mirror(out[flip])
        out = out @ np.swapaxes(rotation_matrices(angles), -1, -2)
        out = out * scales + noise
        out /= np.maximum(np.abs(out).max(axis=(1, 2), keepdims=True), 1.0)
        out = out.astype(np.float32)
        return out[0] if single else out

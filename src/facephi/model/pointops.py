"""Point-cloud operations in pure PyTorch: farthest point sampling, k nearest neighbours, gathers.

These replace the CUDA extensions of PointNet++ / PointMLP so the encoder runs anywhere.
All functions are batched over the first dimension.
"""

from __future__ import annotations

import torch


def farthest_point_sample(xyz: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Indices ``[B, S]`` of ``num_samples`` farthest points of ``xyz`` ``[B, N, 3]``.

    Deterministic: starts at index 0 (as the PointNet++ kernel does); ties go to the lowest index.
    """
    batch, num_points, _ = xyz.shape
    if not 0 < num_samples <= num_points:
        raise ValueError(f"cannot sample {num_samples} of {num_points} points")
    with torch.no_grad():
        points = xyz.detach()
        indices = torch.zeros(batch, num_samples, dtype=torch.long, device=xyz.device)
        min_dist = torch.full((batch, num_points), float("inf"), dtype=points.dtype, device=xyz.device)
        rows = torch.arange(batch, device=xyz.device)
        current = torch.zeros(batch, dtype=torch.long, device=xyz.device)
        for i in range(num_samples):
            indices[:, i] = current
            last = points[rows, current].unsqueeze(1)  # [B, 1, 3]
            min_dist = torch.minimum(min_dist, ((points - last) ** 2).sum(-1))
            current = min_dist.argmax(dim=-1)
    return indices


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances ``[B, M, N]`` between ``src`` ``[B, M, C]`` and ``dst`` ``[B, N, C]``."""
    diff = src.unsqueeze(2) - dst.unsqueeze(1)
    return (diff * diff).sum(-1)


def knn(k: int, xyz: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Indices ``[B, S, k]`` of the ``k`` points of ``xyz`` ``[B, N, 3]`` nearest to each query
    ``[B, S, 3]``, sorted by increasing squared distance."""
    if not 0 < k <= xyz.shape[1]:
        raise ValueError(f"cannot take {k} neighbours among {xyz.shape[1]} points")
    with torch.no_grad():
        distances = square_distance(queries.detach(), xyz.detach())
        return distances.topk(k, dim=-1, largest=False, sorted=True).indices


def gather_points(points: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Select rows of ``points`` ``[B, N, C]`` by ``indices`` ``[B, ...]`` → ``[B, ..., C]``."""
    batch = points.shape[0]
    flat = indices.reshape(batch, -1)
    gathered = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return gathered.reshape(*indices.shape, points.shape[-1])

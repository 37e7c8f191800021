"""PointMLP (Ma et al., ICLR 2022) as a landmark encoder, in pure PyTorch.

The architecture follows the reference PointMLP / PointMLP-elite models as ULIP uses them, with
ULIP's feature head in place of the classifier: embedding → per stage [local grouper (FPS anchors,
kNN, geometric affine normalisation) → pre-extraction (transfer + residual blocks, max-pool over
the neighbours) → pos-extraction (residual blocks)] → global max-pool →
Linear-BN-ReLU-Dropout-Linear → the feature ``e`` (256-d by default).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from facephi.config import Config
from facephi.model.pointops import farthest_point_sample, gather_points, knn
from facephi.presets import NUM_LANDMARKS, POINTMLP_PRESETS, lookup

@dataclass
class PointMLPConfig(Config):
    """Hyper-parameters of :class:`PointMLPEncoder` (defaults = the ``pointmlp`` preset)."""

    num_points: int = NUM_LANDMARKS
    in_channels: int = 3
    embed_dim: int = 64
    res_expansion: float = 1.0
    dim_expansion: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    pre_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    pos_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    k_neighbors: list[int] = field(default_factory=lambda: [24, 24, 24, 24])
    reducers: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    normalize: str = "anchor"  # geometric affine normalisation around the "anchor" or "center"
    use_xyz: bool = False  # also concatenate neighbour coordinates (reference presets: no)
    # Landmark extension (not in PointMLP): a learned embedding per landmark index, added to the
    # point embedding, so features know *which* landmark they come from (MediaPipe's 478 points
    # have a fixed order; the mirror augmentation keeps it).
    point_embedding: bool = False
    # Landmark extension: the embedding also sees each landmark's coordinates standardised by its
    # own mean and std over the training faces (buffers set by ``fit_landmark_statistics``).
    # Expressions are small deviations from the mean face, which raw [-1, 1] coordinates bury
    # under the face's shape; grouping (FPS, kNN) still uses the raw coordinates.
    standardize_input: bool = False
    # Landmark extension: "template" picks each stage's anchors (FPS) and their kNN groups once, on
    # the mean training face, so a group is the same landmarks in every face; "dynamic" (PointMLP)
    # recomputes them per sample. Set by ``fit_landmark_statistics``.
    grouping: str = "dynamic"
    bias: bool = False
    activation: str = "relu"
    feature_dim: int = 256
    head_hidden_dim: int = 512
    dropout: float = 0.5

    def check(self) -> None:
        """Shape constraints between the stage lists (``ValueError``, like the rest of the model code)."""
        stages = len(self.pre_blocks)
        lists = ("dim_expansion", "pos_blocks", "k_neighbors", "reducers")
        if stages == 0 or any(len(getattr(self, name)) != stages for name in lists):
            raise ValueError(f"pre_blocks and {', '.join(lists)} must be non-empty and of equal length")
        if self.normalize not in ("anchor", "center"):
            raise ValueError(f"normalize must be 'anchor' or 'center', got {self.normalize!r}")
        if self.grouping not in ("dynamic", "template"):
            raise ValueError(f"grouping must be 'dynamic' or 'template', got {self.grouping!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        points = self.num_points
        for stage, (k, reduce) in enumerate(zip(self.k_neighbors, self.reducers)):
            if k > points or points // reduce < 1:
                raise ValueError(f"stage {stage}: {points} points cannot give {k} neighbours / 1/{reduce} anchors")
            points //= reduce

    @property
    def anchors(self) -> list[int]:
        """Number of anchor points of each stage (478 → 239, 119, 59, 29)."""
        counts, points = [], self.num_points
        for reduce in self.reducers:
            points //= reduce
            counts.append(points)
        return counts

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PointMLPConfig":
        """``"pointmlp"`` or ``"pointmlp-elite"``, with optional field overrides."""
        return cls(**{**copy.deepcopy(lookup(POINTMLP_PRESETS, name, "PointMLP preset")), **overrides})


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class PointwiseMLP(nn.Module):
    """Shared per-point Linear → BatchNorm → activation on channel-last tensors ``[..., C]``.

    Equivalent to PointMLP's kernel-1 Conv1d-BN-act (statistics over every point of the batch),
    but channel-last, which is faster on CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool, activation: str | None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=bias)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = _ACTIVATIONS[activation]() if activation else nn.Identity()

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``shift`` (broadcastable to the linear output) is added before the normalisation."""
        y = self.linear(x) if shift is None else self.linear(x) + shift
        y = self.norm(y.reshape(-1, y.shape[-1])).view(y.shape)
        return self.act(y)


class ResidualBlock(nn.Module):
    """PointMLP's residual point MLP: act(BN(W2 act(BN(W1 x))) + x), hidden = channels·expansion."""

    def __init__(self, channels: int, res_expansion: float, bias: bool, activation: str) -> None:
        super().__init__()
        hidden = max(1, int(channels * res_expansion))
        self.net1 = PointwiseMLP(channels, hidden, bias, activation)
        self.net2 = PointwiseMLP(hidden, channels, bias, None)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.net2(self.net1(x)) + x)


def _residual_stack(channels: int, blocks: int, config: "PointMLPConfig") -> nn.Sequential:
    return nn.Sequential(*[
        ResidualBlock(channels, config.res_expansion, config.bias, config.activation) for _ in range(blocks)
    ])


class LocalGrouper(nn.Module):
    """FPS anchors, their kNN groups and PointMLP's geometric affine normalisation.

    Returns anchor coordinates ``[B, S, 3]``, normalised neighbour features ``[B, S, k, C (+3)]``
    and the anchors' own features ``[B, S, C]``, which PointMLP concatenates to every neighbour
    (:class:`PreExtraction` applies that concatenation inside its first layer).
    """

    def __init__(self, channels: int, groups: int, k: int, use_xyz: bool, normalize: str,
                 template: bool = False) -> None:
        super().__init__()
        self.groups, self.k, self.use_xyz, self.normalize = groups, k, use_xyz, normalize
        affine_channels = channels + (3 if use_xyz else 0)
        self.affine_alpha = nn.Parameter(torch.ones(1, 1, 1, affine_channels))
        self.affine_beta = nn.Parameter(torch.zeros(1, 1, 1, affine_channels))
        self.template = template
        if template:  # -1 until set_template(): fixed anchors and groups, shared by every sample
            self.register_buffer("anchor_index", torch.full((groups,), -1, dtype=torch.long))
            self.register_buffer("neighbour_index", torch.full((groups, k), -1, dtype=torch.long))

    @torch.no_grad()
    def set_template(self, xyz: torch.Tensor) -> torch.Tensor:
        """Fix anchors and groups from one template cloud ``[N, 3]``; returns the anchors' ``[S, 3]``."""
        anchors = farthest_point_sample(xyz[None], self.groups)
        anchor_xyz = gather_points(xyz[None], anchors)
        self.anchor_index.copy_(anchors[0])
        self.neighbour_index.copy_(knn(self.k, xyz[None], anchor_xyz)[0])
        return anchor_xyz[0]

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = xyz.shape[0]
        if self.template:
            if int(self.anchor_index[0]) < 0:
                raise RuntimeError("PointMLP grouping='template' has no template yet: "
                                   "call fit_landmark_statistics(training landmarks) first")
            anchor_xyz, anchor_features = xyz[:, self.anchor_index], features[:, self.anchor_index]
            grouped = features[:, self.neighbour_index]  # [B, S, k, C]
            neighbour_xyz = xyz[:, self.neighbour_index] if self.use_xyz else None
        else:
            anchor_idx = farthest_point_sample(xyz, self.groups)  # [B, S]
            anchor_xyz = gather_points(xyz, anchor_idx)  # [B, S, 3]
            anchor_features = gather_points(features, anchor_idx)  # [B, S, C]
            neighbour_idx = knn(self.k, xyz, anchor_xyz)  # [B, S, k]
            grouped = gather_points(features, neighbour_idx)  # [B, S, k, C]
            neighbour_xyz = gather_points(xyz, neighbour_idx) if self.use_xyz else None
        if neighbour_xyz is not None:
            grouped = torch.cat([grouped, neighbour_xyz], dim=-1)
        if self.normalize == "anchor":
            reference = torch.cat([anchor_features, anchor_xyz], -1) if self.use_xyz else anchor_features
            reference = reference.unsqueeze(2)
        else:
            reference = grouped.mean(dim=2, keepdim=True)
        offsets = grouped - reference
        std = offsets.reshape(batch, -1).std(dim=-1).view(batch, 1, 1, 1)
        grouped = self.affine_alpha * (offsets / (std + 1e-5)) + self.affine_beta
        return anchor_xyz, grouped, anchor_features


class PreExtraction(nn.Module):
    """Transfer MLP + residual blocks on every neighbour, then max-pool over the neighbours.

    The transfer layer acts on ``[normalised neighbour ; anchor feature]`` as in PointMLP; its weight
    is split into neighbour and anchor columns so the anchor term is computed once per group
    instead of once per neighbour (the same function, k times less work for that half).
    """

    def __init__(
        self, neighbour_channels: int, anchor_channels: int, out_channels: int, blocks: int,
        config: PointMLPConfig,
    ) -> None:
        super().__init__()
        self.transfer = PointwiseMLP(neighbour_channels, out_channels, config.bias, config.activation)
        self.transfer_anchor = nn.Linear(anchor_channels, out_channels, bias=False)
        self.operation = _residual_stack(out_channels, blocks, config)

    def forward(self, grouped: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Neighbours ``[B, S, k, C']`` and anchors ``[B, S, C]`` → ``[B, S, D]``."""
        x = self.transfer(grouped, shift=self.transfer_anchor(anchors).unsqueeze(2))
        return self.operation(x).amax(dim=2)


class PointMLPEncoder(nn.Module):
    """``[B, N, 3]`` normalised landmarks → ``[B, feature_dim]`` feature ``e``."""

    def __init__(self, config: PointMLPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PointMLPConfig()
        embedding_inputs = config.in_channels * (2 if config.standardize_input else 1)
        self.embedding = PointwiseMLP(embedding_inputs, config.embed_dim, config.bias, config.activation)
        if config.standardize_input:
            self.register_buffer("input_mean", torch.zeros(config.num_points, config.in_channels))
            self.register_buffer("input_std", torch.ones(config.num_points, config.in_channels))
        if config.point_embedding:
            self.point_embedding = nn.Parameter(torch.zeros(config.num_points, config.embed_dim))
            nn.init.normal_(self.point_embedding, std=0.5)
        self.groupers = nn.ModuleList()
        self.pre_blocks = nn.ModuleList()
        self.pos_blocks = nn.ModuleList()
        channels = config.embed_dim
        for stage, groups in enumerate(config.anchors):
            out_channels = channels * config.dim_expansion[stage]
            self.groupers.append(LocalGrouper(channels, groups, config.k_neighbors[stage], config.use_xyz,
                                              config.normalize, template=config.grouping == "template"))
            neighbour_channels = channels + (3 if config.use_xyz else 0)
            self.pre_blocks.append(
                PreExtraction(neighbour_channels, channels, out_channels, config.pre_blocks[stage], config))
            self.pos_blocks.append(_residual_stack(out_channels, config.pos_blocks[stage], config))
            channels = out_channels
        self.out_channels = channels
        self.head = nn.Sequential(
            nn.Linear(channels, config.head_hidden_dim),
            nn.BatchNorm1d(config.head_hidden_dim),
            _ACTIVATIONS[config.activation](),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden_dim, config.feature_dim),
        )

    @property
    def needs_landmark_statistics(self) -> bool:
        """Whether ``standardize_input`` or ``grouping="template"`` needs :meth:`fit_landmark_statistics`."""
        return self.config.standardize_input or self.config.grouping == "template"

    @torch.no_grad()
    def fit_landmark_statistics(self, points: torch.Tensor) -> None:
        """Fit the landmark extensions on training landmarks ``[N, num_points, in_channels]``
        (before augmentation): the per-landmark mean / std of ``standardize_input`` and the anchors
        and groups of ``grouping="template"``, chosen on the mean face."""
        if not self.needs_landmark_statistics:
            raise ValueError("fit_landmark_statistics needs PointMLPConfig(standardize_input=True) "
                             "or grouping='template'")
        config = self.config
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.ndim != 3 or points.shape[1:] != (config.num_points, config.in_channels) or len(points) < 2:
            raise ValueError(f"expected at least 2 samples [N, {config.num_points}, "
                             f"{config.in_channels}], got {list(points.shape)}")
        mean = points.mean(dim=0)
        if config.standardize_input:
            std = points.std(dim=0)
            self.input_mean.copy_(mean)
            # a floor keeps landmarks that barely move (or a tiny training set) from exploding
            self.input_std.copy_(std.clamp_min(max(float(std.mean()) * 0.1, 1e-6)))
        if config.grouping == "template":
            xyz = mean[:, :3]
            for grouper in self.groupers:
                xyz = grouper.set_template(xyz)

    def forward_backbone(self, points: torch.Tensor) -> torch.Tensor:
        """Global max-pooled backbone feature ``[B, out_channels]`` (before the head)."""
        if points.ndim != 3 or points.shape[1:] != (self.config.num_points, self.config.in_channels):
            raise ValueError(
                f"expected points [B, {self.config.num_points}, {self.config.in_channels}], "
                f"got {list(points.shape)}"
            )
        xyz = points[..., :3]
        # the per-landmark embedding is added before the embedding's normalisation
        inputs = points
        if self.config.standardize_input:
            inputs = torch.cat([points, (points - self.input_mean) / self.input_std], dim=-1)
        x = self.embedding(inputs, shift=self.point_embedding if self.config.point_embedding else None)
        for grouper, pre, pos in zip(self.groupers, self.pre_blocks, self.pos_blocks):
            xyz, grouped, anchors = grouper(xyz, x)  # [B, S, 3], [B, S, k, D], [B, S, D]
            x = pos(pre(grouped, anchors))  # [B, S, D']
        return x.amax(dim=1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_backbone(points))

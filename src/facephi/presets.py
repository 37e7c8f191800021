"""Every name facephi chooses from, in one torch-free registry: presets, choice lists and sizes.

* :data:`NUM_LANDMARKS`: the points of a MediaPipe face mesh (478, with the irises);
* :data:`POINTMLP_PRESETS` (:data:`ENCODERS`, their names): the landmark encoder's architectures,
  values of :class:`facephi.model.pointmlp.PointMLPConfig`;
* :data:`OBJECTIVES`: how a landmark encoder is trained (``facephi align --objective``);
* :data:`ENCODER_PRESETS`: landmark-encoder training (``facephi align --preset``, Table 1, the demo,
  the encoder benchmark) — values of :class:`facephi.train.config.AlignConfig`;
* :data:`STAGE_PRESETS`: the two LLM stages (``facephi train --preset``) — values of
  :class:`facephi.train.config.TrainConfig` per stage;
* :data:`REPRODUCE_PRESETS`: ``facephi reproduce --preset``: which encoder and stage presets Table 1
  uses, what it changes on top of them, and its default test subset;
* :data:`DEMO_STAGES`: the miniature stages of ``facephi demo --train-from-scratch``.
"""

from __future__ import annotations

from typing import Any, Mapping

from facephi.utils.errors import FacePhiError

NUM_LANDMARKS = 478
"""Landmarks of a MediaPipe face mesh with refined irises: every face is ``[478, 3]``."""

POINTMLP_PRESETS: dict[str, dict[str, Any]] = {
    "pointmlp": {"embed_dim": 64, "res_expansion": 1.0, "dim_expansion": [2, 2, 2, 2],
                 "pre_blocks": [2, 2, 2, 2], "pos_blocks": [2, 2, 2, 2]},
    "pointmlp-elite": {"embed_dim": 32, "res_expansion": 0.25, "dim_expansion": [2, 2, 2, 1],
                       "pre_blocks": [1, 1, 2, 1], "pos_blocks": [1, 1, 2, 1]},
}
"""``PointMLPConfig`` values per architecture (PointMLP and PointMLP-elite, Ma et al. 2022)."""
LANDMARK_MLP_PRESETS: dict[str, dict[str, Any]] = {
    "landmark-mlp": {"hidden_dim": 512, "layers": 2, "dropout": 0.3, "feature_dim": 256},
}
"""``LandmarkMLPConfig`` values per architecture (an MLP on the standardised landmark coordinates)."""
ENCODERS = tuple(POINTMLP_PRESETS) + tuple(LANDMARK_MLP_PRESETS)
"""The landmark encoder architectures (``facephi align --encoder``)."""

OBJECTIVES = ("align", "classify")
"""``align``: CLIP loss against class captions (paper 3.3); ``classify``: cross-entropy."""

ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's alignment settings (AdamW, lr 2e-5, 20 epochs, batch 64), for both objectives.
    "paper": {"encoder": "pointmlp", "epochs": 20, "batch_size": 64, "lr": 2e-5},
    # CPU budget (about 10 min per encoder on 2 cores): PointMLP-elite with 8 neighbours, two
    # epochs over 12,000 training faces at a higher learning rate with cosine decay (2e-5 does
    # not converge in so few steps). See benchmarks/results/encoder.md.
    "cpu": {"encoder": "pointmlp-elite", "encoder_options": {"k_neighbors": [8, 8, 8, 8]}, "epochs": 2,
            "batch_size": 64, "lr": 1e-3, "lr_schedule": "cosine", "limit_train": 12000, "limit_valid": 1000,
            "probe_samples": 2000},
    # The demo's miniature encoder: a few photos, many epochs (batch size and probe set by the demo).
    "demo": {"encoder": "pointmlp-elite", "epochs": 20, "lr": 1e-3},
}
"""``AlignConfig`` values per encoder preset."""

_PAPER_STAGES: dict[int, dict[str, Any]] = {
    # The paper (section 4): stage 1 batch 48, lr 2.5e-3; stage 2 batch 32, lr 2.5e-5 (full
    # fine-tuning); AdamW, 3 epochs each, all training data, float16-class mixed precision on GPU
    # (one A100 80G). Stage 2 splits each batch of 32 into 2 micro-batches of 16 so that full
    # fine-tuning of Phi-2 (2.7 B parameters, AdamW states in fp32) fits in 80 GB; use
    # --grad-accum 1 for small LLMs such as SmolLM2.
    1: {"batch_size": 48, "grad_accum": 1, "lr": 2.5e-3, "epochs": 3, "limit_train": None, "save_every": 500},
    2: {"batch_size": 32, "grad_accum": 2, "lr": 2.5e-5, "epochs": 3, "limit_train": None, "save_every": 500},
}
# Paper batch sizes and learning rates on a class-balanced 4,000-sample subset, 1 epoch. Measured
# end to end on 2 idle cores with SmolLM2-135M (benchmarks/results/train_cpu.md): stage 1 11.9 min
# (0.17 s/sample), stage 2 20.6 min (0.30 s/sample). No gradient accumulation (peak memory
# ≈ 5–8 GB). The subset is balanced so that the rare FER+ classes (contempt, disgust, fear) are
# all kept; the remainder is spread evenly over the frequent classes.
_CPU_CHANGES: dict[str, Any] = {"grad_accum": 1, "epochs": 1, "limit_train": 4000, "limit_valid": 256,
                                "save_every": 50, "threads": 2, "mixed_precision": "no"}

STAGE_PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "paper": _PAPER_STAGES,
    "cpu": {stage: {**values, **_CPU_CHANGES} for stage, values in _PAPER_STAGES.items()},
}
"""``TrainConfig`` values per stage preset and stage."""

REPRODUCE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"encoder_preset": "paper", "stage_preset": "paper", "stage_changes": {}, "eval_limit": None},
    # Table 1 trains the two LLM stages twice (aligned and classification encoders): on top of the
    # `cpu` stage preset each stage sees a class-balanced 2,000-sample subset, so that the whole
    # table takes about 1.5 h on 2 CPU cores; the rows are scored on 1,000 test faces (greedy
    # generation costs ≈ 0.16 s per answer on CPU).
    "cpu": {"encoder_preset": "cpu", "stage_preset": "cpu", "stage_changes": {"limit_train": 2000},
            "eval_limit": 1000},
}
"""What ``facephi reproduce --preset`` runs: encoder preset, stage preset + changes, test subset."""

DEMO_STAGES: dict[int, dict[str, Any]] = {
    1: {"lr": 1e-3, "limit_train": None, "limit_valid": None},
    2: {"lr": 1e-4, "limit_train": None, "limit_valid": None},
}
"""Changes to the ``cpu`` stage preset for the demo's miniature stages (steps and batch set by the demo)."""


def lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    """``registry[name]``, or a FacePhiError listing the known names."""
    if name not in registry:
        raise FacePhiError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]

"""Reproducibility metadata: seeds, package versions, the command line."""

from __future__ import annotations

import os
import platform
import random
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np

_PACKAGES = (
    "facephi", "torch", "numpy", "mediapipe", "opencv-contrib-python", "transformers",
    "tokenizers", "gguf", "accelerate", "peft", "safetensors", "scikit-learn",
)


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's results (``None`` when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_info(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to re-run: command, seed, versions, machine, time."""
    info: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "seed": seed,
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(extra)
    return info


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass

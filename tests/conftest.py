"""Shared fixtures: the committed example face photos."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="session")
def example_images() -> Path:
    """The 10 Apache-2.0 sample photos (350x350 JPEG) with their ``labels.csv``."""
    return EXAMPLES


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny test models run fastest, and most predictably on a shared machine, on one thread."""
    import torch

    torch.set_num_threads(1)

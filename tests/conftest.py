"""Shared fixtures: the committed example face photos."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="session")
def example_images() -> Path:
    """The 10 Apache-2.0 sample photos (350x350 JPEG) with their ``labels.csv``."""
    return EXAMPLES

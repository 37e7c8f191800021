"""Training configuration of the two LLM stages (`facephi train`) and its named presets.

A :class:`TrainConfig` is fully resolved before training starts and written to the run
directory's ``config.json``; presets give the starting values and every field can be
overridden one by one (``TrainConfig.override`` / the CLI flags).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from facephi.utils.errors import FacePhiError

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SCHEDULERS = ("cosine", "linear")
PRESETS = ("paper", "cpu")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training stage.

    ``batch_size`` is the *effective* batch of one optimizer step, summed over all processes;
    each step is split into ``grad_accum`` micro-batches per process, so one forward pass sees
    ``batch_size / (grad_accum * num_processes)`` samples. The paper gives batch sizes, learning
    rates, AdamW and epochs only; warm-up (3 %), cosine decay, no weight decay and clipping at
    norm 1 follow LLaVA's recipe, which the paper cites for its two-stage training.
    """

    stage: int = 1
    batch_size: int = 48
    grad_accum: int = 1
    lr: float = 2.5e-3
    epochs: int = 3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float | None = 1.0
    max_length: int = 128
    limit_train: int | None = None
    """Train on a class-balanced subset of this many training samples (``None``: all)."""
    limit_valid: int | None = 512
    """Samples of the valid split (class-balanced subset) on which the loss is reported."""
    max_steps: int | None = None
    """Cap on the total number of optimizer steps; the schedule is built for the capped length."""
    save_every: int | None = 200
    """Checkpoint every this many optimizer steps (and always at the end)."""
    keep_checkpoints: int = 1
    log_every: int = 10
    seed: int = 0
    num_threads: int | None = None
    """torch CPU threads (``None``: torch's default)."""
    mixed_precision: str = "auto"
    """``auto`` = bf16 on a GPU that supports it, else fp16 on GPU, ``no`` on CPU."""
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`FacePhiError` naming the first invalid field."""
        if self.stage not in (1, 2):
            raise FacePhiError(f"stage must be 1 or 2, got {self.stage}")
        if self.lora and self.stage != 2:
            raise FacePhiError("LoRA applies to stage 2 only (stage 1 trains the projector)")
        for name in ("batch_size", "grad_accum", "epochs", "max_length", "log_every",
                     "keep_checkpoints", "lora_r"):
            if getattr(self, name) < 1:
                raise FacePhiError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit_train", "limit_valid", "max_steps", "save_every", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FacePhiError(f"{name} must be >= 1 (or unset), got {value}")
        if self.batch_size % self.grad_accum:
            raise FacePhiError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.lr <= 0:
            raise FacePhiError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise FacePhiError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.scheduler not in SCHEDULERS:
            raise FacePhiError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise FacePhiError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")

    def override(self, **changes: Any) -> "TrainConfig":
        """A copy with the given fields replaced; ``None`` values mean "keep the preset's"."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise FacePhiError(f"unknown training option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def paper_preset(stage: int) -> TrainConfig:
    """The paper's settings (section 4, implementation details).

    Stage 1: batch 48, lr 2.5e-3. Stage 2: batch 32, lr 2.5e-5 (full fine-tuning). AdamW,
    3 epochs each, all training data, float16-class mixed precision on GPU (the paper ran
    float16 on one A100 80G). Stage 2 splits each batch of 32 into 2 micro-batches of 16 so
    that full fine-tuning of Phi-2 (2.7 B parameters, AdamW states in fp32) fits in 80 GB;
    use ``--grad-accum 1`` for small LLMs such as SmolLM2.
    """
    if stage == 1:
        return TrainConfig(stage=1, batch_size=48, grad_accum=1, lr=2.5e-3, epochs=3,
                           limit_train=None, save_every=500)
    return TrainConfig(stage=2, batch_size=32, grad_accum=2, lr=2.5e-5, epochs=3,
                       limit_train=None, save_every=500)


def cpu_preset(stage: int) -> TrainConfig:
    """Paper batch sizes and learning rates on a class-balanced 4,000-sample subset, 1 epoch.

    Sized to finish both stages well inside 2 h on 2 CPU cores with SmolLM2-135M. Measured end to
    end on 2 idle cores (LLM loading, training, valid loss, checkpoints; ``benchmarks/
    train_preset.py``, results in ``benchmarks/results/train_cpu.md``): stage 1 11.9 min
    (0.17 s/sample), stage 2 20.6 min (0.30 s/sample), 32.5 min in all. Another process on the
    2 cores can slow training several-fold, hence the margin; ``--limit-train 8000`` would take
    ≈ 1.1 h on idle cores. No gradient accumulation: peak memory is ≈ 5–8 GB. The subset is
    balanced so that the rare FER+ classes (contempt, disgust, fear) are all kept; the remainder
    is spread evenly over the frequent classes.
    """
    base = paper_preset(stage)
    return base.override(grad_accum=1, epochs=1, limit_train=4000, limit_valid=256,
                         save_every=50, num_threads=2, mixed_precision="no")


def preset(name: str, stage: int) -> TrainConfig:
    """The named preset (``paper`` or ``cpu``) for one stage."""
    if stage not in (1, 2):
        raise FacePhiError(f"stage must be 1 or 2, got {stage}")
    if name == "paper":
        return paper_preset(stage)
    if name == "cpu":
        return cpu_preset(stage)
    raise FacePhiError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")

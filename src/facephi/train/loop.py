"""The one training loop of facephi, parameterised by its loss.

``facephi align`` (the landmark encoder: CLIP or classification loss) and ``facephi train`` (the LLM
stages: next-token loss) both run :class:`TrainingLoop`: a seeded :class:`EpochBatchSampler`,
AdamW with weight decay on matrices only, a ``transformers.get_scheduler`` schedule stepped once per
optimizer step, gradient accumulation and clipping, and exact checkpoints in
``RUN/checkpoints/step-NNNNNNN`` (:mod:`facephi.train.checkpoint`), resumed with no lost or repeated
step. The backend runs the steps: ``accelerate.Accelerator`` for the LLM stages (one or several
processes, mixed precision), :class:`LocalBackend` for the encoder (one process on the CPU).
``run.json`` holds a run's settings, checked by :func:`check_resume` when it is continued.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from facephi.train import checkpoint as ckpt
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
SCHEDULER_NAMES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
"""``lr_schedule`` values → ``transformers.get_scheduler`` names (each after a linear warm-up)."""

LossFunction = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class LoopSettings:
    """What the loop takes from a command's config."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_schedule: str
    warmup_ratio: float
    seed: int
    grad_accum: int = 1
    max_grad_norm: float | None = None
    max_steps: int | None = None
    fused_adamw: bool = False
    keep_checkpoints: int = 1


class LocalBackend:
    """The part of ``accelerate.Accelerator`` the loop uses, for one process on the CPU without
    mixed precision (the landmark encoder's training)."""

    device = torch.device("cpu")
    num_processes, process_index = 1, 0
    is_main_process = is_local_main_process = True
    sync_gradients = True
    mixed_precision = "no"
    scaler = None

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        return objects

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def accumulate(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def wait_for_everyone(self) -> None:
        pass


def parameter_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (biases, norms, scales are not decayed); one
    group when nothing is decayed."""
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(params: list[torch.nn.Parameter], settings: LoopSettings) -> tuple[torch.optim.Optimizer, str]:
    """AdamW and the name of its kernel (``fused`` or ``for-each``).

    With ``fused_adamw`` the fused kernel (one kernel for all parameters: the same update, several
    times faster than the default for-each kernel on the LLM of stage 2); where torch has none for
    the parameters' device or dtype, the for-each kernel is used and a warning says why (the kernel
    is recorded in ``run.json``).
    """
    groups = parameter_groups(params, settings.weight_decay)
    if settings.fused_adamw:
        try:
            return torch.optim.AdamW(groups, lr=settings.lr, fused=True), "fused"
        except (RuntimeError, ValueError) as exc:  # a device or dtype without the fused kernel
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("fused AdamW is not available here (%s); using the for-each kernel "
                           "(the same update, slower)", reason)
            return torch.optim.AdamW(groups, lr=settings.lr), f"for-each (fused unavailable: {reason})"
    return torch.optim.AdamW(groups, lr=settings.lr), "for-each"


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_ratio: float, total_steps: int) -> Any:
    """``transformers.get_scheduler``: a linear warm-up over ``ceil(warmup_ratio · total_steps)``
    steps, then ``constant``, ``cosine`` (half a cosine down to 0) or ``linear`` (down to 0)."""
    import math

    from transformers import get_scheduler

    if schedule not in SCHEDULER_NAMES:
        raise ValueError(f"schedule must be one of {tuple(SCHEDULER_NAMES)}, got {schedule!r}")
    return get_scheduler(SCHEDULER_NAMES[schedule], optimizer, num_warmup_steps=math.ceil(warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def set_train_mode(model: torch.nn.Module) -> None:
    """Train mode, except that modules without trainable parameters run in eval mode.

    Frozen parts (the encoder's BatchNorm statistics, a frozen LLM's dropout) thus stay exactly
    as loaded.
    """
    model.train()

    def visit(module: torch.nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            return
        for child in module.children():
            visit(child)

    visit(model)


# ---------------------------------------------------------------------------- the run folder

def saved_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings a run was started with (``run.json``'s ``settings``), or None."""
    run_file = Path(run_dir) / RUN_FILE
    if run_file.is_file() and "settings" in (data := read_json(run_file)):
        return data["settings"]
    return None


def check_resume(run_dir: Path, settings: dict[str, Any], may_change: frozenset[str], resume: bool,
                 configs: dict[str, Any] | None = None, overwrite_hint: str = "choose another --out") -> None:
    """Refuse to start over a run that holds checkpoints unless ``resume``; on resume, refuse a run
    whose ``run.json`` settings differ from ``settings`` (each section a dict of settings compared
    key by key, except the keys in ``may_change``, or a value compared whole). ``configs``: the
    ``Config`` class of a section, which reads the saved one (its defaults fill fields added since)."""
    if ckpt.list_checkpoints(run_dir) and not resume:
        raise FacePhiError(f"{run_dir} already holds a training run; pass --resume to continue it or "
                           f"{overwrite_hint}")
    saved = saved_settings(run_dir) if resume else None
    if saved is None:
        return
    changed: list[str] = []
    for section in sorted(settings):
        old, new = saved.get(section), settings.get(section)
        if section in (configs or {}) and isinstance(old, dict):
            old = configs[section].from_dict(old, source=str(Path(run_dir) / RUN_FILE)).to_dict()
        if isinstance(old, dict) and isinstance(new, dict):
            changed += sorted(k for k in set(old) | set(new) if k not in may_change and old.get(k) != new.get(k))
        elif old != new:
            changed.append(section)
    if changed:
        raise FacePhiError(f"{run_dir}: cannot resume, the run was started with other settings "
                           f"({', '.join(changed)})")


# ---------------------------------------------------------------------------- the loop

class TrainingLoop:
    """Optimizer steps over a dataset with a given loss, on a backend, checkpointed exactly.

    Use: ``TrainingLoop(backend, len(train_set), settings)`` (the step plan: sampler, total steps),
    then :meth:`setup` (model, optimizer, schedule), optionally :meth:`resume`, then iterate
    :meth:`steps` and call :meth:`save_checkpoint` where the command wants one.
    """

    def __init__(self, backend: Any, num_samples: int, settings: LoopSettings) -> None:
        self.backend, self.settings = backend, settings
        self.sampler = ckpt.EpochBatchSampler(num_samples, settings.batch_size, settings.grad_accum, settings.seed,
                                              backend.num_processes, backend.process_index)
        self.total_steps = settings.epochs * self.sampler.steps_per_epoch
        if settings.max_steps:
            self.total_steps = min(self.total_steps, settings.max_steps)
        self.micro_batch = self.sampler.micro_batch_size // backend.num_processes
        self.epoch = self.step_in_epoch = self.global_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def setup(self, model: torch.nn.Module, after_step: Callable[[torch.nn.Module], None] | None = None) -> None:
        """Optimizer over the trainable parameters of ``model``, schedule, backend preparation.

        What a checkpoint holds is fixed here, in train mode: the trainable parameters and the
        persistent buffers of the modules that train (e.g. BatchNorm statistics).
        """
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise FacePhiError("the model has no trainable parameters")
        set_train_mode(model)
        self.state_names = ckpt.training_state_names(model)
        optimizer, self.optimizer_kernel = build_optimizer(self.params, self.settings)
        # Stepped by hand once per optimizer step (accelerate's wrapper would step it once per process).
        self.scheduler = build_scheduler(optimizer, self.settings.lr_schedule, self.settings.warmup_ratio,
                                         self.total_steps)
        self.model, self.optimizer = self.backend.prepare(model, optimizer)
        self.unwrapped = self.backend.unwrap_model(self.model)
        self.scaler = getattr(self.backend, "scaler", None)
        self.after_step = after_step

    def resume(self, folder: Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save_checkpoint`; return its trainer state."""
        state = ckpt.read_checkpoint(folder, model=self.unwrapped, optimizer=self.optimizer,
                                     scheduler=self.scheduler, scaler=self.scaler, rank=self.backend.process_index,
                                     names=self.state_names)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        return state

    @property
    def finished(self) -> bool:
        return self.global_step >= self.total_steps

    def steps(self, train_set: Dataset, loss: LossFunction, collate: Callable | None = None,
              stop_after: int | None = None, epoch_end: bool = False) -> Iterator[torch.Tensor]:
        """Run optimizer steps, yielding each one's mean loss, until the last step, ``stop_after``
        steps, or (``epoch_end``) the end of the current epoch."""
        done = 0
        set_train_mode(self.model)
        while not self.finished and not (stop_after and done >= stop_after):
            if self.step_in_epoch >= self.steps_per_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(self.epoch)
            self.sampler.set_position(self.epoch, self.step_in_epoch)
            micro_batches = iter(DataLoader(train_set, batch_sampler=self.sampler, collate_fn=collate))
            while self.step_in_epoch < self.steps_per_epoch and not self.finished \
                    and not (stop_after and done >= stop_after):
                value = self.train_step(micro_batches, loss)
                self.step_in_epoch, self.global_step, done = self.step_in_epoch + 1, self.global_step + 1, done + 1
                yield value
            if epoch_end:
                return

    def train_step(self, micro_batches: Iterator[dict[str, Any]], loss: LossFunction) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        backend, settings, losses = self.backend, self.settings, []
        for _ in range(settings.grad_accum):
            batch = {k: v.to(backend.device) if torch.is_tensor(v) else v for k, v in next(micro_batches).items()}
            with backend.accumulate(self.model):
                value = loss(self.model, batch)
                backend.backward(value)
                losses.append(value.detach().float())
                if backend.sync_gradients:
                    if settings.max_grad_norm:
                        backend.clip_grad_norm_(self.params, settings.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.after_step is not None:
                        self.after_step(self.unwrapped)
        if not backend.sync_gradients:  # pragma: no cover - guards the data/step alignment
            raise RuntimeError("gradient accumulation is out of step with the data order")
        return torch.stack(losses).mean()

    def save_checkpoint(self, run_dir: Path, extra: dict[str, Any]) -> None:
        """Write ``RUN/checkpoints/step-<global step>`` (every process's RNG state, the main process's
        model / optimizer / schedule state and ``extra`` in ``trainer_state.json``), keep the newest
        ``keep_checkpoints``; nothing when that step's checkpoint exists."""
        backend = self.backend
        target = ckpt.checkpoint_dir(run_dir, self.global_step)
        if target.exists():
            return
        staging = ckpt.staging_path(target)
        if backend.is_main_process:
            ckpt.staging_dir(target)
        backend.wait_for_everyone()
        ckpt.write_rng(staging, backend.process_index)
        if backend.is_main_process:
            state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                     **extra}
            ckpt.write_checkpoint(staging, model=self.unwrapped, optimizer=self.optimizer, scheduler=self.scheduler,
                                  scaler=self.scaler, state=state, names=self.state_names)
        backend.wait_for_everyone()
        if backend.is_main_process:
            ckpt.commit_dir(staging, target)
            ckpt.prune_checkpoints(run_dir, self.settings.keep_checkpoints)
        backend.wait_for_everyone()

    def current_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

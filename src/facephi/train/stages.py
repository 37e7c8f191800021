"""Two-stage training of the FacePhi LLM under HF ``accelerate`` (`facephi train`).

Stage 1 freezes the LLM and the landmark encoder and trains the projector; stage 2 also
trains the LLM (full fine-tuning, or a LoRA adapter). The same code runs on one CPU, one GPU
or several GPUs (``accelerate launch "$(which facephi)" train ...``).

Run directory::

    RUN/run.json         settings (resolved TrainConfig, sources, data sizes, schedule), seed,
                         package versions, command (facephi.utils.runinfo.run_info)
    RUN/metrics.json     loss curve, valid loss before/after, wall time, samples/s
    RUN/checkpoints/step-NNNNNNN/   latest resumable checkpoint(s) (see train.checkpoint)
    RUN/final/           FacePhiModel.save_pretrained of the trained model
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facephi.train import checkpoint as ckpt
from facephi.train.config import TrainConfig
from facephi.train.schedules import build_scheduler
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json, write_json
from facephi.utils.runinfo import run_info, seed_everything

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"save_every", "keep_checkpoints", "log_every", "threads", "fast_path"})
RUN_FILE = "run.json"


@dataclass
class StageResult:
    run_dir: Path
    global_step: int
    total_steps: int
    finished: bool
    metrics: dict[str, Any]

    @property
    def final_dir(self) -> Path:
        return self.run_dir / FINAL_DIR


# ---------------------------------------------------------------------------- data helpers

def collate_train(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack left-padded training items and drop the pad columns shared by the whole batch; items
    with a ``weight`` (class weights) give the batch ``weights`` [B]."""
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items])
             for key in ("input_ids", "attention_mask", "labels", "points")}
    if "weight" in items[0]:
        batch["weights"] = torch.tensor([float(item["weight"]) for item in items], dtype=torch.float32)
    used = batch["attention_mask"].any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    for key in ("input_ids", "attention_mask", "labels"):
        batch[key] = batch[key][:, start:]
    return batch


def _set_epoch(dataset: Dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


# ---------------------------------------------------------------------------- model helpers

def resolve_mixed_precision(value: str) -> str:
    """``auto`` → bf16 / fp16 on GPU, ``no`` on CPU; fp16 without a GPU is an error."""
    has_gpu = torch.cuda.is_available()
    if value == "auto":
        if not has_gpu:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if value == "fp16" and not has_gpu:
        raise FacePhiError("mixed_precision fp16 needs a GPU; use 'no' or 'bf16' on CPU")
    return value


def build_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    """AdamW and the name of its kernel (``fused`` or ``for-each``).

    With ``fast_path`` the fused kernel (one kernel for all parameters: the same update, several
    times faster than the default for-each kernel on the LLM of stage 2); where torch has none for
    the parameters' device or dtype, the for-each kernel is used and a warning says why (the kernel
    is recorded in ``run.json``).
    """
    if config.fast_path:
        try:
            return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True), "fused"
        except (RuntimeError, ValueError) as exc:  # a device or dtype without the fused kernel
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("fused AdamW is not available here (%s); using the for-each kernel "
                           "(the same update, slower)", reason)
            return (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay),
                    f"for-each (fused unavailable: {reason})")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay), "for-each"


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

def run_started(run_dir: Path) -> bool:
    """True when ``run_dir`` holds training work that a new run would lose (a checkpoint or a final model).

    A folder with only ``run.json`` is a start that failed before its first checkpoint: nothing
    is lost by starting it again.
    """
    return bool(ckpt.list_checkpoints(run_dir)) or (Path(run_dir) / FINAL_DIR).exists()


def saved_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings a run was started with (``run.json``; older runs kept them in ``config.json``)."""
    run_file, legacy = Path(run_dir) / RUN_FILE, Path(run_dir) / "config.json"
    if run_file.is_file() and "settings" in (data := read_json(run_file)):
        return data["settings"]
    if legacy.is_file() and "train" in (data := read_json(legacy)):
        return data
    return None


def _check_run_dir(run_dir: Path, resolved: dict[str, Any], resume: bool) -> None:
    """Refuse to overwrite a run; on resume, refuse a run with other settings."""
    if run_started(run_dir) and not resume:
        raise FacePhiError(f"{run_dir} already holds a training run; pass --resume to continue it "
                           "or choose another --out")
    saved = saved_settings(run_dir) if resume else None
    if saved is not None:
        old = TrainConfig.from_dict(saved.get("train", {}), source=str(run_dir / RUN_FILE)).to_dict()
        new = resolved["train"]
        changed = sorted(k for k in set(old) | set(new)
                         if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
        changed += sorted(k for k in ("sources", "data") if saved.get(k) != resolved.get(k))
        if changed:
            raise FacePhiError(f"{run_dir}: cannot resume, the run was started with other "
                               f"settings ({', '.join(changed)})")


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, dataset: Dataset, batch_size: int, accelerator: Any,
                  collate: Callable = collate_train) -> float:
    """Mean loss over ``dataset`` (sharded over processes), weighted by batch size."""
    was_training = model.training
    model.eval()
    positions = np.arange(accelerator.process_index, len(dataset), accelerator.num_processes)
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for start in range(0, len(positions), batch_size):
        batch = collate([dataset[int(i)] for i in positions[start:start + batch_size]])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = model(**batch).loss
        total += torch.tensor([float(loss) * len(batch["labels"]), len(batch["labels"])],
                              dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(total, reduction="sum")
    if was_training:
        set_train_mode(model)
    return float(total[0] / total[1]) if total[1] else float("nan")


class _StageRun:
    """One invocation of a training stage: setup, optional resume, the loop, checkpoints."""

    def __init__(self, model: torch.nn.Module, train_set: Dataset, config: TrainConfig, run_dir: Path,
                 valid_set: Dataset | None, sources: dict[str, Any], resume: bool,
                 collate: Callable) -> None:
        from accelerate import Accelerator

        self.config, self.run_dir, self.collate = config, run_dir, collate
        self.train_set, self.valid_set = train_set, valid_set
        if config.threads:
            torch.set_num_threads(config.threads)
        self.accelerator = acc = Accelerator(  # cpu=True lets torchrun start several CPU processes
            mixed_precision=resolve_mixed_precision(config.mixed_precision),
            gradient_accumulation_steps=config.grad_accum, cpu=not torch.cuda.is_available())
        self.sampler = ckpt.EpochBatchSampler(len(train_set), config.batch_size, config.grad_accum,
                                              config.seed, acc.num_processes, acc.process_index)
        self.total_steps = config.epochs * self.sampler.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.micro_batch = self.sampler.micro_batch_size // acc.num_processes
        resolved = {
            "train": config.to_dict(),
            "sources": sources,
            "data": {"train_samples": len(train_set), "valid_samples": len(valid_set) if valid_set else 0},
            "schedule": {"steps_per_epoch": self.sampler.steps_per_epoch, "total_steps": self.total_steps,
                         "micro_batch_per_process": self.micro_batch, "num_processes": acc.num_processes,
                         "mixed_precision": acc.mixed_precision},
        }
        _check_run_dir(run_dir, resolved, resume)

        seed_everything(config.seed)
        lora_config = ({"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}
                       if config.lora else None)
        model.set_trainable(config.stage, lora=config.lora, lora_config=lora_config,
                            train_encoder=config.train_encoder)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise FacePhiError(f"stage {config.stage}: the model has no trainable parameters")
        if hasattr(model, "fast_path"):  # FacePhiModel: shared-prefix cache in its forward
            model.fast_path = config.fast_path
        optimizer, self.optimizer_kernel = build_optimizer(self.params, config)
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would
        # step it once per process).
        self.scheduler = build_scheduler(optimizer, config.lr_schedule, config.warmup_ratio, self.total_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.unwrapped = acc.unwrap_model(self.model)
        self.scaler = getattr(acc, "scaler", None)

        self.metrics: dict[str, Any] = {
            "stage": config.stage, "total_steps": self.total_steps, "batch_size": config.batch_size,
            "log": [], "valid_loss_start": None, "valid_loss_end": None,
            "train_seconds": 0.0, "wall_seconds": 0.0, "samples_per_second": None}
        self.epoch = self.step_in_epoch = self.global_step = 0
        checkpoints = ckpt.list_checkpoints(run_dir) if resume else []
        if resume and not checkpoints:
            logger.info("%s: no checkpoint to resume from; starting at step 0", run_dir)
        if checkpoints:
            state = ckpt.read_checkpoint(checkpoints[-1], model=self.unwrapped, optimizer=self.optimizer,
                                         scheduler=self.scheduler, scaler=self.scaler, rank=acc.process_index)
            self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
            self.global_step, self.metrics = state["global_step"], state["metrics"]
            logger.info("resuming %s from %s (step %d of %d)", run_dir, checkpoints[-1].name,
                        self.global_step, self.total_steps)
        if acc.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / RUN_FILE, run_info(config.seed, settings=resolved, stage=config.stage,
                                                      resumed_at_step=self.global_step,
                                                      optimizer_kernel=self.optimizer_kernel))

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, final: bool) -> None:
        acc = self.accelerator
        target = ckpt.checkpoint_dir(self.run_dir, self.global_step)
        if not target.exists():
            staging = ckpt.staging_path(target)
            if acc.is_main_process:
                ckpt.staging_dir(target)
            acc.wait_for_everyone()
            ckpt.write_rng(staging, acc.process_index)
            if acc.is_main_process:
                state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "global_step": self.global_step, "metrics": self.metrics}
                ckpt.write_checkpoint(staging, model=self.unwrapped, optimizer=self.optimizer,
                                      scheduler=self.scheduler, scaler=self.scaler, state=state)
            acc.wait_for_everyone()
            if acc.is_main_process:
                ckpt.commit_dir(staging, target)
                ckpt.prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        if acc.is_main_process:
            write_json(self.run_dir / "metrics.json", self.metrics)
            if final:  # save_pretrained writes a staging folder and renames it into place
                self.unwrapped.save_pretrained(self.run_dir / FINAL_DIR)
        acc.wait_for_everyone()

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self, micro_batches: Any) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        acc, losses = self.accelerator, []
        for _ in range(self.config.grad_accum):
            batch = {k: v.to(acc.device) for k, v in next(micro_batches).items()}
            with acc.accumulate(self.model):
                loss = self.model(**batch).loss
                acc.backward(loss)
                losses.append(loss.detach().float())
                if acc.sync_gradients:
                    if self.config.max_grad_norm:
                        acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:  # pragma: no cover - guards the data/step alignment
            raise RuntimeError("gradient accumulation is out of step with the data order")
        return torch.stack(losses).mean()

    def run(self, stop_after: int | None, progress: bool) -> StageResult:
        from facephi.utils.progress import progress_bar

        acc, config, metrics = self.accelerator, self.config, self.metrics
        invocation_start = time.perf_counter()
        if self.valid_set is not None and metrics["valid_loss_start"] is None:
            metrics["valid_loss_start"] = evaluate_loss(self.model, self.valid_set, self.micro_batch, acc,
                                                        self.collate)
        set_train_mode(self.model)
        bar = progress_bar(total=self.total_steps, initial=self.global_step, desc=f"stage {config.stage}",
                           unit="steps", enabled=progress and acc.is_local_main_process)
        steps_here, self.window = 0, []

        def keep_going() -> bool:
            return self.global_step < self.total_steps and not (stop_after and steps_here >= stop_after)

        while keep_going():
            if self.step_in_epoch >= self.sampler.steps_per_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            _set_epoch(self.train_set, self.epoch)
            self.sampler.set_position(self.epoch, self.step_in_epoch)
            micro_batches = iter(DataLoader(self.train_set, batch_sampler=self.sampler,
                                            collate_fn=self.collate))
            while self.step_in_epoch < self.sampler.steps_per_epoch and keep_going():
                tic = time.perf_counter()
                self.window.append(self.train_step(micro_batches))
                metrics["train_seconds"] += time.perf_counter() - tic
                self.step_in_epoch, self.global_step = self.step_in_epoch + 1, self.global_step + 1
                steps_here += 1
                bar.update(1)
                periodic = config.save_every and self.global_step % config.save_every == 0
                if periodic or self.global_step % config.log_every == 0 or self.global_step == self.total_steps:
                    bar.set_postfix(loss=f"{self.log_window():.4f}")
                if periodic and self.global_step < self.total_steps:
                    self._account(invocation_start)
                    invocation_start = time.perf_counter()
                    self.save(final=False)
        bar.close()
        if self.window:  # stopped between log steps: the checkpoint below must not lose these losses
            self.log_window()
        finished = self.global_step >= self.total_steps
        if finished and self.valid_set is not None and metrics["valid_loss_end"] is None:
            metrics["valid_loss_end"] = evaluate_loss(self.model, self.valid_set, self.micro_batch, acc,
                                                      self.collate)
        self._account(invocation_start)
        if not (finished and (self.run_dir / FINAL_DIR).is_dir()):
            self.save(final=finished)
        self.unwrapped.eval()
        return StageResult(self.run_dir, self.global_step, self.total_steps, finished, metrics)

    def log_window(self) -> float:
        """Append the mean loss of the steps since the last entry to the loss curve; return it."""
        loss = float(self.accelerator.reduce(torch.stack(self.window).mean(), reduction="mean"))
        self.window = []
        self.metrics["log"].append({"step": self.global_step, "epoch": self.epoch, "loss": loss,
                                    "lr": self.scheduler.get_last_lr()[0],
                                    "train_seconds": round(self.metrics["train_seconds"], 3)})
        return loss

    def _account(self, since: float) -> None:
        """Add this invocation's elapsed time to the metrics and update the throughput."""
        metrics = self.metrics
        metrics["wall_seconds"] += time.perf_counter() - since
        metrics["samples_seen"] = self.global_step * self.config.batch_size
        if metrics["train_seconds"] > 0:
            metrics["samples_per_second"] = metrics["samples_seen"] / metrics["train_seconds"]


def train_stage(
    model: torch.nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    valid_set: Dataset | None = None,
    sources: dict[str, Any] | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    collate: Callable = collate_train,
    progress: bool = True,
) -> StageResult:
    """Train ``model`` (a ``FacePhiModel``) for stage ``config.stage`` into ``run_dir``.

    ``train_set`` / ``valid_set`` yield instruction items (``input_ids``, ``attention_mask``,
    ``labels``, ``points``); ``sources`` (paths of the encoder, initial model, LLM, data) are
    recorded in ``run.json`` and must match on resume. ``resume=True`` continues from the
    latest checkpoint (or starts afresh when there is none). ``stop_after`` ends this invocation
    after that many optimizer steps with a checkpoint, keeping the full run's schedule.
    """
    run = _StageRun(model, train_set, config, Path(run_dir), valid_set, sources or {}, resume, collate)
    return run.run(stop_after, progress)

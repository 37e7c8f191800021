"""Two-stage training of the FacePhi LLM (`facephi train`): the training loop of
:mod:`facephi.train.loop` with the model's next-token loss, under HF ``accelerate``.

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
from torch.utils.data import Dataset

from facephi.train import checkpoint as ckpt
from facephi.train.config import TrainConfig
from facephi.train.loop import RUN_FILE, LoopSettings, TrainingLoop, check_resume, set_train_mode
from facephi.utils.errors import FacePhiError
from facephi.utils.io import write_json
from facephi.utils.runinfo import run_info, seed_everything

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"save_every", "keep_checkpoints", "log_every", "threads", "fast_path"})


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


# ---------------------------------------------------------------------------- the run folder

def run_started(run_dir: Path) -> bool:
    """True when ``run_dir`` holds training work that a new run would lose (a checkpoint or a final model).

    A folder with only ``run.json`` is a start that failed before its first checkpoint: nothing
    is lost by starting it again.
    """
    return bool(ckpt.list_checkpoints(run_dir)) or (Path(run_dir) / FINAL_DIR).exists()


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
        self.loop = loop = TrainingLoop(acc, len(train_set), loop_settings(config))
        self.total_steps, self.micro_batch = loop.total_steps, loop.micro_batch
        resolved = {
            "train": config.to_dict(),
            "sources": sources,
            "data": {"train_samples": len(train_set), "valid_samples": len(valid_set) if valid_set else 0},
            "schedule": {"steps_per_epoch": loop.steps_per_epoch, "total_steps": self.total_steps,
                         "micro_batch_per_process": self.micro_batch, "num_processes": acc.num_processes,
                         "mixed_precision": acc.mixed_precision},
        }
        if run_started(run_dir) and not resume:
            raise FacePhiError(f"{run_dir} already holds a training run; pass --resume to continue it "
                               "or choose another --out")
        check_resume(run_dir, {k: resolved[k] for k in ("train", "sources", "data")}, RESUMABLE_CHANGES, resume,
                     configs={"train": TrainConfig})

        seed_everything(config.seed)
        lora_config = ({"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}
                       if config.lora else None)
        model.set_trainable(config.stage, lora=config.lora, lora_config=lora_config,
                            train_encoder=config.train_encoder)
        if hasattr(model, "fast_path"):  # FacePhiModel: shared-prefix cache in its forward
            model.fast_path = config.fast_path
        if not any(p.requires_grad for p in model.parameters()):
            raise FacePhiError(f"stage {config.stage}: the model has no trainable parameters")
        loop.setup(model)
        self.model, self.unwrapped = loop.model, loop.unwrapped

        self.metrics: dict[str, Any] = {
            "stage": config.stage, "total_steps": self.total_steps, "batch_size": config.batch_size,
            "log": [], "valid_loss_start": None, "valid_loss_end": None,
            "train_seconds": 0.0, "wall_seconds": 0.0, "samples_per_second": None}
        checkpoints = ckpt.list_checkpoints(run_dir) if resume else []
        if resume and not checkpoints:
            logger.info("%s: no checkpoint to resume from; starting at step 0", run_dir)
        if checkpoints:
            self.metrics = loop.resume(checkpoints[-1])["metrics"]
            logger.info("resuming %s from %s (step %d of %d)", run_dir, checkpoints[-1].name,
                        loop.global_step, self.total_steps)
        if acc.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / RUN_FILE, run_info(config.seed, settings=resolved, stage=config.stage,
                                                      resumed_at_step=loop.global_step,
                                                      optimizer_kernel=loop.optimizer_kernel))

    @property
    def global_step(self) -> int:
        return self.loop.global_step

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, final: bool) -> None:
        acc = self.accelerator
        self.loop.save_checkpoint(self.run_dir, {"metrics": self.metrics})
        if acc.is_main_process:
            write_json(self.run_dir / "metrics.json", self.metrics)
            if final:  # save_pretrained writes a staging folder and renames it into place
                self.unwrapped.save_pretrained(self.run_dir / FINAL_DIR)
        acc.wait_for_everyone()

    # -- the loop ----------------------------------------------------------------------------

    @staticmethod
    def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def run(self, stop_after: int | None, progress: bool) -> StageResult:
        from facephi.utils.progress import progress_bar

        acc, config, metrics, loop = self.accelerator, self.config, self.metrics, self.loop
        invocation_start = time.perf_counter()
        if self.valid_set is not None and metrics["valid_loss_start"] is None:
            metrics["valid_loss_start"] = evaluate_loss(self.model, self.valid_set, self.micro_batch, acc,
                                                        self.collate)
        bar = progress_bar(total=self.total_steps, initial=loop.global_step, desc=f"stage {config.stage}",
                           unit="steps", enabled=progress and acc.is_local_main_process)
        self.window = []
        tic = time.perf_counter()
        for loss in loop.steps(self.train_set, self.loss, self.collate, stop_after):
            self.window.append(loss)
            metrics["train_seconds"] += time.perf_counter() - tic
            bar.update(1)
            step = loop.global_step
            periodic = config.save_every and step % config.save_every == 0
            if periodic or step % config.log_every == 0 or step == self.total_steps:
                bar.set_postfix(loss=f"{self.log_window():.4f}")
            if periodic and step < self.total_steps:
                self._account(invocation_start)
                invocation_start = time.perf_counter()
                self.save(final=False)
            tic = time.perf_counter()
        bar.close()
        if self.window:  # stopped between log steps: the checkpoint below must not lose these losses
            self.log_window()
        finished = loop.finished
        if finished and self.valid_set is not None and metrics["valid_loss_end"] is None:
            metrics["valid_loss_end"] = evaluate_loss(self.model, self.valid_set, self.micro_batch, acc,
                                                      self.collate)
        self._account(invocation_start)
        if not (finished and (self.run_dir / FINAL_DIR).is_dir()):
            self.save(final=finished)
        self.unwrapped.eval()
        return StageResult(self.run_dir, loop.global_step, self.total_steps, finished, metrics)

    def log_window(self) -> float:
        """Append the mean loss of the steps since the last entry to the loss curve; return it."""
        loss = float(self.accelerator.reduce(torch.stack(self.window).mean(), reduction="mean"))
        self.window = []
        self.metrics["log"].append({"step": self.loop.global_step, "epoch": self.loop.epoch, "loss": loss,
                                    "lr": self.loop.current_lr(),
                                    "train_seconds": round(self.metrics["train_seconds"], 3)})
        return loss

    def _account(self, since: float) -> None:
        """Add this invocation's elapsed time to the metrics and update the throughput."""
        metrics = self.metrics
        metrics["wall_seconds"] += time.perf_counter() - since
        metrics["samples_seen"] = self.loop.global_step * self.config.batch_size
        if metrics["train_seconds"] > 0:
            metrics["samples_per_second"] = metrics["samples_seen"] / metrics["train_seconds"]


def loop_settings(config: TrainConfig) -> LoopSettings:
    """The training-loop settings of an LLM stage."""
    return LoopSettings(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                        weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
                        warmup_ratio=config.warmup_ratio, seed=config.seed, grad_accum=config.grad_accum,
                        max_grad_norm=config.max_grad_norm, max_steps=config.max_steps,
                        fused_adamw=config.fast_path, keep_checkpoints=config.keep_checkpoints)


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

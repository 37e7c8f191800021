"""Exact, pickle-free training checkpoints and the resumable data order.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNN`` holding everything needed to
continue with no lost or repeated step:

- ``trainable.safetensors``: what training changes in the model: the trainable parameters
  (projector, LLM or LoRA adapter; the encoder) and the buffers of its modules in train mode,
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW moments and parameter groups,
- ``scheduler.json`` and ``scaler.json`` (fp16 loss scaler, when used),
- ``rng-<rank>.json`` + ``rng-<rank>.safetensors``: Python, numpy and torch (CPU/CUDA) RNG states,
- ``trainer_state.json``: data-order position (epoch, step in epoch), global step, metrics.

It is written into a hidden staging folder and renamed into place, so a crash never leaves
a partial checkpoint behind; ``trainer_state.json`` is the last file written.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Sampler

from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json, replace_dir, write_json

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class EpochBatchSampler(Sampler[list[int]]):
    """Seeded per-epoch permutation cut into optimizer steps and micro-batches.

    Epoch ``e`` visits the samples in ``permutation(seed, e)``; optimizer step ``s`` uses the
    ``batch_size`` positions ``[s * batch_size, (s + 1) * batch_size)`` of it (the incomplete
    last batch is dropped). Each step is split into ``grad_accum`` micro-batches and each
    micro-batch into ``num_processes`` equal shards; this sampler yields the shards of
    ``process_index``. Its whole state is ``(epoch, step)``: ``set_position`` makes the next
    iteration start exactly at a given step, which is how a resumed run skips consumed batches.
    The order does not depend on the number of processes.
    """

    def __init__(self, num_samples: int, batch_size: int, grad_accum: int = 1, seed: int = 0,
                 num_processes: int = 1, process_index: int = 0) -> None:
        if batch_size % (grad_accum * num_processes):
            raise FacePhiError(
                f"batch size {batch_size} is not divisible by grad_accum {grad_accum} x "
                f"{num_processes} process(es); choose a batch size that is")
        if num_samples < batch_size:
            raise FacePhiError(
                f"only {num_samples} training samples for a batch of {batch_size}; "
                "lower --batch-size or use more data")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.micro_batch_size = batch_size // grad_accum
        self.epoch = 0
        self.step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_position(self, epoch: int, step: int) -> None:
        """Make the next iteration yield epoch ``epoch`` from optimizer step ``step`` on."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        self.epoch, self.step = epoch, step

    def permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(self.num_samples)

    def step_indices(self, epoch: int, step: int) -> np.ndarray:
        """All sample positions (every process, every micro-batch) of one optimizer step."""
        return self.permutation(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        order = self.permutation(self.epoch)
        shard = self.micro_batch_size // self.num_processes
        for step in range(self.step, self.steps_per_epoch):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            for micro in np.split(batch, self.grad_accum):
                mine = micro[self.process_index * shard:(self.process_index + 1) * shard]
                yield mine.tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.step) * self.grad_accum


# ---------------------------------------------------------------------------- tensors / states

def training_state_names(model: torch.nn.Module) -> list[str]:
    """What training changes in ``model`` (call it in train mode): the parameters with
    ``requires_grad`` (shared weights once) and the persistent buffers of the modules in train mode
    (e.g. BatchNorm statistics)."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    for prefix, module in model.named_modules():
        if module.training:
            names += [f"{prefix}.{name}" if prefix else name for name, buffer in module.named_buffers(recurse=False)
                      if buffer is not None and name not in module._non_persistent_buffers_set]
    return names


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def trainable_state(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of ``model`` (:func:`training_state_names`), detached on CPU."""
    tensors = _tensors(model)
    return {name: tensors[name].detach().to("cpu").contiguous() for name in names}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path,
                         names: list[str]) -> None:
    """Copy saved tensors ``names`` into ``model``; the name sets and shapes must match."""
    own = _tensors(model)
    missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise FacePhiError(
            f"{source}: checkpoint does not match the model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it written by another "
            "stage, LLM or LoRA setting?")
    with torch.no_grad():
        for name in names:
            target = own[name]
            if target.shape != tensors[name].shape:
                raise FacePhiError(f"{source}: parameter {name} has shape "
                                   f"{tuple(tensors[name].shape)}, model has {tuple(target.shape)}")
            target.copy_(tensors[name].to(target.device, target.dtype))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into tensors (safetensors) and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")
"""Optimizer settings of how the update is computed, not of what it is: a checkpoint written with one
kernel (e.g. a run with ``--no-fast-path``) resumes with the kernel of the resuming run."""


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    for group, current in zip(groups, optimizer.param_groups):  # the kernel is this run's choice
        group.update({k: current[k] for k in IMPLEMENTATION_FLAGS if k in current})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, numpy and torch RNG states as (JSON metadata, tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return meta, tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------- folders

def checkpoint_dir(run_dir: Path, global_step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{global_step:07d}"


def staging_path(final: Path) -> Path:
    """The hidden staging folder of ``final``: a fixed name, so every process of a run finds it."""
    return final.parent / f".{final.name}.tmp"


def staging_dir(final: Path) -> Path:
    """Create a fresh :func:`staging_path` of ``final`` (main process), for :func:`commit_dir`.

    Single-process writers use ``facephi.utils.io.atomic_dir``; this pair exists because the
    processes of a multi-GPU run all write their RNG state into the same staging folder.
    """
    tmp = staging_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Move a completely written staging folder into place, replacing an old ``final``."""
    replace_dir(tmp, final)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)


def write_checkpoint(folder: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any, state: dict[str, Any], names: list[str]) -> None:
    """Write the main process's files into ``folder`` (``trainer_state.json`` last); ``names``: the
    model's tensors to keep (:func:`training_state_names`)."""
    save_file(trainable_state(model, names), str(folder / "trainable.safetensors"))
    tensors, meta = optimizer_state(optimizer)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    write_json(folder / "optimizer.json", meta)
    write_json(folder / "scheduler.json", scheduler.state_dict())
    if scaler is not None:
        write_json(folder / "scaler.json", scaler.state_dict())
    write_json(folder / STATE_FILE, state)


def write_rng(folder: Path, rank: int) -> None:
    meta, tensors = rng_state()
    write_json(folder / f"rng-{rank}.json", meta)
    save_file(tensors, str(folder / f"rng-{rank}.safetensors"))


def read_checkpoint(folder: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, rank: int, names: list[str]) -> dict[str, Any]:
    """Restore everything written by :func:`write_checkpoint` / :func:`write_rng` (process ``rank``'s
    random state included: without it the resume would not be exact); return the state."""
    for name in ("trainable.safetensors", "optimizer.safetensors", "optimizer.json",
                 "scheduler.json", STATE_FILE):
        if not (folder / name).is_file():
            raise FacePhiError(f"{folder}: incomplete checkpoint, {name} is missing")
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")), folder, names)
    load_optimizer_state(optimizer, load_file(str(folder / "optimizer.safetensors")),
                         read_json(folder / "optimizer.json"))
    scheduler.load_state_dict(read_json(folder / "scheduler.json"))
    if scaler is not None and (folder / "scaler.json").is_file():
        scaler.load_state_dict(read_json(folder / "scaler.json"))
    rng_files = (folder / f"rng-{rank}.json", folder / f"rng-{rank}.safetensors")
    for path in rng_files:
        if not path.is_file():
            raise FacePhiError(f"{folder}: {path.name} is missing (the random state of process {rank}; was the "
                               "run started with fewer processes?), so the resume would not be exact")
    set_rng_state(read_json(rng_files[0]), load_file(str(rng_files[1])))
    return read_json(folder / STATE_FILE)

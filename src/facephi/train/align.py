"""Landmark-encoder training (``facephi align``): one loop, two objectives.

* ``align`` — ULIP/CLIP feature alignment (paper section 3.3): the contrastive loss of
  :mod:`facephi.model.losses` between projected landmark features and frozen class-caption
  embeddings; Valid is scored by zero-shot accuracy (nearest class caption).
* ``classify`` — the paper's ablation encoder: cross-entropy on a linear classifier, optionally
  class-weighted ("balanced", or the milder "sqrt") for FER+'s imbalance; Valid is scored by classifier accuracy.

Each epoch also reports a linear probe (logistic regression on frozen 256-d features) and the
balanced accuracy on Valid. The best epoch by Valid is saved in ``OUT`` (``save_pretrained``),
the latest one with optimizer and RNG states in ``OUT/last`` for ``--resume``. Test is scored
once, at the end, on the best checkpoint; it is never used for selection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from facephi.model.encoder import LandmarkEncoder
from facephi.model.losses import clamp_logit_scale_, clip_contrastive_loss, logit_adjusted_cross_entropy
from facephi.train.config import AlignConfig
from facephi.train.probe import encode_features, evaluate_split
from facephi.train.schedules import lr_factor, warmup_steps
from facephi.train.weights import class_prior, class_weights
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

LAST_DIR = "last"


# Arguments that must not change when a run is resumed.
_RESUME_FIXED = ("data", "objective", "encoder", "encoder_options", "batch_size", "limit_train", "limit_valid",
                 "limit_test", "limit_policy", "augment", "seed", "text_tower", "class_weights", "logit_adjust")


# ---------------------------------------------------------------------------- objectives

class AlignObjective:
    """CLIP loss against the encoder's stored class-caption embeddings."""

    name = "align"

    def loss(self, model: LandmarkEncoder, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = model.projection(model(points))
        return clip_contrastive_loss(embeddings, model.class_text_embeddings, labels, model.logit_scale)

    def after_step(self, model: LandmarkEncoder) -> None:
        clamp_logit_scale_(model.logit_scale)


class ClassifyObjective:
    """Cross-entropy on the linear classifier, optionally class-weighted and logit-adjusted
    (``tau * log prior`` added to the logits, :func:`facephi.model.losses.logit_adjusted_cross_entropy`)."""

    name = "classify"

    def __init__(self, class_weights: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                 tau: float = 0.0) -> None:
        if tau and prior is None:
            raise ValueError("logit adjustment needs the class prior")
        self.class_weights, self.prior, self.tau = class_weights, prior, tau

    def loss(self, model: LandmarkEncoder, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model.class_logits(points)
        if not self.tau:
            return F.cross_entropy(logits, labels, weight=self.class_weights)
        return logit_adjusted_cross_entropy(logits, labels, self.prior, self.tau, weight=self.class_weights)

    def after_step(self, model: LandmarkEncoder) -> None:
        pass


# ---------------------------------------------------------------------------- data and model

@dataclass
class _Split:
    indices: np.ndarray
    points: np.ndarray
    labels: np.ndarray


def split_indices(landmark_set: Any, config: AlignConfig) -> dict[str, np.ndarray]:
    """Labelled samples of the standard train/valid/test splits (``LandmarkSet.select``, the same
    split for every seed and command); ``limit_*`` keep a seeded random subset of a split
    (independent of the other splits' limits). Invalid faces are refused by ``LandmarkSet.load``."""
    out: dict[str, np.ndarray] = {}
    for number, name in enumerate(("train", "valid", "test")):
        limit = {"train": config.limit_train, "valid": config.limit_valid, "test": config.limit_test}[name]
        out[name] = landmark_set.select(name, limit, "random", seed=[config.seed, 7, number])
    if len(out["train"]) < config.batch_size:
        raise FacePhiError(
            f"{config.data}: {len(out['train'])} training samples, fewer than --batch-size {config.batch_size}"
        )
    return out


def _new_model(config: AlignConfig, normalizer: Any) -> LandmarkEncoder:
    from facephi.model.encoder import LandmarkEncoderConfig
    from facephi.model.pointmlp import PointMLPConfig

    try:
        backbone = PointMLPConfig.preset(config.encoder, **config.encoder_options)
    except (TypeError, ValueError) as exc:
        raise FacePhiError(f"--encoder {config.encoder} with options {config.encoder_options}: {exc}") from exc
    encoder_config = LandmarkEncoderConfig(
        backbone=backbone.to_dict(),
        objective=config.objective,
        normalizer=normalizer.to_dict(),
    )
    if config.objective == "classify":
        return LandmarkEncoder(encoder_config)
    from facephi.data.templates import CAPTION_TEMPLATES
    from facephi.model.text_tower import TextTower, class_text_embeddings

    tower = TextTower(config.text_tower)
    encoder_config.text_tower, encoder_config.text_dim = config.text_tower, tower.dim
    encoder_config.caption_templates = list(CAPTION_TEMPLATES)
    model = LandmarkEncoder(encoder_config)
    model.set_class_text_embeddings(class_text_embeddings(tower, CAPTION_TEMPLATES, encoder_config.classes))
    return model


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms, affine α/β and the logit scale are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------- checkpoints

def _prepare_output(config: AlignConfig, out: Path) -> dict[str, Any] | None:
    """Check ``OUT`` against --resume / --overwrite; return the resume state or ``None``."""
    import shutil

    from facephi.train.checkpoint import STATE_FILE
    from facephi.utils.io import read_json

    state_path = out / LAST_DIR / STATE_FILE
    if config.resume:
        if not state_path.is_file():
            raise FacePhiError(f"{state_path}: missing; nothing to resume in {out}")
        state = read_json(state_path)
        stored = AlignConfig.from_dict(state["config"], source=str(state_path)).to_dict()
        changed = [k for k in _RESUME_FIXED if stored[k] != config.to_dict()[k]]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise FacePhiError(f"{out}: cannot resume with different {flags}")
        return state
    if (out / LAST_DIR).exists() or (out / "config.json").exists():
        if not config.overwrite:
            raise FacePhiError(f"{out}: already holds a checkpoint; pass --resume to continue it or --overwrite")
        shutil.rmtree(out / LAST_DIR, ignore_errors=True)
    return None


def _save_last(out: Path, model: LandmarkEncoder, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from facephi.train.checkpoint import STATE_FILE, optimizer_state, rng_state
    from facephi.utils.io import atomic_dir, write_json

    with atomic_dir(out / LAST_DIR) as tmp:
        model.save_pretrained(tmp)
        tensors, meta = optimizer_state(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        rng_meta, rng_tensors = rng_state()
        write_json(tmp / "rng.json", rng_meta)
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json(tmp / STATE_FILE, state)


def _load_last(out: Path, optimizer: torch.optim.Optimizer) -> None:
    from safetensors.torch import load_file

    from facephi.train.checkpoint import load_optimizer_state, set_rng_state
    from facephi.utils.io import read_json

    folder = out / LAST_DIR
    for name in ("optimizer.safetensors", "optimizer.json", "rng.json", "rng.safetensors"):
        if not (folder / name).is_file():
            raise FacePhiError(f"{folder}: incomplete checkpoint, {name} is missing")
    load_optimizer_state(
        optimizer, load_file(str(folder / "optimizer.safetensors")), read_json(folder / "optimizer.json")
    )
    set_rng_state(read_json(folder / "rng.json"), load_file(str(folder / "rng.safetensors")))


# ---------------------------------------------------------------------------- the loop

def train_encoder(config: AlignConfig, progress: bool = True) -> dict[str, Any]:
    """Train, select on Valid, score Test; return the metrics written to ``OUT/metrics.json``.

    Every input is checked before the first step: settings, ``out`` (free or resumable, writable),
    the dataset, the text tower and the probe samples.
    """
    from torch.utils.data import DataLoader
    from facephi.data.dataset import LandmarkDataset
    from facephi.landmarks.normalize import Normalizer
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.checkpoint import EpochBatchSampler
    from facephi.utils.io import check_writable_dir, write_json
    from facephi.utils.progress import progress_bar
    from facephi.utils.runinfo import run_info, seed_everything

    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    state = _prepare_output(config, out)
    if not Path(config.data).exists():
        raise FacePhiError(f"{config.data}: not found (--data)")
    landmark_set = LandmarkSet.load(config.data)
    check_writable_dir(out, "--out")
    seed_everything(config.seed)

    indices = split_indices(landmark_set, config)
    if state is not None:
        model = LandmarkEncoder.from_pretrained(out / LAST_DIR)
        normalizer = model.normalizer
    else:
        train_idx = indices["train"]
        normalizer = Normalizer(align=True).fit(landmark_set.landmarks[train_idx], landmark_set.sizes[train_idx])
        model = _new_model(config, normalizer)
    from facephi.landmarks.augment import Augmenter

    augmenter = Augmenter.preset(config.augment)
    train_set = LandmarkDataset(landmark_set, indices["train"], normalizer, augmenter, seed=config.seed)
    if state is None and model.backbone.needs_landmark_statistics:
        model.backbone.fit_landmark_statistics(torch.from_numpy(train_set.points))
    evals = {
        name: LandmarkDataset(landmark_set, indices[name], normalizer) for name in ("valid", "test")
    }
    probe_rows = np.random.default_rng([config.seed, 11]).permutation(len(train_set))[: config.probe_samples]
    probe_points, probe_labels = train_set.points[probe_rows], train_set.labels[probe_rows]
    if len(np.unique(probe_labels)) < 2:  # the per-epoch linear probe would fail after a whole epoch
        raise config.error("probe_samples", f"the {len(probe_rows)} probe samples hold fewer than two classes; "
                                            "raise --probe-samples or use more training data")

    classes = model.config.classes
    if config.objective == "align":
        objective: AlignObjective | ClassifyObjective = AlignObjective()
    else:
        weights = (None if config.class_weights == "none"
                   else class_weights(train_set.labels, len(classes), config.class_weights))
        prior = class_prior(train_set.labels, len(classes)) if config.logit_adjust else None
        objective = ClassifyObjective(weights, prior, config.logit_adjust)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.lr)
    sampler = EpochBatchSampler(len(train_set), config.batch_size, seed=config.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=0)
    total_steps = config.epochs * sampler.steps_per_epoch
    warmup = warmup_steps(config.warmup_ratio, total_steps)

    sizes = {name: int(len(idx)) for name, idx in indices.items()}
    history: list[dict[str, Any]] = state["history"] if state else []
    best: dict[str, Any] | None = state["best"] if state else None
    start_epoch = int(state["epochs_done"]) if state else 0
    if state is not None:
        _load_last(out, optimizer)
        logger.info("resuming %s after epoch %d", out, start_epoch)
    model.config.training = {
        "objective": config.objective, "encoder": config.encoder,
        "encoder_options": config.encoder_options, "epochs": config.epochs,
        "batch_size": config.batch_size, "lr": config.lr, "weight_decay": config.weight_decay,
        "lr_schedule": config.lr_schedule, "class_weights": config.class_weights,
        "logit_adjust": config.logit_adjust, "augment": config.augment,
        "seed": config.seed, "data": str(config.data), "split_sizes": sizes,
        "select_metric": config.select_metric,
    }
    logit_adjustment = ({"tau": config.logit_adjust, "train_prior": [round(float(p), 6) for p in objective.prior]}
                        if isinstance(objective, ClassifyObjective) and objective.tau else None)
    write_json(out / "run.json", run_info(config.seed, config=config.to_dict(), split_sizes=sizes,
                                          parameters=sum(p.numel() for p in model.parameters()),
                                          logit_adjustment=logit_adjustment))

    for epoch in range(start_epoch, config.epochs):
        train_set.set_epoch(epoch)
        sampler.set_position(epoch, 0)
        model.train()
        started, losses = time.perf_counter(), []
        bar = progress_bar(total=sampler.steps_per_epoch * config.batch_size, unit="samples", leave=False,
                           desc=f"{config.objective} epoch {epoch + 1}/{config.epochs}", enabled=progress)
        for step, batch in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(epoch * sampler.steps_per_epoch + step, schedule=config.lr_schedule,
                                                    total_steps=total_steps, warmup=warmup)
            loss = objective.loss(model, batch["points"], batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step(model)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            bar.update(len(batch["label"]))
        bar.close()  # off a terminal: the epoch's last progress line
        seconds = time.perf_counter() - started
        probe_features, _ = encode_features(model, probe_points, config.eval_batch_size)
        valid = evaluate_split(model, evals["valid"].points, evals["valid"].labels,
                               (probe_features, probe_labels), config.eval_batch_size, config.seed)
        record = {
            "epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_seconds": seconds,
            "samples_per_second": len(losses) * config.batch_size / seconds, "valid": valid,
        }
        if config.objective == "align":
            record["logit_scale"] = model.logit_scale.exp().item()
        history.append(record)
        logger.info("epoch %d: loss %.4f, valid %s, %.0f samples/s", epoch + 1, record["train_loss"],
                    {k: round(v, 4) for k, v in valid.items()}, record["samples_per_second"])
        if best is None or valid[config.select_metric] > best["valid"][config.select_metric]:
            best = {"epoch": epoch + 1, "valid": valid}
            model.config.metrics = {"select_metric": config.select_metric, "best_epoch": epoch + 1, "valid": valid}
            model.save_pretrained(out)
        _save_last(out, model, optimizer, {"epochs_done": epoch + 1, "history": history, "best": best,
                                           "config": config.to_dict()})
        write_json(out / "metrics.json", {"history": history, "best": best, "test": None})

    assert best is not None
    final = LandmarkEncoder.from_pretrained(out)
    probe_features, _ = encode_features(final, probe_points, config.eval_batch_size)
    test = evaluate_split(final, evals["test"].points, evals["test"].labels,
                          (probe_features, probe_labels), config.eval_batch_size, config.seed)
    final.config.metrics = {**final.config.metrics, "test": test}
    final.config.training = model.config.training
    final.save_pretrained(out)
    metrics = {"history": history, "best": best, "test": test, "split_sizes": sizes,
               "train_seconds": float(sum(r["train_seconds"] for r in history))}
    write_json(out / "metrics.json", metrics)
    return metrics

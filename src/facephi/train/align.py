"""Landmark-encoder training (``facephi align``): one loop, two objectives.

* ``align`` — ULIP/CLIP feature alignment (paper section 3.3): the contrastive loss of
  :mod:`facephi.model.losses` between projected landmark features and frozen class-caption
  embeddings; Valid is scored by zero-shot accuracy (nearest class caption).
* ``classify`` — the paper's ablation encoder: cross-entropy on a linear classifier, optionally
  class-weighted ("balanced", or the milder "sqrt") for FER+'s imbalance; Valid is scored by classifier accuracy.

Each epoch also reports a linear probe (logistic regression on frozen 256-d features) and the
balanced accuracy on Valid. The best epoch by Valid is saved in ``OUT`` (``save_pretrained``),
the latest one as a checkpoint of the training loop (:mod:`facephi.train.loop`) in
``OUT/checkpoints`` for ``--resume``. Test is scored once, at the end, on the best checkpoint; it is
never used for selection.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from facephi.model.encoder import LandmarkEncoder
from facephi.model.losses import clamp_logit_scale_, clip_contrastive_loss, logit_adjusted_cross_entropy
from facephi.train.config import AlignConfig
from facephi.train.probe import encode_features, evaluate_split
from facephi.train.loop import LocalBackend, LoopSettings, TrainingLoop, check_resume
from facephi.train.weights import class_prior, class_weights
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

RESUMABLE_CHANGES = frozenset({"out", "epochs", "threads", "eval_batch_size", "resume", "overwrite"})
"""Settings that may change when a run is resumed (``--epochs`` extends it); every other one must not."""


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

def split_indices(landmark_set: Any, config: AlignConfig) -> dict[str, np.ndarray]:
    """Labelled samples of the standard train/valid/test splits (``LandmarkSet.select``, the same
    split for every seed and command); ``limit_*`` keep a subset of a split drawn by ``limit_policy``
    (seeded, independent of the other splits' limits). Invalid faces are refused by ``LandmarkSet.load``."""
    out: dict[str, np.ndarray] = {}
    for number, name in enumerate(("train", "valid", "test")):
        limit = {"train": config.limit_train, "valid": config.limit_valid, "test": config.limit_test}[name]
        out[name] = landmark_set.select(name, limit, config.limit_policy, seed=[config.seed, 7, number])
    if len(out["train"]) < config.batch_size:
        raise FacePhiError(
            f"{config.data}: {len(out['train'])} training samples, fewer than --batch-size {config.batch_size}"
        )
    return out


def _new_model(config: AlignConfig, normalizer: Any) -> LandmarkEncoder:
    from facephi.model.encoder import LandmarkEncoderConfig, backbone_config

    try:
        backbone_type, backbone = backbone_config(config.encoder, config.encoder_options)
    except (TypeError, ValueError) as exc:
        raise FacePhiError(f"--encoder {config.encoder} with options {config.encoder_options}: {exc}") from exc
    encoder_config = LandmarkEncoderConfig(
        backbone_type=backbone_type,
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


# ---------------------------------------------------------------------------- the run

def _prepare_output(config: AlignConfig, out: Path) -> bool:
    """Check ``OUT`` against --resume / --overwrite (before any work); True when a run is resumed."""
    import shutil

    from facephi.train.checkpoint import CHECKPOINTS_DIR, list_checkpoints

    if config.resume:
        if not list_checkpoints(out):
            raise FacePhiError(f"{out}: no checkpoint to resume (--resume)")
        check_resume(out, {"align": config.to_dict()}, RESUMABLE_CHANGES, resume=True, configs={"align": AlignConfig})
        return True
    if (out / CHECKPOINTS_DIR).exists() or (out / "config.json").exists():
        if not config.overwrite:
            raise FacePhiError(f"{out}: already holds a checkpoint; pass --resume to continue it or --overwrite")
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    return False


def loop_settings(config: AlignConfig) -> LoopSettings:
    """The training-loop settings of ``facephi align`` (no clipping, for-each AdamW, one checkpoint)."""
    return LoopSettings(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                        weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
                        warmup_ratio=config.warmup_ratio, seed=config.seed)


def has_checkpoint(out: str | Path) -> bool:
    """True when ``out`` holds an encoder run that ``--resume`` continues."""
    from facephi.train.checkpoint import list_checkpoints

    return bool(list_checkpoints(Path(out)))


# ---------------------------------------------------------------------------- the loop

def train_encoder(config: AlignConfig, progress: bool = True) -> dict[str, Any]:
    """Train, select on Valid, score Test; return the metrics written to ``OUT/metrics.json``.

    Every input is checked before the first step: settings, ``out`` (free or resumable, writable),
    the dataset, the text tower and the probe samples.
    """
    from facephi.data.dataset import LandmarkDataset
    from facephi.landmarks.augment import Augmenter
    from facephi.landmarks.normalize import Normalizer
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.checkpoint import list_checkpoints
    from facephi.utils.io import check_writable_dir, write_json
    from facephi.utils.progress import progress_bar
    from facephi.utils.runinfo import run_info, seed_everything

    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    resume = _prepare_output(config, out)
    if not Path(config.data).exists():
        raise FacePhiError(f"{config.data}: not found (--data)")
    landmark_set = LandmarkSet.load(config.data)
    check_writable_dir(out, "--out")
    seed_everything(config.seed)

    indices = split_indices(landmark_set, config)
    train_idx = indices["train"]
    normalizer = Normalizer(align=True).fit(landmark_set.landmarks[train_idx], landmark_set.sizes[train_idx])
    model = _new_model(config, normalizer)
    augmenter = Augmenter.preset(config.augment)
    train_set = LandmarkDataset(landmark_set, indices["train"], normalizer, augmenter, seed=config.seed)
    if model.backbone.needs_landmark_statistics:
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
    loop = TrainingLoop(LocalBackend(), len(train_set), loop_settings(config))
    loop.setup(model, after_step=objective.after_step)

    def loss(model: LandmarkEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return objective.loss(model, batch["points"], batch["label"])

    sizes = {name: int(len(idx)) for name, idx in indices.items()}
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    if resume:
        checkpoint = list_checkpoints(out)[-1]
        state = loop.resume(checkpoint)
        history, best = state["history"], state["best"]
        logger.info("resuming %s after epoch %d", out, len(history))
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
    write_json(out / "run.json", run_info(config.seed, settings={"align": config.to_dict()}, split_sizes=sizes,
                                          parameters=sum(p.numel() for p in model.parameters()),
                                          logit_adjustment=logit_adjustment, resumed_at_epoch=len(history)))

    while not loop.finished:
        epoch = len(history)
        started, losses = time.perf_counter(), []
        bar = progress_bar(total=loop.steps_per_epoch * config.batch_size, unit="samples", leave=False,
                           desc=f"{config.objective} epoch {epoch + 1}/{config.epochs}", enabled=progress)
        for value in loop.steps(train_set, loss, epoch_end=True):
            losses.append(value.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            bar.update(config.batch_size)
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
        loop.save_checkpoint(out, {"history": history, "best": best})
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

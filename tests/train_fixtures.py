"""Tiny FacePhi models, landmark sets and instruction data for the training tests (no network)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch

from facephi.data.instruction import InstructionDataset
from facephi.labels import CLASSES
from facephi.landmarks.normalize import Normalizer
from facephi.model.encoder import LandmarkEncoder, LandmarkEncoderConfig
from facephi.model.facephi import FacePhiConfig, FacePhiModel
from facephi.model.pointmlp import PointMLPConfig
from facephi.model.projector import ProjectorConfig
from facephi.train.config import TrainConfig
from tiny_models import TinyEncoder, tiny_llm, tiny_tokenizer

MAX_LENGTH = 96


def make_model(seed: int = 0) -> FacePhiModel:
    """FacePhiModel with a tiny random Llama (SmolLM2-style tokenizer) and a tiny encoder."""
    tokenizer = tiny_tokenizer("smollm")
    llm = tiny_llm("llama", tokenizer, seed=seed)
    config = FacePhiConfig(llm="tiny-llama", max_length=MAX_LENGTH, projector=ProjectorConfig(input_dim=256))
    return FacePhiModel(config, TinyEncoder(seed=seed), llm, tokenizer)  # TinyEncoder seeds torch


def make_dataset(model: FacePhiModel, n: int = 16, seed: int = 0) -> InstructionDataset:
    rng = np.random.default_rng(seed)
    points = torch.as_tensor(rng.uniform(-1, 1, size=(n, 478, 3)).astype(np.float32))
    base = [{"points": points[i], "label": i % len(CLASSES), "index": i} for i in range(n)]
    return InstructionDataset(base, model.formatter, seed=0)


def tiny_config(stage: int, **changes) -> TrainConfig:
    base = TrainConfig(stage=stage, batch_size=4, grad_accum=2, lr=1e-2, epochs=2,
                       limit_valid=None, save_every=None, log_every=1, threads=1, mixed_precision="no",
                       warmup_ratio=0.25)
    return base.replace(**changes)


def write_landmark_set(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """A random landmark set in the interchange format (``landmarks.npy`` + ``samples.csv``)."""
    rng = np.random.default_rng(seed)
    splits = [name for name, count in per_split.items() for _ in range(count)]
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "landmarks.npy", rng.uniform(0.2, 0.8, (len(splits), 478, 3)).astype(np.float32))
    with open(root / "samples.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "path", "label", "split", "width", "height"])
        for i, split in enumerate(splits):
            writer.writerow([i, f"img{i}.png", CLASSES[i % len(CLASSES)], split, 48, 48])
    return root


def write_encoder(directory: Path) -> Path:
    """A tiny random LandmarkEncoder checkpoint with a normaliser."""
    backbone = PointMLPConfig(embed_dim=8, dim_expansion=[2], pre_blocks=[1], pos_blocks=[1], k_neighbors=[4],
                              reducers=[4], feature_dim=16, head_hidden_dim=16)
    config = LandmarkEncoderConfig(backbone=dataclasses.asdict(backbone), objective="classify",
                                   normalizer=Normalizer(align=False).to_dict())
    torch.manual_seed(0)
    return LandmarkEncoder(config).save_pretrained(directory)


def write_llm(directory: Path) -> Path:
    """A tiny random Llama + tokenizer saved as a local Hugging Face folder."""
    tokenizer = tiny_tokenizer("smollm")
    tiny_llm("llama", tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class PointsDataset(torch.utils.data.Dataset):
    """Items whose points encode their label and index (so the fake model can answer from them)."""

    def __init__(self, n: int = 10):
        self.labels = [i % len(CLASSES) for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        points = torch.zeros(478, 3)
        points[0, 0], points[0, 1] = self.labels[i], 100 + i
        return {"points": points, "label": self.labels[i], "index": 100 + i}

"""The accuracy levers of stage 2: answers drawn from crowd votes (soft targets) and an unfrozen encoder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from facephi.data.instruction import InstructionDataset
from facephi.labels import CLASSES
from facephi.train.config import TrainConfig
from facephi.train.runner import answer_votes
from facephi.train.stages import train_stage
from facephi.utils.errors import FacePhiError
from train_fixtures import make_dataset, make_model, tiny_config, write_landmark_set


def _base(n: int) -> list[dict]:
    return [{"points": torch.zeros(478, 3), "label": 0, "index": i} for i in range(n)]


def _answers_class(dataset: InstructionDataset, epochs: int) -> list[list[int]]:
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        out.append([dataset[i]["answer_class"] for i in range(len(dataset))])
    return out


def test_answers_follow_the_votes():
    model = make_model()
    votes = np.zeros((3, len(CLASSES)))
    votes[0, 3] = 10  # unanimous surprise
    votes[1, [1, 2]] = 5  # split between happiness and sadness
    # row 2: no votes -> the label
    dataset = InstructionDataset(_base(3), model.formatter, seed=0, votes=votes)
    drawn = np.array(_answers_class(dataset, 200))
    assert (drawn[:, 0] == 3).all() and (drawn[:, 2] == 0).all()
    assert set(drawn[:, 1]) == {1, 2} and 0.4 < (drawn[:, 1] == 1).mean() < 0.6
    assert all(dataset[i]["label"] == 0 for i in range(3))  # the label is unchanged
    # the answer text names the drawn class; the same draw in another run
    dataset.set_epoch(7)
    item = dataset[1]
    again = InstructionDataset(_base(3), model.formatter, seed=0, votes=votes)
    again.set_epoch(7)
    assert again[1]["answer"] == item["answer"] and again[1]["answer_class"] == item["answer_class"]
    name = CLASSES[item["answer_class"]]
    assert ("happ" if name == "happiness" else "sad") in item["answer"].lower()
    # another seed draws otherwise somewhere
    other = InstructionDataset(_base(3), model.formatter, seed=1, votes=votes)
    assert np.array(_answers_class(other, 200))[:, 1].tolist() != drawn[:, 1].tolist()


def test_without_votes_the_answer_names_the_label():
    model = make_model()
    dataset = InstructionDataset(_base(2), model.formatter, seed=0)
    assert all(dataset[i]["answer_class"] == 0 for i in range(2))


def test_bad_votes_are_refused():
    model = make_model()
    with pytest.raises(FacePhiError, match="votes must be finite non-negative"):
        InstructionDataset(_base(2), model.formatter, votes=np.ones((2, 5)))
    with pytest.raises(FacePhiError, match="votes must be finite non-negative"):
        InstructionDataset(_base(2), model.formatter, votes=-np.ones((2, len(CLASSES))))


def test_vote_answers_need_a_dataset_with_votes(tmp_path):
    from facephi.landmarks.store import LandmarkSet

    root = write_landmark_set(tmp_path / "plain", {"train": 8, "valid": 8})
    plain = LandmarkSet.load(root)
    config = TrainConfig(stage=2, answer_labels="votes")
    with pytest.raises(FacePhiError, match="--answer-labels votes: .* has no crowd votes"):
        answer_votes(plain, config)
    assert answer_votes(plain, TrainConfig(stage=2)) is None
    # the same set with vote columns
    rows = list(csv.reader(open(root / "samples.csv", encoding="utf-8")))
    header = rows[0] + [f"votes_{name}" for name in CLASSES]
    with open(root / "samples.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, row in enumerate(rows[1:]):
            writer.writerow(row + [10 if k == i % len(CLASSES) else 0 for k in range(len(CLASSES))])
    votes = answer_votes(LandmarkSet.load(root), config)
    assert votes.shape == (16, len(CLASSES)) and votes[3, 3] == 10


def test_lever_settings_are_checked():
    with pytest.raises(FacePhiError, match="train_encoder.*stage 2 only"):
        TrainConfig(stage=1, train_encoder=True)
    with pytest.raises(FacePhiError, match="answer_labels"):
        TrainConfig(stage=2, answer_labels="soft")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_with_train_encoder_changes_the_encoder_but_not_its_statistics(tmp_path):
    model = make_model()
    before = _state(model.encoder)
    train_stage(model, make_dataset(model), tiny_config(2, max_steps=2, lr=1e-2, train_encoder=True),
                tmp_path / "run", progress=False)
    after = _state(model.encoder)
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    statistics = [k for k in before if k not in weights]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)  # eval-mode BatchNorm
    assert any(not torch.equal(before[k], after[k]) for k in weights)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["settings"]["train"]["train_encoder"] is True


def test_stage2_without_train_encoder_keeps_the_encoder(tmp_path):
    model = make_model()
    before = _state(model.encoder)
    train_stage(model, make_dataset(model), tiny_config(2, max_steps=1, lr=1e-2), tmp_path / "run", progress=False)
    assert all(torch.equal(v, _state(model.encoder)[k]) for k, v in before.items())

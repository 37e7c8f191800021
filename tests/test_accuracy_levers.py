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


# ---------------------------------------------------------------------------- class-weighted answer loss

def _weighted_batch(model, weights):
    from test_speed_levers import batch_of

    batch = batch_of(model)
    batch["weights"] = torch.tensor(weights, dtype=torch.float32)
    return batch


def _row_losses(model, batch):
    """Each row's own mean answer NLL and its label-token count (one forward per row, no weights)."""
    losses, counts = [], []
    for row in range(len(batch["labels"])):
        single = {key: batch[key][row:row + 1] for key in ("input_ids", "attention_mask", "labels", "points")}
        with torch.no_grad():
            losses.append(float(model(**single).loss))
        counts.append(int((single["labels"][:, 1:] != -100).sum()))
    return np.array(losses), np.array(counts)


@pytest.mark.parametrize("architecture,answer_only_head", [("llama", True), ("phi", False), ("gpt2", True)])
@pytest.mark.parametrize("fast", [False, True])
@torch.no_grad()
def test_class_weighted_loss_is_the_weighted_mean_of_the_answer_tokens(architecture, answer_only_head, fast):
    from test_facephi_model import build

    model = build(architecture)
    model.config.answer_only_head = answer_only_head
    model.set_trainable(1)
    model.eval()
    model.fast_path = fast
    weights = [3.0, 0.5, 1.0, 2.0]
    batch = _weighted_batch(model, weights)
    losses, counts = _row_losses(model, batch)
    expected = (np.array(weights) * counts * losses).sum() / (np.array(weights) * counts).sum()
    assert float(model(**batch).loss) == pytest.approx(expected, rel=1e-5)
    plain = {key: value for key, value in batch.items() if key != "weights"}
    equal = {**plain, "weights": torch.full((4,), 2.5)}  # equal weights: the plain mean
    assert float(model(**equal).loss) == pytest.approx(float(model(**plain).loss), rel=1e-6)
    assert float(model(**batch).loss) != pytest.approx(float(model(**plain).loss), rel=1e-4)


@pytest.mark.parametrize("trained", ["projector", "full"])
def test_class_weighted_fast_path_equals_the_plain_loss_and_gradients(monkeypatch, trained):
    import facephi.model.facephi as facephi_module
    from test_facephi_model import build
    from test_speed_levers import assert_same

    monkeypatch.setattr(facephi_module, "PASS_OVERHEAD_TOKENS", 0)  # rows in length groups (frozen LLM)
    model = build("llama")
    model.set_trainable(1 if trained == "projector" else 2)
    model.eval()
    assert_same(model, _weighted_batch(model, [3.0, 0.5, 1.0, 2.0]), atol=1e-5)


def test_a_batch_whose_weights_are_all_zero_has_zero_loss_not_nan():
    from test_facephi_model import build

    model = build("llama")
    model.set_trainable(1)
    model.eval()
    for fast in (False, True):
        model.fast_path = fast
        loss = model(**_weighted_batch(model, [0.0] * 4)).loss
        loss.backward()
        assert float(loss) == 0.0
        assert all(torch.isfinite(p.grad).all() for p in model.projector.parameters())
        model.zero_grad(set_to_none=True)


def test_weights_need_one_per_row():
    from test_facephi_model import build

    model = build("llama")
    batch = _weighted_batch(model, [1.0] * 4)
    batch["weights"] = batch["weights"][:3]
    with pytest.raises(FacePhiError, match="one weight per row"):
        model(**batch)


def test_items_carry_the_weight_of_the_class_their_answer_names():
    model = make_model()
    weights = np.arange(1, len(CLASSES) + 1, dtype=float)
    base = [{"points": torch.zeros(478, 3), "label": i % len(CLASSES), "index": i} for i in range(16)]
    dataset = InstructionDataset(base, model.formatter, class_weights=weights)
    assert [dataset[i]["weight"] for i in range(16)] == [weights[i % len(CLASSES)] for i in range(16)]
    votes = np.zeros((16, len(CLASSES)))
    votes[:, 4] = 10  # every answer names fear, whatever the label
    voted = InstructionDataset(base, model.formatter, votes=votes, class_weights=weights)
    assert all(voted[i]["weight"] == weights[4] for i in range(16))
    assert "weight" not in InstructionDataset(base, model.formatter)[0]
    from facephi.train.stages import collate_train

    batch = collate_train([dataset[i] for i in range(3)])
    assert batch["weights"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(FacePhiError, match="class_weights must be 8 finite non-negative"):
        InstructionDataset(base, model.formatter, class_weights=-weights)
    with pytest.raises(FacePhiError, match="class_weights must be 8 finite non-negative"):
        InstructionDataset(base, model.formatter, class_weights=weights[:3])


def test_training_with_class_weights_records_them_and_weights_only_the_training_answers(tmp_path):
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.runner import load_stage_data

    from facephi.landmarks.normalize import Normalizer

    root = write_landmark_set(tmp_path / "set", {"train": 24, "valid": 8})
    model = make_model()
    model.encoder.normalizer = Normalizer(align=False)
    config = TrainConfig(stage=1, class_weights="balanced", limit_valid=None)
    train_set, valid_set, described = load_stage_data(model, LandmarkSet.load(root), config)
    counts = np.bincount(np.asarray(train_set.base.labels), minlength=len(CLASSES))
    expected = counts.sum() / (len(CLASSES) * counts)
    assert described["train_class_weights"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert train_set[0]["weight"] == pytest.approx(expected[train_set[0]["answer_class"]])
    assert "weight" not in valid_set[0]  # the valid loss stays the plain mean
    _, _, plain = load_stage_data(model, LandmarkSet.load(root), TrainConfig(stage=1, limit_valid=None))
    assert "train_class_weights" not in plain
    result = train_stage(model, train_set, tiny_config(1, max_steps=2, class_weights="balanced"), tmp_path / "run",
                         valid_set=valid_set, sources=described, progress=False)
    assert result.finished
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["settings"]["train"]["class_weights"] == "balanced"
    assert np.isfinite([entry["loss"] for entry in json.loads((tmp_path / "run" / "metrics.json").read_text())["log"]]).all()


def test_a_batch_without_label_tokens_is_refused_on_every_path():
    from test_facephi_model import build

    model = build("llama")
    model.set_trainable(1)
    model.eval()
    batch = _weighted_batch(model, [1.0] * 4)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    for fast in (False, True):
        model.fast_path = fast
        for weights in (None, batch["weights"]):
            with pytest.raises(FacePhiError, match="the batch has no label token"):
                model(**{**batch, "weights": weights})

"""`facephi align` end to end on a tiny synthetic landmark set, plus the dataset and objectives."""

import csv
import json

import numpy as np
import pytest
import torch

from facephi.cli import main
from facephi.labels import CLASSES
from facephi.landmarks.normalize import Normalizer
from facephi.model.encoder import LandmarkEncoder

TINY = ["--encoder", "pointmlp-elite", "--encoder-option", "embed_dim=8", "--encoder-option", "dim_expansion=[2]",
        "--encoder-option", "pre_blocks=[1]", "--encoder-option", "pos_blocks=[1]", "--encoder-option",
        "k_neighbors=[4]", "--encoder-option", "reducers=[4]", "--encoder-option", "feature_dim=16",
        "--encoder-option", "head_hidden_dim=16", "--threads", "1", "--probe-samples", "32", "--batch-size", "8"]


def write_landmark_set(root, per_split=(("train", 32), ("valid", 8), ("test", 8))):
    """Faces = a random base shape, stretched along x by an amount that depends on the class."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, (478, 3))
    rows, faces = [], []
    for split, count in per_split:
        for i in range(count):
            label = i % 4
            face = base + rng.normal(0, 0.01, base.shape)
            face[:, 0] = 0.5 + (face[:, 0] - 0.5) * (1 + 0.3 * label)
            rows.append([len(rows), f"img{len(rows)}.png", CLASSES[label], split, 48, 48])
            faces.append(face)
    root.mkdir(parents=True)
    np.save(root / "landmarks.npy", np.asarray(faces, np.float32))
    with open(root / "samples.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "path", "label", "split", "width", "height"])
        writer.writerows(rows)
    return root


def write_tiny_text_tower(root):
    """A 1-layer BERT with a word-level vocabulary of the caption words, saved as an HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from facephi.data.templates import CAPTION_TEMPLATES

    words = sorted({w.strip(".").lower() for t in CAPTION_TEMPLATES for w in t.split()} | set(CLASSES))
    root.mkdir(parents=True)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    return write_landmark_set(root / "data"), write_tiny_text_tower(root / "tower")


def test_dataset_normalises_once_and_augments_per_index_and_epoch(tiny_data):
    from facephi.data.dataset import LandmarkDataset
    from facephi.landmarks.store import LandmarkSet

    class Jitter:
        def __call__(self, points, rng):
            return points + rng.normal(0, 0.01, points.shape).astype(np.float32)

    landmark_set = LandmarkSet.load(tiny_data[0])
    normalizer = Normalizer(align=False)
    indices = landmark_set.indices("valid")
    plain = LandmarkDataset(landmark_set, indices, normalizer)
    item = plain[3]
    assert item["index"] == indices[3] and item["label"] == landmark_set.labels[indices[3]]
    expected = normalizer(landmark_set.landmarks[indices[3]], landmark_set.sizes[indices[3]])
    assert item["points"].dtype == torch.float32 and torch.allclose(item["points"], torch.from_numpy(expected))

    augmented = LandmarkDataset(landmark_set, indices, normalizer, Jitter(), seed=5)
    first = augmented[3]["points"]
    assert torch.equal(first, augmented[3]["points"])  # same (index, epoch): same draw
    assert not torch.equal(first, item["points"])
    augmented.set_epoch(1)
    assert not torch.equal(first, augmented[3]["points"])
    reordered = LandmarkDataset(landmark_set, indices[::-1].copy(), normalizer, Jitter(), seed=5)
    assert torch.equal(reordered[len(indices) - 4]["points"], first)  # keyed by sample, not position


def test_align_end_to_end_resume_and_errors(tiny_data, tmp_path, capsys):
    data, tower = tiny_data
    common = ["align", "--data", str(data), "--text-tower", str(tower), "--augment", "none", "--lr", "1e-3", *TINY]
    straight = tmp_path / "straight"
    assert main([*common, "--out", str(straight), "--epochs", "3"]) == 0
    assert "test zero-shot: accuracy" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "metrics.json", "run.json"):
        assert (straight / name).is_file(), name
    last = straight / "checkpoints" / "step-0000012"  # 3 epochs of 4 steps: the training loop's checkpoint
    for name in ("optimizer.safetensors", "rng-0.safetensors", "trainer_state.json", "trainable.safetensors",
                 "scheduler.json"):
        assert (last / name).is_file(), name
    assert [p.name for p in last.parent.iterdir()] == [last.name]  # older epochs' checkpoints pruned
    metrics = json.loads((straight / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert set(metrics["test"]) >= {"accuracy", "balanced_accuracy", "probe_accuracy"}
    model = LandmarkEncoder.from_pretrained(straight)
    assert model.config.objective == "align" and model.config.text_tower == str(tower)
    assert model.config.text_dim == 16 and model.config.metrics["test"] == metrics["test"]
    assert model.config.metrics["best_epoch"] == metrics["best"]["epoch"]
    assert model.normalizer is not None and model.normalizer.template.shape == (478, 3)
    run = json.loads((straight / "run.json").read_text())
    assert run["seed"] == 0 and run["settings"]["align"]["epochs"] == 3 and "torch" in run["versions"]

    # an existing checkpoint is not overwritten by accident
    assert main([*common, "--out", str(straight), "--epochs", "3"]) == 2
    assert "--resume" in capsys.readouterr().err

    # 2 epochs, then resume to 3: the same trajectory as 3 epochs straight
    resumed = tmp_path / "resumed"
    assert main([*common, "--out", str(resumed), "--epochs", "2"]) == 0
    assert main([*common, "--out", str(resumed), "--epochs", "3", "--resume"]) == 0
    history = json.loads((resumed / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for a, b in zip(history, metrics["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid"]["accuracy"] == b["valid"]["accuracy"]
    assert main([*common, "--out", str(resumed), "--epochs", "3", "--resume", "--seed", "1"]) == 2
    assert "started with other settings (seed)" in capsys.readouterr().err
    assert main([*common, "--out", str(resumed), "--epochs", "3", "--resume", "--lr", "1e-2"]) == 2
    assert "started with other settings (lr)" in capsys.readouterr().err


def test_classify_with_balanced_weights_and_bad_arguments(tiny_data, tmp_path, capsys):
    data, _ = tiny_data
    out = tmp_path / "classify"
    args = ["align", "--data", str(data), "--objective", "classify", "--class-weights", "balanced",
            "--epochs", "1", *TINY]  # with the default (real) augmentation
    assert main([*args, "--out", str(out)]) == 0
    model = LandmarkEncoder.from_pretrained(out)
    assert model.config.objective == "classify" and model.config.training["class_weights"] == "balanced"
    assert model.config.training["augment"] == "full"
    assert "test classifier: accuracy" in capsys.readouterr().out

    assert main(["align", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "none: not found (--data)" in capsys.readouterr().err
    assert main(["align", "--data", str(data), "--out", str(tmp_path / "y"), "--class-weights", "balanced"]) == 2
    assert "classify only" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "z"), "--encoder-option", "k_neighbors=[999]"]) == 2
    assert "--encoder pointmlp-elite" in capsys.readouterr().err


def test_standardized_input_statistics_come_from_the_unaugmented_train_split(tiny_data, tmp_path):
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.align import AlignConfig, split_indices

    data, _ = tiny_data
    out = tmp_path / "std"
    assert main(["align", "--data", str(data), "--out", str(out), "--objective", "classify", "--epochs", "1",
                 *TINY, "--encoder-option", "standardize_input=true"]) == 0
    model = LandmarkEncoder.from_pretrained(out)
    landmark_set = LandmarkSet.load(data)
    train = split_indices(landmark_set, AlignConfig(data=str(data), out=str(out), batch_size=8))["train"]
    points = torch.from_numpy(model.normalizer(landmark_set.landmarks[train], landmark_set.sizes[train]))
    assert torch.allclose(model.backbone.input_mean, points.mean(0), atol=1e-6)
    assert torch.allclose(model.backbone.input_std, points.std(0).clamp_min(points.std(0).mean() * 0.1), atol=1e-6)


def test_objectives_reduce_the_loss_in_a_few_steps(tiny_data):
    from facephi.landmarks.store import LandmarkSet
    from facephi.model.encoder import LandmarkEncoderConfig
    from facephi.train.align import AlignObjective, ClassifyObjective
    from test_encoder import TINY_BACKBONE

    landmark_set = LandmarkSet.load(tiny_data[0])
    idx = landmark_set.indices("train")
    points = torch.from_numpy(Normalizer(align=False)(landmark_set.landmarks[idx], landmark_set.sizes[idx]))
    labels = torch.from_numpy(landmark_set.labels[idx])
    for objective in (AlignObjective(), ClassifyObjective()):
        torch.manual_seed(0)
        model = LandmarkEncoder(LandmarkEncoderConfig(backbone=TINY_BACKBONE, objective=objective.name, text_dim=8))
        if objective.name == "align":
            model.set_class_text_embeddings(torch.randn(8, 8))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(15):
            loss = objective.loss(model, points, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            objective.after_step(model)
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], (objective.name, losses)


def test_carved_splits_do_not_depend_on_the_training_seed(tmp_path):
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.align import AlignConfig, split_indices

    data = write_landmark_set(tmp_path / "data", per_split=(("train", 60),))
    landmark_set = LandmarkSet.load(data)
    splits = [split_indices(landmark_set, AlignConfig(data=str(data), out="x", seed=seed, batch_size=8))
              for seed in (0, 5)]
    assert all(np.array_equal(splits[0][k], splits[1][k]) for k in ("train", "valid", "test"))
    assert np.array_equal(splits[0]["test"], landmark_set.standard_splits()["test"])


def test_class_weights_balanced_and_sqrt():
    from facephi.train.weights import class_weights

    labels = np.array([0] * 6 + [1] * 3 + [3] * 1)  # class 2 absent
    balanced = class_weights(labels, 4, "balanced")
    assert torch.allclose(balanced, torch.tensor([10 / 18, 10 / 9, 0.0, 10 / 3]))
    assert torch.allclose(class_weights(labels, 4, "sqrt"), balanced.sqrt())
    for kind in ("inverse", "none"):
        with pytest.raises(ValueError, match="sqrt"):
            class_weights(labels, 4, kind)


def test_align_encoder_choices_are_the_registry_presets():
    import dataclasses

    from facephi.model.pointmlp import PointMLPConfig
    from facephi.presets import ENCODERS, LANDMARK_MLP_PRESETS, POINTMLP_PRESETS
    from facephi.train.config import AlignConfig
    from facephi.utils.errors import FacePhiError

    choices = next(f for f in dataclasses.fields(AlignConfig) if f.name == "encoder").metadata["choices"]
    assert ENCODERS == tuple(POINTMLP_PRESETS) + tuple(LANDMARK_MLP_PRESETS) == choices
    elite = PointMLPConfig.preset("pointmlp-elite")
    elite.dim_expansion.append(9)  # a preset's lists are the config's own, the registry is untouched
    assert PointMLPConfig.preset("pointmlp-elite").dim_expansion == [2, 2, 2, 1]
    with pytest.raises(FacePhiError, match="unknown PointMLP preset 'x'; choose one of pointmlp, pointmlp-elite"):
        PointMLPConfig.preset("x")


def test_classify_with_logit_adjustment_records_tau_and_prior(tiny_data, tmp_path, capsys):
    from facephi.model.losses import logit_adjusted_cross_entropy
    from facephi.train.align import ClassifyObjective
    from facephi.train.weights import class_prior

    data, _ = tiny_data
    out = tmp_path / "adjusted"
    args = ["align", "--data", str(data), "--objective", "classify", "--epochs", "1", "--augment", "none", *TINY]
    assert main([*args, "--out", str(out), "--logit-adjust", "1.0", "--limit-train", "12"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["align"]["logit_adjust"] == 1.0
    prior = run["logit_adjustment"]["train_prior"]
    assert run["logit_adjustment"]["tau"] == 1.0 and len(prior) == len(CLASSES) and sum(prior) == pytest.approx(1)
    assert prior[4:] == [0.0] * 4 and all(p > 0 for p in prior[:4])  # the tiny set has 4 classes
    assert LandmarkEncoder.from_pretrained(out).config.training["logit_adjust"] == 1.0
    plain = tmp_path / "plain"
    assert main([*args, "--out", str(plain)]) == 0
    assert json.loads((plain / "run.json").read_text())["logit_adjustment"] is None

    model = LandmarkEncoder.from_pretrained(out).eval()
    points, labels = torch.rand(6, 478, 3) * 2 - 1, torch.tensor([0, 1, 2, 3, 0, 1])
    train_prior = class_prior(np.array([0, 0, 1, 2, 3, 3]), len(CLASSES))
    with torch.no_grad():
        adjusted = ClassifyObjective(None, train_prior, 0.7).loss(model, points, labels)
        assert torch.equal(adjusted, logit_adjusted_cross_entropy(model.class_logits(points), labels, train_prior, 0.7))
        assert torch.equal(ClassifyObjective().loss(model, points, labels),
                           torch.nn.functional.cross_entropy(model.class_logits(points), labels))

    assert main(["align", "--data", str(data), "--out", str(tmp_path / "bad"), "--logit-adjust", "1"]) == 2
    assert "logit_adjust (--logit-adjust): applies to --objective classify only" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "neg"), "--logit-adjust", "-1"]) == 2
    assert "--logit-adjust" in capsys.readouterr().err


def test_limit_policy_balanced_draws_balanced_subsets(tiny_data):
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.align import split_indices
    from facephi.train.config import AlignConfig

    data, _ = tiny_data
    landmark_set = LandmarkSet.load(data)
    base = dict(data=str(data), out="unused", batch_size=8, limit_train=12, limit_valid=4)
    balanced = split_indices(landmark_set, AlignConfig(**base, limit_policy="balanced"))
    assert np.bincount(landmark_set.labels[balanced["train"]], minlength=4)[:4].tolist() == [3, 3, 3, 3]
    assert np.bincount(landmark_set.labels[balanced["valid"]], minlength=4)[:4].tolist() == [1, 1, 1, 1]
    random = split_indices(landmark_set, AlignConfig(**base, limit_policy="random"))
    assert random["train"].tolist() == sorted(
        np.random.default_rng([0, 7, 0]).choice(landmark_set.select("train"), 12, replace=False).tolist())

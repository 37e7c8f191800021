"""LandmarkEncoder: heads, zero-shot logits, checkpoint round trip and its errors."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from facephi.landmarks.normalize import Normalizer
from facephi.model.encoder import LandmarkEncoder, LandmarkEncoderConfig, backbone_config
from facephi.model.landmark_mlp import LandmarkMLPConfig, LandmarkMLPEncoder
from facephi.model.pointmlp import PointMLPConfig
from facephi.utils.errors import FacePhiError

TINY_BACKBONE = dataclasses.asdict(
    PointMLPConfig(embed_dim=8, dim_expansion=[2], pre_blocks=[1], pos_blocks=[1], k_neighbors=[4],
                   reducers=[4], feature_dim=16, head_hidden_dim=16)
)


LANDMARK_EXTENSIONS = {"point_embedding": True, "standardize_input": True, "grouping": "template"}


def tiny(objective: str, **backbone: object) -> LandmarkEncoder:
    torch.manual_seed(0)
    template = np.random.default_rng(0).uniform(-1, 1, (478, 3))
    config = LandmarkEncoderConfig(backbone={**TINY_BACKBONE, **backbone}, objective=objective, text_dim=12,
                                   normalizer=Normalizer(template=template).to_dict(), text_tower="tiny")
    model = LandmarkEncoder(config)
    if objective == "align":
        model.set_class_text_embeddings(torch.randn(8, 12))
    if model.backbone.needs_landmark_statistics:
        model.backbone.fit_landmark_statistics(torch.from_numpy(template).float() + 0.05 * torch.randn(16, 478, 3))
    return model.eval()


def points(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 478, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("objective,backbone", [("align", {}), ("classify", {}), ("classify", LANDMARK_EXTENSIONS)])
def test_shapes_and_round_trip_give_identical_outputs(objective, backbone, tmp_path):
    model = tiny(objective, **backbone)
    x = points()
    with torch.no_grad():
        features, logits = model(x), model.class_logits(x)
    assert features.shape == (3, 16) and logits.shape == (3, 8)
    model.config.metrics = {"valid": {"accuracy": 0.5}}
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = LandmarkEncoder.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(x), features)
        assert torch.equal(loaded.class_logits(x), logits)
    assert loaded.config == model.config
    assert np.allclose(loaded.normalizer.template, model.normalizer.template, atol=1e-6)


def test_zero_shot_logits_are_scaled_cosines_to_class_captions():
    model = tiny("align")
    x = points(2)
    with torch.no_grad():
        embedding = model.embed(x)
        expected = model.logit_scale.exp() * embedding @ torch.nn.functional.normalize(model.class_text_embeddings, dim=1).t()
        assert torch.allclose(model.class_logits(x), expected, atol=1e-5)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="objective='align'"):
        tiny("classify").embed(x)
    with pytest.raises(ValueError, match=r"\(8, 12\)"):
        model.set_class_text_embeddings(torch.zeros(8, 5))


def test_normalize_uses_the_stored_normalizer():
    model = tiny("classify")
    raw = np.random.default_rng(2).uniform(0.2, 0.8, (2, 478, 3)).astype(np.float32)
    sizes = np.array([[48, 48], [64, 32]], np.float32)
    out = model.normalize(raw, sizes)
    assert out.dtype == torch.float32 and out.shape == (2, 478, 3)
    assert np.allclose(out.numpy(), model.normalizer(raw, sizes))


def test_loading_errors_are_specific(tmp_path):
    with pytest.raises(FacePhiError, match="config.json: missing"):
        LandmarkEncoder.from_pretrained(tmp_path)
    directory = tiny("classify").save_pretrained(tmp_path / "ok")

    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FacePhiError, match="unreadable safetensors"):
        LandmarkEncoder.from_pretrained(directory)

    tiny("classify").save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config["objective"] = "align"  # weights lack the projection / logit scale
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(FacePhiError, match="do not match"):
        LandmarkEncoder.from_pretrained(directory)

    config["objective"] = "regress"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(FacePhiError, match="config.json: objective: must be one of align, classify; got 'regress'"):
        LandmarkEncoder.from_pretrained(directory)

    (directory / "config.json").write_text("{not json")
    with pytest.raises(FacePhiError, match="config.json: invalid JSON"):
        LandmarkEncoder.from_pretrained(directory)


def tiny_landmark_mlp(objective: str) -> LandmarkEncoder:
    torch.manual_seed(0)
    template = np.random.default_rng(0).uniform(-1, 1, (478, 3))
    config = LandmarkEncoderConfig(backbone_type="landmark-mlp",
                                   backbone=dataclasses.asdict(LandmarkMLPConfig(hidden_dim=8, feature_dim=16)),
                                   objective=objective, text_dim=12, text_tower="tiny",
                                   normalizer=Normalizer(template=template).to_dict())
    model = LandmarkEncoder(config)
    if objective == "align":
        model.set_class_text_embeddings(torch.randn(8, 12))
    model.backbone.fit_landmark_statistics(torch.from_numpy(template).float() + 0.05 * torch.randn(16, 478, 3))
    return model.eval()


@pytest.mark.parametrize("objective", ["align", "classify"])
def test_landmark_mlp_round_trip_gives_identical_outputs(objective, tmp_path):
    model = tiny_landmark_mlp(objective)
    x = points()
    with torch.no_grad():
        features, logits = model(x), model.class_logits(x)
    assert features.shape == (3, 16) and logits.shape == (3, 8)
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["backbone_type"] == "landmark-mlp"
    loaded = LandmarkEncoder.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(x), features) and torch.equal(loaded.class_logits(x), logits)


def test_landmark_mlp_standardises_each_coordinate_by_the_training_faces():
    backbone = LandmarkMLPEncoder(LandmarkMLPConfig(hidden_dim=4, feature_dim=4))
    faces = torch.randn(64, 478, 3) * torch.linspace(0.5, 2.0, 3) + 3.0
    backbone.fit_landmark_statistics(faces)
    standardised = (faces.flatten(1) - backbone.input_mean) / backbone.input_std
    assert torch.allclose(standardised.mean(0), torch.zeros(478 * 3), atol=1e-4)
    assert torch.allclose(standardised.std(0), torch.ones(478 * 3), atol=1e-4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        backbone.fit_landmark_statistics(faces[:1])
    with pytest.raises(ValueError, match=r"expected points \[B, 478, 3\]"):
        backbone(torch.zeros(2, 468, 3))


def test_encoder_presets_name_their_backbone_kind():
    assert backbone_config("landmark-mlp", {"hidden_dim": 64})[0] == "landmark-mlp"
    assert backbone_config("landmark-mlp", {"hidden_dim": 64})[1].hidden_dim == 64
    assert backbone_config("pointmlp-elite", {})[0] == "pointmlp"
    with pytest.raises(FacePhiError, match="backbone_type"):
        LandmarkEncoderConfig(backbone_type="resnet")

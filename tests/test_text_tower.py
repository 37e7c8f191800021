"""Frozen text tower: offline loading, pooling, class caption embeddings."""

import pytest
import torch

from facephi.model.text_tower import (
    DEFAULT_TEXT_TOWER,
    TextTower,
    class_captions,
    class_text_embeddings,
    resolve_text_tower,
)
from facephi.utils.errors import FacePhiError


def test_missing_local_tower_is_a_clear_error(tmp_path):
    with pytest.raises(FacePhiError, match="no such folder"):
        resolve_text_tower(str(tmp_path / "nope"))
    with pytest.raises(FacePhiError, match="cannot load it offline"):
        TextTower(str(tmp_path))  # exists, but holds no model


def test_class_captions_fill_every_template():
    captions = class_captions(["a {emotion}.", "b {emotion}!"], ["happiness", "fear"])
    assert captions == [["a happiness.", "b happiness!"], ["a fear.", "b fear!"]]


@pytest.mark.integration
def test_minilm_embeddings_are_unit_norm_and_semantic():
    tower = TextTower(DEFAULT_TEXT_TOWER)
    assert tower.dim == 384
    assert not any(p.requires_grad for p in tower.parameters())
    texts = [
        "The facial landmark shows emotion of happiness.",
        "The facial landmark shows emotion of joy.",
        "A photo of a red car parked on the street.",
    ]
    emb = tower.encode(texts)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    # padding must not change a text's embedding (mean pooling over the attention mask)
    alone = tower.encode(texts[:1])
    assert torch.allclose(alone[0], emb[0], atol=1e-5)

    templates = ["The facial landmark shows emotion of {emotion}.", "A face expressing {emotion}."]
    per_class = class_text_embeddings(tower, templates)
    assert per_class.shape == (8, 384)
    assert torch.allclose(per_class.norm(dim=1), torch.ones(8), atol=1e-5)
    manual = torch.nn.functional.normalize(tower.encode([t.format(emotion="sadness") for t in templates]).mean(0), dim=0)
    assert torch.allclose(per_class[2], manual, atol=1e-5)
    # distinct classes get distinct embeddings
    sims = per_class @ per_class.t()
    assert (sims - torch.eye(8) * sims.diagonal()).max() < 0.999

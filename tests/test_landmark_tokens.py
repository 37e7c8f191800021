"""K > 1 landmark tokens (``ProjectorConfig.tokens``, ``TrainConfig.landmark_tokens``): the projector's
K embeddings replace K ``<landmark>`` placeholders in order; the fast paths stay exact; saved models
keep K; K = 1 stays the paper's layout."""

from __future__ import annotations

import pytest
import torch
from test_facephi_model import prompt_batch
from test_speed_levers import assert_same, batch_of
from tiny_models import TinyEncoder, tiny_llm, tiny_tokenizer

import facephi.model.class_scoring as class_scoring
from facephi.data.templates import INSTRUCTIONS
from facephi.model.facephi import FacePhiConfig, FacePhiModel
from facephi.model.projector import ProjectorConfig
from facephi.train.config import TrainConfig
from facephi.utils.errors import FacePhiError

K = 3


def build_k(k: int = K, architecture: str = "llama") -> FacePhiModel:
    tokenizer = tiny_tokenizer("smollm" if architecture == "llama" else "gpt2")
    llm = tiny_llm(architecture, tokenizer)
    torch.manual_seed(0)
    config = FacePhiConfig(llm=f"tiny-{architecture}", max_length=100, projector=ProjectorConfig(tokens=k))
    return FacePhiModel(config, TinyEncoder(), llm, tokenizer)


def test_k_embeddings_sit_at_the_k_placeholders_in_order():
    model = build_k()
    prompt = model.formatter.encode_prompt(INSTRUCTIONS[0])
    at = [i for i, t in enumerate(prompt) if t == model.landmark_id]
    assert len(at) == K and at == list(range(at[0], at[0] + K))  # K in a row, after "Users:"
    assert prompt[:at[0]] == model.formatter.shared_prefix
    batch = prompt_batch(model)
    embeds = model.embed(batch["input_ids"], batch["points"])
    projected = model.projector(model.encoder(batch["points"]))
    assert projected.shape == (3, K, model.llm.config.hidden_size)
    table = model.llm.get_input_embeddings().weight
    for row in range(3):
        where = (batch["input_ids"][row] == model.landmark_id).nonzero()[:, 0]
        for j, position in enumerate(where.tolist()):
            assert torch.equal(embeds[row, position], projected[row, j])
        others = [p for p in range(embeds.shape[1]) if p not in where.tolist()]
        assert torch.equal(embeds[row, others], table[batch["input_ids"][row, others]])


def test_a_wrong_number_of_placeholders_is_refused():
    model = build_k()
    ids = torch.tensor([model.formatter.encode_prompt(INSTRUCTIONS[0])])
    ids[0, ids[0].tolist().index(model.landmark_id)] = model.formatter.pad_id
    with pytest.raises(FacePhiError, match=f"exactly {K} <landmark> tokens; got counts"):
        model.embed(ids, torch.zeros(1, 478, 3))


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_fast_paths_equal_the_plain_computation_with_k_tokens(monkeypatch, architecture):
    model = build_k(architecture=architecture)
    model.set_trainable(2)
    assert_same(model, batch_of(model), atol=1e-5)
    points = torch.randn(3, 478, 3, generator=torch.Generator().manual_seed(3))
    instructions = [INSTRUCTIONS[i] for i in (1, 0, 7)]
    model.fast_path = False
    plain = model.class_log_likelihoods(points, instructions)
    model.fast_path = True
    monkeypatch.setattr(class_scoring, "SCORE_TOKENS", 1)
    monkeypatch.setattr(model.scorer, "plain_scores", None)  # the tree pass only
    torch.testing.assert_close(model.class_log_likelihoods(points, instructions), plain, rtol=1e-5, atol=1e-5)
    assert len(model.answer(points, instructions, max_new_tokens=2)) == 3


def test_a_saved_model_keeps_k(tmp_path):
    from tiny_models import TinyEncoder as Encoder

    model = build_k()
    model.save_pretrained(tmp_path / "m", save_llm=True)
    loaded = FacePhiModel.from_pretrained(tmp_path / "m", encoder_loader=Encoder.from_pretrained)
    assert loaded.config.projector.tokens == K and loaded.formatter.landmark_tokens == K
    points = torch.randn(2, 478, 3)
    torch.testing.assert_close(loaded.class_probabilities(points, ["x"] * 2),
                               model.class_probabilities(points, ["x"] * 2))


def test_k_is_a_stage_1_setting():
    assert TrainConfig(stage=1, landmark_tokens=4).landmark_tokens == 4
    with pytest.raises(FacePhiError, match="landmark_tokens.*stage 1"):
        TrainConfig(stage=2, landmark_tokens=4)
    with pytest.raises(FacePhiError, match="landmark_tokens"):
        TrainConfig(stage=1, landmark_tokens=0)
    with pytest.raises(FacePhiError, match="tokens"):
        ProjectorConfig(tokens=0)


def test_stage_2_checks_max_length_with_its_init_models_k(tmp_path):
    from facephi.train.runner import _stage_formatter

    build_k().save_pretrained(tmp_path / "m", save_llm=True)
    formatter = _stage_formatter(TrainConfig(stage=2), tmp_path / "m", None, None, None)
    assert formatter.landmark_tokens == K and formatter.max_length == 100

"""The answer prior (``model/answer_prior.py``): the class prior divided out of the answers in words
and of the class probabilities and the encoder's class probabilities multiplied in, the same in
``generate`` and the fast path, set from config.json, ``--answer-prior-tau`` or ``--encoder-weight``,
refused where it cannot apply."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_decoding import ASKED, faces, model_of, plain_answers

from facephi.cli import main
from facephi.labels import CLASSES
from facephi.model.answer_prior import check_answer_prior, check_encoder_weight, class_words
from facephi.model.facephi import FacePhiModel
from facephi.utils.errors import FacePhiError

NEW_TOKENS = 8


def with_prior(model, prior, tau):
    model.config.answer_prior = list(prior)
    model.answer_prior.set_tau(tau)
    return model


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_prior_that_favours_a_class_makes_both_paths_name_it_first(architecture):
    model = model_of(architecture, 1)
    points = faces()
    target = 5
    class_tokens = class_words(model.scorer.answers()[0])
    prior = [1.0] * len(CLASSES)
    prior[target] = 1e-30  # bias + 10 * 69 on the token that starts class 5's name
    with_prior(model, prior, 10.0)
    fast = model.answer(points, ASKED, NEW_TOKENS)
    assert fast == plain_answers(model, points, ASKED, NEW_TOKENS)
    name = model.tokenizer.decode([class_tokens[target]]).strip()
    assert name and all(answer.startswith(name) for answer in fast)


@pytest.mark.parametrize("tau", [0.0, 0.7])
def test_answers_with_a_prior_equal_generate_and_probabilities_divide_it_out(tau):
    model = model_of("llama", 4)
    points = faces(seed=5)
    prior = [0.35, 0.28, 0.12, 0.13, 0.02, 0.007, 0.09, 0.006]
    plain_probabilities = model.class_probabilities(points, ASKED)
    with_prior(model, prior, tau)
    answers, probabilities = model.answer_and_probabilities(points, ASKED, NEW_TOKENS)
    assert answers == plain_answers(model, points, ASKED, NEW_TOKENS)
    expected = plain_probabilities.double() / torch.tensor(prior, dtype=torch.float64) ** tau
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(probabilities.double(), expected, atol=1e-5)
    assert torch.allclose(model.class_probabilities(points, ASKED).double(), expected, atol=1e-5)
    assert (model.answer_prior.token_bias(None, len(points), points.device) is None) == (tau == 0)


def test_bias_sits_on_the_first_token_where_the_class_answers_part():
    model = model_of("llama", 1)
    answers = model.scorer.answers()[0]
    with_prior(model, [0.5] * len(CLASSES), 2.0)
    tokens, values = model.answer_prior.token_bias(None, 2, torch.device("cpu"))
    at = next(i for i in range(len(answers[0])) if len({a[i] for a in answers}) > 1)
    assert tokens == class_words(answers) == [a[at] for a in answers]
    assert values.shape == (2, len(CLASSES))
    assert values.flatten().tolist() == pytest.approx([-2.0 * math.log(0.5)] * 2 * len(CLASSES))
    model.answer_prior.set_tau(0.0)
    assert model.answer_prior.token_bias(None, 2, torch.device("cpu")) is None


def with_encoder_head(model):
    """Give the tiny stand-in encoder class logits that differ from face to face (its features + the
    face's first 8 x coordinates, which favour a different class in each random face)."""
    head = torch.nn.Linear(model.encoder.feature_dim, len(CLASSES))
    model.encoder.class_logits = lambda points: head(model.encoder(points)) + 10.0 * points[:, :len(CLASSES), 0]
    return model


@pytest.mark.parametrize("architecture, k", [("llama", 1), ("llama", 4), ("gpt2", 1)])
def test_encoder_weight_steers_each_face_by_its_own_encoder_and_both_paths_agree(architecture, k):
    model = with_encoder_head(model_of(architecture, k))
    points = faces(n=3, seed=11)
    with torch.inference_mode():
        log_q = model.encoder.class_logits(points).log_softmax(-1).double()
    plain_probabilities = model.class_probabilities(points, ASKED)
    prior = [0.35, 0.28, 0.12, 0.13, 0.02, 0.007, 0.09, 0.006]
    with_prior(model, prior, 0.5)
    model.answer_prior.set_encoder_weight(1.5)
    answers, probabilities = model.answer_and_probabilities(points, ASKED, NEW_TOKENS)
    assert answers == plain_answers(model, points, ASKED, NEW_TOKENS)
    expected = plain_probabilities.double() * (1.5 * log_q).exp() / torch.tensor(prior, dtype=torch.float64) ** 0.5
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(probabilities.double(), expected, atol=1e-5)
    assert torch.allclose(model.class_probabilities(points, ASKED).double(), expected, atol=1e-5)

    model.answer_prior.set_encoder_weight(10.0)  # the encoder's class decides the class word of every face
    with_prior(model, [1e-30] * len(CLASSES), 10.0)  # the class words, whichever, first (a random LLM)
    answers = model.answer(points, ASKED, NEW_TOKENS)
    assert answers == plain_answers(model, points, ASKED, NEW_TOKENS)
    names = [model.tokenizer.decode([token]).strip() for token in class_words(model.scorer.answers()[0])]
    favoured = [names[k] for k in log_q.argmax(-1).tolist()]
    assert len(set(favoured)) > 1, "the test's faces should favour different classes"
    assert all(answer.startswith(name) for answer, name in zip(answers, favoured)), (answers, favoured)


def test_the_encoder_reads_each_batch_once_for_answer_and_probabilities():
    model = with_encoder_head(model_of("llama", 1))
    head, calls = model.encoder.class_logits, []
    model.encoder.class_logits = lambda points: calls.append(len(points)) or head(points)
    model.answer_prior.set_encoder_weight(1.0)
    model.answer_and_probabilities(faces(n=3), ASKED, NEW_TOKENS)
    assert calls == [3]


def test_encoder_weight_needs_an_encoder_with_class_logits():
    model = model_of("llama", 1)
    with pytest.raises(FacePhiError, match="needs an encoder with class logits"):
        model.answer_prior.set_encoder_weight(1.0)
    model.answer_prior.set_encoder_weight(0.0)
    for bad in (-1.0, 10.5, float("nan"), "1"):
        with pytest.raises(FacePhiError, match="need a number from 0 to 10"):
            check_encoder_weight(bad)


@pytest.mark.parametrize("prior, tau, message", [
    ([1.0] * 7, 1.0, "need 8 finite positive numbers"),
    ([1.0] * 7 + [0.0], 1.0, "need 8 finite positive numbers"),
    ([1.0] * 7 + [float("nan")], 1.0, "need 8 finite positive numbers"),
    ("neutral", 1.0, "need 8 finite positive numbers"),
    ([1.0] * 8, -0.5, "tau must be a number from 0 to 10"),
    ([1.0] * 8, float("inf"), "tau must be a number from 0 to 10"),
    (None, 0.5, "has no answer_prior"),
])
def test_bad_priors_are_refused(prior, tau, message):
    with pytest.raises(FacePhiError, match=message):
        check_answer_prior(prior, tau)


def test_a_saved_prior_is_used_after_loading_and_cli_flags_are_checked(tmp_path, capsys):
    from test_evaluate import tiny_facephi
    from test_predict import raw_face

    model = tiny_facephi(tmp_path / "plain", save=False)
    model.save_pretrained(tmp_path / "plain", save_llm=True)
    np.save(tmp_path / "face.npy", raw_face(0))
    args = ["predict", "--json", "--max-new-tokens", "3", "--device", "cpu", str(tmp_path / "face.npy")]
    assert main([*args[:1], "--model", str(tmp_path / "plain"), "--answer-prior-tau", "0.5", *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "has no answer_prior" in err and "Traceback" not in err

    prior = [1.0] * len(CLASSES)
    prior[2] = 1e-30
    with_prior(model, prior, 10.0).save_pretrained(tmp_path / "prior", save_llm=True)
    loaded = FacePhiModel.from_pretrained(tmp_path / "prior")
    assert loaded.config.answer_prior == prior and loaded.config.answer_prior_tau == 10.0
    assert main([*args[:1], "--model", str(tmp_path / "prior"), *args[1:]]) == 0
    favoured = json.loads(capsys.readouterr().out.splitlines()[0])
    assert main([*args[:1], "--model", str(tmp_path / "prior"), "--answer-prior-tau", "0", *args[1:]]) == 0
    own = json.loads(capsys.readouterr().out.splitlines()[0])
    assert favoured["answer"] != own["answer"] and favoured["scores"]["sadness"] > 0.99
    assert main([*args[:1], "--model", str(tmp_path / "prior"), "--answer-prior-tau", "11", *args[1:]]) == 2
    assert "--answer-prior-tau" in capsys.readouterr().err

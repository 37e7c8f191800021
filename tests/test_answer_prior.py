"""The answer prior (``model/answer_prior.py``): the class prior divided out of the answers in words
and of the class probabilities, the same in ``generate`` and the fast path, set from config.json or
``--answer-prior-tau``, refused where it cannot apply."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_decoding import ASKED, faces, model_of, plain_answers

from facephi.cli import main
from facephi.labels import CLASSES
from facephi.model.answer_prior import check_answer_prior, class_word_bias
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
    class_tokens = class_word_bias(model.scorer.answers()[0], [1.0] * len(CLASSES), 1.0)[0]
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
    assert (model.answer_prior.weights() is None) == (tau == 0)


def test_bias_sits_on_the_first_token_where_the_class_answers_part():
    model = model_of("llama", 1)
    answers = model.scorer.answers()[0]
    tokens, values = class_word_bias(answers, [0.5] * len(CLASSES), 2.0)
    at = next(i for i in range(len(answers[0])) if len({a[i] for a in answers}) > 1)
    assert tokens == [a[at] for a in answers] and values == pytest.approx([-2.0 * math.log(0.5)] * len(CLASSES))
    assert class_word_bias(answers, [0.5] * len(CLASSES), 0.0) is None
    assert class_word_bias(answers, None, 0.0) is None


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

"""The class prior divided out of the answers in words (logit adjustment, Menon et al. 2021).

A model trained on FER+ (a third of its faces neutral) names the frequent classes too often on other
faces. ``FacePhiConfig.answer_prior`` (8 numbers in ``CLASSES`` order: the class frequencies of the
LLM's training data) and ``answer_prior_tau`` (τ, 0 = off) make the answers and the class
probabilities argmax ``log p(class) − τ · log prior(class)``:

* answers: ``−τ · log prior(k)`` is added to the logit of the first token of class k's name where
  the trained answers name it (the token where the 8 class answers of template 0 part), at every
  decoding step: those tokens appear in answers only there. ``generate`` gets it as its
  ``sequence_bias`` and the fast path adds the same numbers before its argmax: the same answers;
* class probabilities: ``p(k) / prior(k)^τ``, renormalised (the same shift of the class scores).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from facephi.labels import CLASSES
from facephi.model.class_scoring import ClassScorer, TokenBias, shared_length
from facephi.utils.errors import FacePhiError

MAX_TAU = 10.0
"""Largest τ accepted (1 divides the prior out entirely)."""


def check_answer_prior(prior: Any, tau: float, where: str = "answer prior") -> None:
    """Refuse a prior that is not 8 finite positive numbers or a τ outside [0, ``MAX_TAU``]."""
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and 0 <= tau <= MAX_TAU):
        raise FacePhiError(f"{where}: tau must be a number from 0 to {MAX_TAU:g}, got {tau!r}")
    if tau and prior is None:
        raise FacePhiError(f"{where}: tau {tau:g} needs a class prior, and the model's config.json has no "
                           "answer_prior")
    if prior is not None:
        values = list(prior) if isinstance(prior, (list, tuple)) else None
        if (values is None or len(values) != len(CLASSES)
                or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)):
            raise FacePhiError(f"{where}: need {len(CLASSES)} finite positive numbers in class order "
                               f"({', '.join(CLASSES)}), got {prior!r}")


def prior_weights(prior: list[float] | None, tau: float) -> torch.Tensor | None:
    """``prior ** tau`` (what ``class_probabilities`` divides out), or None when τ is 0."""
    if not tau or prior is None:
        return None
    return torch.tensor(prior, dtype=torch.float64) ** tau


def class_word_bias(template_answers: list[list[int]], prior: list[float] | None,
                    tau: float) -> TokenBias | None:
    """``(token ids, biases)``: ``−τ · log prior(k)`` on the first token of class k's name in the answers
    ``template_answers[k]`` (one template's 8 class answers); None when τ is 0."""
    if not tau or prior is None:
        return None
    at = shared_length(template_answers)
    tokens = [answer[at] for answer in template_answers]
    if len(set(tokens)) != len(tokens):
        raise FacePhiError("answer prior: the class names do not start with 8 different tokens in this "
                           "tokenizer; the prior cannot be applied to the answers")
    return tokens, [-tau * math.log(p) for p in prior]


def sequence_bias(bias: TokenBias | None) -> dict[tuple[int, ...], float] | None:
    """``bias`` as ``generate``'s ``sequence_bias`` (one-token sequences)."""
    return None if bias is None else {(token,): value for token, value in zip(*bias)}


class AnswerPrior:
    """A model's answer prior: its config's ``answer_prior`` and ``answer_prior_tau`` (``scorer``: the
    class answers that locate the class words)."""

    def __init__(self, config: Any, scorer: ClassScorer) -> None:
        check_answer_prior(config.answer_prior, config.answer_prior_tau, "config answer_prior")
        self.config, self.scorer = config, scorer

    def set_tau(self, tau: float) -> None:
        """Divide ``answer_prior`` out of answers and probabilities at strength ``tau`` (0: off)."""
        check_answer_prior(self.config.answer_prior, tau, "answer prior tau")
        self.config.answer_prior_tau = float(tau)

    def bias(self) -> TokenBias | None:
        """The class words' logit biases of the answers; None when off."""
        check_answer_prior(self.config.answer_prior, self.config.answer_prior_tau, "config answer_prior")
        return class_word_bias(self.scorer.answers()[0], self.config.answer_prior, self.config.answer_prior_tau)

    def weights(self) -> torch.Tensor | None:
        """``answer_prior ** answer_prior_tau``, divided out of the class probabilities; None when off."""
        return prior_weights(self.config.answer_prior, self.config.answer_prior_tau)

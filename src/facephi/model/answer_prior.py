"""The class prior of the answers in words: the training data's prior divided out (logit adjustment,
Menon et al. 2021) and the landmark encoder's own class probabilities multiplied in (an ensemble
of the LLM and its encoder's classifier).

A model trained on FER+ (a third of its faces neutral) names the frequent classes too often on other
faces. ``FacePhiConfig.answer_prior`` (8 numbers in ``CLASSES`` order: the class frequencies of the
LLM's training data) and ``answer_prior_tau`` (τ, 0 = off) divide that prior out;
``encoder_weight`` (λ, 0 = off) adds the encoder's class log-probabilities ``log q(k | face)``. Per
face, the class bias is ``λ · (log q(k) − max_j log q(j)) − τ · log prior(k)``:

* answers: the bias is added to the logit of the first token of class k's name where the trained
  answers name it (the token where the 8 class answers of template 0 part), at every decoding
  step: those tokens appear in answers only there. ``generate`` gets it through
  :class:`ClassWordBias` and the fast path adds the same numbers before its argmax: the same answers;
* class probabilities: the softmax of the class scores plus the bias, i.e. ``p(k) · q(k)^λ /
  prior(k)^τ``, renormalised.
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

MAX_ENCODER_WEIGHT = 10.0
"""Largest λ accepted (large: the encoder's class, worded by the LLM)."""


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


def check_encoder_weight(weight: Any, where: str = "encoder weight") -> None:
    """Refuse a λ outside [0, ``MAX_ENCODER_WEIGHT``]."""
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 <= weight <= MAX_ENCODER_WEIGHT):
        raise FacePhiError(f"{where}: need a number from 0 to {MAX_ENCODER_WEIGHT:g}, got {weight!r}")


def class_words(template_answers: list[list[int]]) -> list[int]:
    """The first token of each class's name in ``template_answers`` (one template's 8 class answers)."""
    at = shared_length(template_answers)
    tokens = [answer[at] for answer in template_answers]
    if len(set(tokens)) != len(tokens):
        raise FacePhiError("answer prior: the class names do not start with 8 different tokens in this "
                           "tokenizer; the prior cannot be applied to the answers")
    return tokens


def class_bias(prior: list[float] | None, tau: float, encoder_log_probs: torch.Tensor | None = None,
               weight: float = 0.0) -> torch.Tensor | None:
    """``[B, 8]`` float64: ``weight · (log q − max log q) − tau · log prior`` per face (``encoder_log_probs``
    ``[B, 8]``; without it one row, the same for every face); None when both terms are off."""
    rows: torch.Tensor | None = None
    if weight and encoder_log_probs is not None:
        log_q = encoder_log_probs.detach().double().cpu()
        rows = weight * (log_q - log_q.max(-1, keepdim=True).values)
    if tau and prior is not None:
        shift = -tau * torch.tensor(prior, dtype=torch.float64).log()
        rows = shift[None] if rows is None else rows + shift
    return rows


class ClassWordBias:
    """``generate`` logits processor: per row, the class bias on the class words (``TokenBias``)."""

    def __init__(self, bias: TokenBias) -> None:
        self.tokens, self.values = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        values = self.values.to(device=scores.device, dtype=scores.dtype)
        scores[:, self.tokens] += values.expand(len(scores), -1)
        return scores


class AnswerPrior:
    """A model's answer prior: its config's ``answer_prior``, ``answer_prior_tau`` and ``encoder_weight``
    (``scorer``: the class answers that locate the class words; ``encoder``: the landmark encoder
    whose ``class_logits`` give ``q``)."""

    def __init__(self, config: Any, scorer: ClassScorer, encoder: Any) -> None:
        self.config, self.scorer, self.encoder = config, scorer, encoder
        check_answer_prior(config.answer_prior, config.answer_prior_tau, "config answer_prior")
        self._check_weight(config.encoder_weight, "config encoder_weight")

    def set_tau(self, tau: float) -> None:
        """Divide ``answer_prior`` out of answers and probabilities at strength ``tau`` (0: off)."""
        check_answer_prior(self.config.answer_prior, tau, "answer prior tau")
        self.config.answer_prior_tau = float(tau)

    def set_encoder_weight(self, weight: float) -> None:
        """Add the encoder's class log-probabilities to answers and probabilities at ``weight`` (0: off)."""
        self._check_weight(weight, "encoder weight")
        self.config.encoder_weight = float(weight)

    def _check_weight(self, weight: Any, where: str) -> None:
        check_encoder_weight(weight, where)
        if weight and not callable(getattr(self.encoder, "class_logits", None)):
            raise FacePhiError(f"{where}: {weight:g} needs an encoder with class logits, and this model's "
                               f"{type(self.encoder).__name__} has none")

    def encoder_log_probs(self, points: torch.Tensor) -> torch.Tensor | None:
        """``log q`` ``[B, 8]`` (float32) of each face of ``points`` (normalised, on the encoder's
        device), computed once per batch and handed to ``token_bias`` and ``adjust``; None when
        ``encoder_weight`` is 0."""
        self._check_weight(self.config.encoder_weight, "config encoder_weight")
        if not self.config.encoder_weight:
            return None
        training = self.encoder.training
        try:
            with torch.inference_mode():
                return self.encoder.eval().class_logits(points).float().log_softmax(-1)
        finally:
            self.encoder.train(training)

    def rows(self, log_q: torch.Tensor | None, count: int, own_prior: bool = True) -> torch.Tensor | None:
        """The class bias ``[count, 8]`` (float64, CPU) of each face (``log_q``: ``encoder_log_probs`` of
        the faces; without the prior term unless ``own_prior``); None when off."""
        config = self.config
        check_answer_prior(config.answer_prior, config.answer_prior_tau, "config answer_prior")
        if config.encoder_weight and (log_q is None or len(log_q) != count):
            raise ValueError(f"encoder_weight {config.encoder_weight:g}: need encoder_log_probs of the {count} faces")
        tau = config.answer_prior_tau if own_prior else 0.0
        bias = class_bias(config.answer_prior, tau, log_q, config.encoder_weight)
        return None if bias is None else bias.expand(count, -1)

    def token_bias(self, log_q: torch.Tensor | None, count: int, device: torch.device) -> TokenBias | None:
        """The class words' logit biases of each face's answer (float32 ``[count, 8]`` on ``device``);
        None when off."""
        bias = self.rows(log_q, count)
        if bias is None:
            return None
        return class_words(self.scorer.answers()[0]), bias.float().to(device)

    def adjust(self, scores: torch.Tensor, log_q: torch.Tensor | None, own_prior: bool = True) -> torch.Tensor:
        """Class scores ``[B, 8]`` plus the class bias (what ``class_probabilities`` softmaxes; without
        the prior term unless ``own_prior``: a caller's prior replaces it)."""
        bias = self.rows(log_q, len(scores), own_prior)
        return scores if bias is None else scores + bias.to(device=scores.device, dtype=scores.dtype)

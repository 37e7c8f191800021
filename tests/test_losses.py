"""CLIP contrastive loss with same-class positives, checked against hand computations."""

import math

import pytest
import torch

from facephi.model.losses import (
    MAX_LOGIT_SCALE,
    clamp_logit_scale_,
    clip_contrastive_loss,
    init_logit_scale,
    logit_scale_value,
)


def _lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_three_pairs_with_same_class_pair_matches_hand_computation():
    # 3 landmarks, two of class 0 and one of class 1; 2 distinct captions.
    w = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scale = 2.0
    s = [[scale * float(w[i] @ t[c]) for c in range(2)] for i in range(3)]  # cosine · scale
    # landmark -> text: softmax over the 2 distinct captions, target = own class
    l2t = sum(-(s[i][labels[i]] - _lse(s[i])) for i in range(3)) / 3
    # text -> landmark: for the caption of pair i, softmax over the 3 landmarks, target landmark i
    t2l = sum(-(s[i][labels[i]] - _lse([s[k][labels[i]] for k in range(3)])) for i in range(3)) / 3
    expected = 0.5 * (l2t + t2l)
    got = clip_contrastive_loss(w, t, labels, torch.tensor(math.log(scale)))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the same-class landmark 1 is a positive of caption 0: its term uses caption 0, not a negative
    assert s[1][0] > 0


def test_distinct_classes_equal_paper_eq4():
    torch.manual_seed(0)
    w, t = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.arange(4)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    wn, tn = torch.nn.functional.normalize(w, dim=1), torch.nn.functional.normalize(t, dim=1)
    logits = (1 / 0.07) * wn @ tn.t()
    eq4 = 0.5 * (
        torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)
    )
    assert clip_contrastive_loss(w, t, labels, logit_scale).item() == pytest.approx(eq4.item(), rel=1e-6)


def test_loss_is_invariant_to_feature_norm_and_optimum_keeps_positives_together():
    t = torch.eye(3)
    labels = torch.tensor([0, 0, 1, 2])
    w = t[labels] * 5.0  # every landmark on its own caption, same-class ones identical
    loss = clip_contrastive_loss(w, t, labels, torch.tensor(math.log(100.0)))
    w_unit = clip_contrastive_loss(t[labels], t, labels, torch.tensor(math.log(100.0)))
    assert loss.item() == pytest.approx(w_unit.item(), rel=1e-6)
    # text->landmark floor is log(n_c) per pair of a class with n_c positives (uniform target)
    floor = 0.5 * (2 * math.log(2)) / 4
    assert loss.item() == pytest.approx(floor, abs=1e-3)


def test_temperature_init_and_clamp():
    scale = init_logit_scale()
    assert logit_scale_value(scale).item() == pytest.approx(1 / 0.07, rel=1e-5)
    big = torch.tensor(math.log(1000.0), requires_grad=True)
    assert logit_scale_value(big).item() == pytest.approx(MAX_LOGIT_SCALE)
    w, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.eye(2)
    labels = torch.tensor([0, 1])
    assert clip_contrastive_loss(w, t, labels, big).item() == pytest.approx(
        clip_contrastive_loss(w, t, labels, torch.tensor(math.log(100.0))).item()
    )
    clamp_logit_scale_(big)
    assert big.item() == pytest.approx(math.log(100.0))
    negative = torch.tensor(-1.0)
    clamp_logit_scale_(negative)
    assert negative.item() == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sizes differ"):
        clip_contrastive_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor(0.0))
    with pytest.raises(ValueError, match="labels"):
        clip_contrastive_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2]), torch.tensor(0.0))


def test_few_steps_reduce_the_loss_on_a_synthetic_problem():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (64,))
    centres = torch.randn(4, 16)
    inputs = centres[labels] + 0.5 * torch.randn(64, 16)
    texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    projection = torch.nn.Linear(16, 8)
    logit_scale = init_logit_scale()
    optimizer = torch.optim.AdamW([*projection.parameters(), logit_scale], lr=1e-2)
    first = None
    for _ in range(30):
        loss = clip_contrastive_loss(projection(inputs), texts, labels, logit_scale)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clamp_logit_scale_(logit_scale)
    assert loss.item() < 0.7 * first


def test_logit_adjusted_cross_entropy_is_plain_ce_at_tau_0_and_the_formula_above():
    from torch.nn import functional as F

    from facephi.model.losses import logit_adjusted_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 0, 0])
    prior = torch.tensor([0.6, 0.2, 0.2])
    weight = torch.tensor([0.5, 2.0, 1.0])
    assert torch.equal(logit_adjusted_cross_entropy(logits, labels, prior, 0.0), F.cross_entropy(logits, labels))
    assert torch.equal(logit_adjusted_cross_entropy(logits, labels, prior, 0.0, weight=weight),
                       F.cross_entropy(logits, labels, weight=weight))
    tau = 1.5
    by_hand = 0.0
    for i in range(5):
        adjusted = [float(logits[i, c]) + tau * math.log(float(prior[c])) for c in range(3)]
        by_hand += -(adjusted[labels[i]] - _lse(adjusted))
    assert float(logit_adjusted_cross_entropy(logits, labels, prior, tau)) == pytest.approx(by_hand / 5, rel=1e-6)
    assert float(logit_adjusted_cross_entropy(logits, labels, prior, tau)) != pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-3)
    # a class absent from the prior is never the target: the loss and its gradients stay finite
    absent = torch.tensor([0.75, 0.25, 0.0])
    logits.requires_grad_(True)
    loss = logit_adjusted_cross_entropy(logits, torch.tensor([0, 1, 0, 0, 1]), absent, tau)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="tau"):
        logit_adjusted_cross_entropy(logits, labels, prior, -1.0)

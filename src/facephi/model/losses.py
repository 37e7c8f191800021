"""The encoder's training losses: the CLIP / ULIP symmetric contrastive loss (paper eq. 4) for class
captions shared by many samples, and the logit-adjusted cross-entropy of the classify objective.

With a batch of 64 landmarks over 8 emotions, eq. 4's captions ``t_i`` repeat: several columns of
the ``N x N`` similarity matrix are the *same* text. Taken literally, the landmark→text term then
divides by duplicated columns (a bias of ``log n_c`` towards the classes frequent in the batch),
and the text→landmark term counts the other landmarks of the same class among the negatives.

Treatment chosen here (multi-positive, soft targets):

* The text side is the set of **distinct class captions** ``T = [C, D]`` (all classes, whether
  or not they occur in the batch, as zero-shot inference does). Landmark→text is a softmax over
  the ``C`` captions with target ``y_i`` — eq. 4's row term with duplicate captions merged.
* Text→landmark: for caption ``c`` the softmax runs over the ``N`` landmarks of the batch and its
  target is **uniform over all landmarks of class c** (every same-class landmark is a positive).
  Each caption is weighted by its count ``n_c`` so there is one term per pair, as in eq. 4:
  ``-(1/N) Σ_i log softmax_k(s_{k, y_i})[i]``. Its minimum spreads the caption's mass evenly over
  its positives, so same-class landmarks are never pushed away from their caption.

When every landmark of the batch has a distinct class and ``T`` holds exactly those classes, the
loss equals eq. 4 exactly.

The temperature is learnt as ``logit_scale = log(1/τ)`` (init ``log(1/0.07)``); the scale used is
``exp(logit_scale)`` clamped at 100, as in CLIP.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def init_logit_scale() -> nn.Parameter:
    """A learnable ``log(1/τ)`` initialised at ``τ = 0.07``."""
    return nn.Parameter(torch.tensor(math.log(1.0 / INIT_TEMPERATURE)))


def logit_scale_value(logit_scale: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale)`` clamped at :data:`MAX_LOGIT_SCALE` (``1/τ``)."""
    return logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


@torch.no_grad()
def clamp_logit_scale_(logit_scale: torch.Tensor) -> None:
    """Clamp the parameter in place to ``[0, log 100]`` after an optimiser step (CLIP does this)."""
    logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))


def clip_contrastive_loss(
    landmark_embeddings: torch.Tensor,
    class_text_embeddings: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric contrastive loss with same-class positives (see the module docstring).

    Args:
        landmark_embeddings: ``[N, D]`` projected landmark features (normalised here).
        class_text_embeddings: ``[C, D]`` one caption embedding per class (normalised here).
        labels: ``[N]`` class index of each landmark, in ``[0, C)``.
        logit_scale: scalar ``log(1/τ)``; the scale is clamped at 100.

    Returns:
        The scalar loss ``(L_landmark→text + L_text→landmark) / 2``.
    """
    if landmark_embeddings.ndim != 2 or class_text_embeddings.ndim != 2:
        raise ValueError("expected [N, D] landmark and [C, D] text embeddings")
    if landmark_embeddings.shape[1] != class_text_embeddings.shape[1]:
        raise ValueError(
            f"embedding sizes differ: landmarks {landmark_embeddings.shape[1]}, "
            f"text {class_text_embeddings.shape[1]}"
        )
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= class_text_embeddings.shape[0]):
        raise ValueError("labels must index the class text embeddings")
    landmarks = F.normalize(landmark_embeddings, dim=-1)
    texts = F.normalize(class_text_embeddings, dim=-1).to(landmarks.dtype)
    logits = logit_scale_value(logit_scale) * landmarks @ texts.t()  # [N, C]

    landmark_to_text = F.cross_entropy(logits, labels)
    # Column y_i of the landmark-wise softmax, at the row of landmark i: summing over i gives,
    # per caption c, n_c times the soft-target cross-entropy with targets uniform on class c.
    log_p_landmark_given_text = logits.log_softmax(dim=0)  # softmax over the N landmarks
    text_to_landmark = -log_p_landmark_given_text.gather(1, labels[:, None]).mean()
    return 0.5 * (landmark_to_text + text_to_landmark)


def logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    prior: torch.Tensor,
    tau: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit-adjusted cross-entropy (Menon et al. 2021, eq. 10): ``CE(logits + tau * log(prior), labels)``.

    ``prior`` ``[C]`` is the class prior of the training data (class counts / total); a class absent
    from it gets ``-inf`` and is never predicted during training. ``tau = 0`` is plain cross-entropy.
    The classifier's own logits, unadjusted, then estimate the balanced (class-uniform) posterior.
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if tau:
        if prior.shape != (logits.shape[-1],) or (prior < 0).any():
            raise ValueError(f"prior must be {logits.shape[-1]} non-negative numbers, got {prior.tolist()}")
        logits = logits + tau * prior.to(logits.device, logits.dtype).log()
    return F.cross_entropy(logits, labels, weight=weight)

"""The UCRN objective: L = λm·L_M + λc·L_C (paper eq. 13).

L_M (eq. 7–8) is a true Jensen–Shannon divergence between the softmax distributions of the
URM outputs, summed over every pair of present modalities; L_C (eq. 12) is L1 for sentiment
regression, cross-entropy for 2- and 7-class sentiment, and binary cross-entropy with logits
for the six multi-label emotions.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ucrn.tasks import get_task

LOG_2 = math.log(2.0)


def jensen_shannon(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Eq. (7): D_M(α, β) between softmax(logits) over the last axis, per row (any leading
    axes).

    Computed in log space, so it stays finite (and its gradient too) when a softmax saturates.
    Bounded by ln 2; zero exactly when the two distributions are equal.
    """
    log_p = F.log_softmax(logits_a, dim=-1)  # (…, d)
    log_q = F.log_softmax(logits_b, dim=-1)  # (…, d)
    log_mixture = torch.logaddexp(log_p, log_q) - LOG_2  # log (p+q)/2
    kl_p = torch.sum(log_p.exp() * (log_p - log_mixture), dim=-1)
    kl_q = torch.sum(log_q.exp() * (log_q - log_mixture), dim=-1)
    return 0.5 * (kl_p + kl_q)  # (…,)


def multimodal_js(unimodal: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. (8): L_M = Σ over pairs of present modalities of D_M, averaged over the batch:
    x^U_m of (B, d) give one value; of (G, B, d), G models' own, one per model (G,).

    With one modality there is no pair and L_M is 0.
    """
    pairs = list(itertools.combinations(sorted(unimodal), 2))
    if not pairs:
        first = next(iter(unimodal.values()))
        return first.new_zeros(first.shape[:-2])
    # Every pair in one call (a third of the operations for three modalities).
    firsts = torch.stack([unimodal[a] for a, _ in pairs])  # (P, …, B, d)
    seconds = torch.stack([unimodal[b] for _, b in pairs])  # (P, …, B, d)
    return jensen_shannon(firsts, seconds).mean(dim=-1).sum(dim=0)


def task_loss(prediction: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Eq. (12): L_C for the model's task (``ucrn.tasks``), averaged over the batch."""
    return get_task(task).loss(prediction, target)


class Loss(NamedTuple):
    total: torch.Tensor
    task: torch.Tensor  # L_C
    js: torch.Tensor  # L_M


def ucrn_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    unimodal: dict[str, torch.Tensor],
    task: str,
    lambda_m: float | torch.Tensor,
    lambda_c: float,
) -> Loss:
    """Eq. (13): L = λm·L_M + λc·L_C; λm may be a 0-d tensor (a CUDA graph's, set per epoch)."""
    task_term = task_loss(prediction, target, task)
    computed = isinstance(lambda_m, torch.Tensor) or lambda_m  # a tensor's value is not read
    regulariser = multimodal_js(unimodal) if computed else prediction.new_zeros(())
    return Loss(lambda_m * regulariser + lambda_c * task_term, task_term, regulariser)

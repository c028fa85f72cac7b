"""Batches from tensors in memory, and the perturbations of the robustness tables.

Batching is tensor indexing only: one permutation per epoch, one ``index_select`` per batch
and modality, no per-sample Python. ``epoch_order`` gives worker ``rank`` of ``world_size``
its equal share of every epoch's order (as ``DistributedSampler`` does), for data parallelism.
``input_statistics`` are what the model's input standardisation uses (train split only).

Perturbations (paper §4.4):
- ``mask_modalities``: a modality's features carry nothing (its train means, zero after the
  model's standardisation); the model still receives it (Table 4's "masking").
- ``drop_modalities``: the modality is removed; the model receives only the others.
- ``bernoulli_noise``: each feature value of the chosen modalities, at every valid time step,
  independently with probability p, has Gaussian noise added whose standard deviation is that
  feature's standard deviation over the split's valid steps: x' = x + b·σ_d·ε with
  b ~ Bernoulli(p), ε ~ N(0, 1). Padding stays zero. Seeded, so a rerun perturbs the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from ucrn.config import MAX_SEED, STANDARDISE
from ucrn.data.layout import Split
from ucrn.errors import UcrnError


class Batch(NamedTuple):
    features: dict[str, torch.Tensor]  # modality → (B, T_m, d_m)
    lengths: dict[str, torch.Tensor | None]  # modality → (B,) or None
    targets: torch.Tensor  # (B,) or (B, K)
    labels: torch.Tensor  # (B, K) the raw label columns, for metrics


def epoch_order(
    count: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Sample indices for one epoch; with ``world_size`` > 1, this rank's equal share."""
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    if world_size > 1:
        per_rank = -(-count // world_size)  # ceil
        padding = per_rank * world_size - count
        if padding:
            order = torch.cat([order, order[:padding]])  # pad by repeating, as DDP samplers do
        order = order[rank::world_size]
    return order


def iterate_batches(
    split: Split,
    targets: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    order: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """Batches of ``split`` in ``order`` (all samples in file order when None)."""
    if order is None:
        order = torch.arange(len(split))
    device = targets.device
    order = order.to(device)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield Batch(
            {m: x.index_select(0, index) for m, x in split.features.items()},
            {m: (n.index_select(0, index) if n is not None else None)
             for m, n in split.lengths.items()},
            targets.index_select(0, index),
            labels.index_select(0, index),
        )


def _check_modalities(split: Split, modalities: Iterable[str], action: str) -> list[str]:
    modalities = list(modalities)
    missing = [m for m in modalities if m not in split.features]
    if missing:
        raise UcrnError(
            f"cannot {action} modality {','.join(missing)}: the data carries only "
            f"{','.join(split.modalities)}"
        )
    return modalities


def mask_modalities(
    split: Split, modalities: Iterable[str], fill: dict[str, torch.Tensor] | None = None
) -> Split:
    """A copy of ``split`` whose named modalities carry no information (Table 4).

    Every valid step of a masked modality holds ``fill[m]`` (d_m,) — the model passes the
    train means of its inputs, which its standardisation maps to zero — or zeros without
    ``fill``; padding stays zero.
    """
    masked = _check_modalities(split, modalities, "mask")
    features = dict(split.features)
    for modality in masked:
        x = split.features[modality]
        value = torch.zeros(x.shape[-1]) if fill is None else fill[modality]
        features[modality] = valid_steps(split, modality) * value.to(x)  # (N, T, d)
    return Split(features, dict(split.lengths), split.labels, split.ids)


def drop_modalities(split: Split, keep: Iterable[str]) -> Split:
    """A copy of ``split`` holding only the modalities in ``keep``."""
    keep = _check_modalities(split, keep, "keep")
    if not keep:
        raise UcrnError("at least one modality must remain")
    return Split(
        {m: x for m, x in split.features.items() if m in keep},
        {m: n for m, n in split.lengths.items() if m in keep},
        split.labels, split.ids,
    )


def valid_steps(split: Split, modality: str) -> torch.Tensor:
    """(N, T, 1) float: 1 at valid time steps, 0 at padding."""
    features, lengths = split.features[modality], split.lengths[modality]
    count, steps, _ = features.shape
    if lengths is None:
        return features.new_ones(count, steps, 1)
    valid = torch.arange(steps, device=features.device) < lengths.unsqueeze(1)  # (N, T)
    return valid.unsqueeze(-1).to(features.dtype)


def feature_moments(split: Split, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (d,) of each feature over the split's valid steps
    (summed in float64, a block of samples at a time).

    Kept for the tensors they came from while those live unchanged: the runs one process
    trains after one another on the same data (a search's trials) take the pass once
    (about 1 s on MOSI's train split here, more than the rest of a run's set-up)."""
    x, lengths = split.features[modality], split.lengths[modality]  # (N, T, d), (N,)
    key = (id(x), id(lengths))
    kept = _MOMENTS.get(key)
    if kept is not None and kept.holds(x, lengths):
        return kept.mean.clone(), kept.std.clone()
    mean, std = _moments(x, valid_steps(split, modality))
    if len(_MOMENTS) >= _MOMENTS_KEPT:
        _MOMENTS.clear()
    _MOMENTS[key] = _Moments(weakref.ref(x), None if lengths is None else weakref.ref(lengths),
                             x._version, mean.clone(), std.clone())
    return mean, std


class _Moments(NamedTuple):
    """Moments of a modality's features, with what they came from (held weakly: a tensor
    that died may leave its id to another)."""

    features: weakref.ref
    lengths: weakref.ref | None
    version: int  # the features' in-place change counter when they were taken
    mean: torch.Tensor
    std: torch.Tensor

    def holds(self, x: torch.Tensor, lengths: torch.Tensor | None) -> bool:
        return (self.features() is x and x._version == self.version
                and (self.lengths() if self.lengths is not None else None) is lengths)


_MOMENTS: dict[tuple[int, int], _Moments] = {}
_MOMENTS_KEPT = 32  # modalities × splits × data files a process trains on, at most


def _moments(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = valid.double().sum().clamp(min=1)

    def total(term) -> torch.Tensor:  # Σ over samples and steps of term(block, valid)
        return sum(term(x[i:i + _BLOCK].double(), valid[i:i + _BLOCK].double()).sum(dim=(0, 1))
                   for i in range(0, len(x), _BLOCK))

    mean = total(lambda block, ok: block * ok) / count
    variance = total(lambda block, ok: ((block - mean) * ok) ** 2) / count
    return mean.float(), variance.sqrt().float()


_BLOCK = 1024


def input_statistics(split: Split, how: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per modality, the (mean, scale) (d_m,) that standardise its inputs: x' = (x − mean) /
    scale, from ``split``'s valid steps (the train split; never the data being scored).

    ``modality``: centred per feature, one scale per modality (the root mean square of its
    features' standard deviations), which keeps an embedding's geometry; ``feature``: a
    z-score per feature; ``off``: unchanged. A constant feature is centred and not scaled.
    """
    if how not in STANDARDISE:
        raise UcrnError(f"standardise={how!r}: choose one of {', '.join(STANDARDISE)}")
    statistics = {}
    for modality in split.modalities:
        mean, std = feature_moments(split, modality)
        if how == "off":
            mean, scale = torch.zeros_like(mean), torch.ones_like(std)
        elif how == "feature":
            scale = torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))
        else:
            rms = float(std.square().mean().sqrt())
            scale = torch.full_like(std, rms if rms > 0 else 1.0)
        statistics[modality] = (mean, scale)
    return statistics


def bernoulli_noise(
    split: Split, probability: float = 0.5, modalities: Iterable[str] | None = None, seed: int = 0
) -> Split:
    """A copy of ``split`` with Bernoulli-gated Gaussian noise on ``modalities`` (Table 5)."""
    if not 0.0 <= probability <= 1.0:
        raise UcrnError(f"noise probability {probability}: must be in [0, 1]")
    if not 0 <= seed <= MAX_SEED:
        raise UcrnError(f"noise seed {seed}: give a whole number from 0 to {MAX_SEED:,}")
    chosen = _check_modalities(
        split, split.modalities if modalities is None else modalities, "add noise to"
    )
    generator = torch.Generator().manual_seed(seed)
    features = dict(split.features)
    for modality in chosen:
        x = split.features[modality]  # (N, T, d)
        _, std = feature_moments(split, modality)  # (d,) the raw feature's own σ
        present = torch.bernoulli(torch.full(x.shape, probability), generator=generator)
        gaussian = torch.randn(x.shape, generator=generator)
        noise = present.to(x.device) * gaussian.to(x.device) * std.to(x.device)
        features[modality] = x + noise * valid_steps(split, modality)
    return Split(features, dict(split.lengths), split.labels, split.ids)

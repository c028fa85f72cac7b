"""The robustness conditions of the paper's Tables 4 and 5, scored for one trained model.

- ``masked`` (Table 4): the modalities not kept carry nothing (their train means, which the
  model's input standardisation maps to zero); the model still receives them.
- ``dropped``: the modalities not kept are removed; the model receives only the kept ones.
- ``noise`` (Table 5): Bernoulli noise with probability p on the named modalities
  (``ucrn.data.batches.bernoulli_noise``, at each raw feature's own σ), all modalities present.

Each condition is scored on one split; ``drop_percent`` turns scores into the paper's
percentage drop relative to the unperturbed model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ucrn.config import Config
from ucrn.data.batches import bernoulli_noise, drop_modalities, mask_modalities
from ucrn.data.layout import Dataset, fingerprint
from ucrn.engine import evaluate, modality_subsets
from ucrn.metrics import mode
from ucrn.model import UCRN
from ucrn.state import FitResult


@dataclass(frozen=True)
class Condition:
    kind: str  # "full", "masked", "dropped" or "noise"
    modalities: tuple[str, ...]  # kept (masked, dropped) or perturbed (noise)

    @property
    def name(self) -> str:
        letters = "+".join(m.upper() for m in self.modalities)
        return "full" if self.kind == "full" else f"{self.kind} {letters}"


def conditions(modalities: tuple[str, ...], with_noise: bool = True) -> list[Condition]:
    """The full model, every proper non-empty subset masked and dropped, noise per modality
    and on all — for a model built on ``modalities``."""
    subsets = sorted(modality_subsets(modalities), key=len, reverse=True)  # largest first
    result = [Condition("full", modalities)]
    result += [Condition("masked", s) for s in subsets]
    result += [Condition("dropped", s) for s in subsets]
    if with_noise:
        result += [Condition("noise", (m,)) for m in modalities]
        if len(modalities) > 1:
            result.append(Condition("noise", modalities))
    return result


def score_conditions(
    model: UCRN,
    dataset: Dataset,
    config: Config,
    *,
    split: str = "test",
    perturb: bool = True,
    noise: float = 0.5,
    noise_seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` on ``split`` under every condition (only ``full`` without
    ``perturb``), keyed by condition name."""
    base = drop_modalities(dataset.split(split), config.model.modalities)
    chosen = conditions(config.model.modalities)
    scores = {}
    for condition in chosen if perturb else chosen[:1]:
        if condition.kind == "full":
            perturbed = base
        elif condition.kind == "masked":
            others = [m for m in config.model.modalities if m not in condition.modalities]
            perturbed = mask_modalities(base, others, fill=model.input_means())
        elif condition.kind == "dropped":
            perturbed = drop_modalities(base, condition.modalities)
        else:
            perturbed = bernoulli_noise(base, noise, condition.modalities, seed=noise_seed)
        scores[condition.name] = evaluate(model, perturbed, dataset, config, device=device)
    return scores


def drop_percent(metric: str, full: float, perturbed: float) -> float:
    """The paper's robustness: (full − perturbed) / full × 100, so that worse is positive.

    For metrics where lower is better (MAE), the sign is turned: (perturbed − full) / full.
    """
    change = (perturbed - full) if mode(metric) == "min" else (full - perturbed)
    return 100.0 * change / full if full else float("nan")



def scored_run(
    result: FitResult, dataset: Dataset, *, perturb: bool, noise: float, noise_seed: int,
    device: torch.device | str | None = None,
) -> dict:
    """A finished run's record for the evaluator: its selection on valid, and its selected
    model scored on test once per condition (every condition with ``perturb``), on
    ``device`` — the trial's own, where the model trained."""
    conditions = score_conditions(result.model, dataset, result.config, perturb=perturb,
                                  noise=noise, noise_seed=noise_seed, device=device)
    return {"best_epoch": result.best_epoch, "epochs": result.epochs_run,
            "params": result.params, "valid": result.valid, "test": conditions["full"],
            "conditions": conditions, "config": result.config.to_dict(),
            "data": {"name": dataset.name, "fingerprint": fingerprint(dataset)}}

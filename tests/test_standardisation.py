"""Input standardisation: statistics of the train split only, carried with the model to every
later evaluation, never recomputed from the data being scored, and a switch to turn it off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ucrn.cli import main
from ucrn.config import Config, apply_overrides
from ucrn.data.batches import feature_moments, input_statistics, mask_modalities
from ucrn.data.layout import Split, load_dataset, write_dataset
from ucrn.engine import fit, load_run, save_run

SMALL = {"urm_layers": 1, "crm_layers": 1, "width": 12, "epochs": 2, "batch_size": 8,
         "modalities": "l,a"}


def _split(values: np.ndarray, lengths: list[int] | None = None) -> Split:
    features = torch.tensor(values, dtype=torch.float32)
    count = len(values)
    return Split({"a": features},
                 {"a": None if lengths is None else torch.tensor(lengths)},
                 torch.zeros(count, 1), [str(i) for i in range(count)])


def _raw_scale_file(path, shift: float = 0.0, seed: int = 0):
    """Small data whose audio is on openSMILE-like raw scales; ``shift`` moves the train
    split's audio only."""
    splits = {}
    for index, split in enumerate(("train", "valid", "test")):
        rng = np.random.default_rng(seed * 10 + index)
        count = 24
        splits[split] = {
            "l": rng.normal(0.0, 0.25, size=(count, 3, 6)).astype(np.float32),
            "a": (rng.normal(180.0 + (shift if split == "train" else 0.0), 40.0,
                             size=(count, 3, 4))).astype(np.float32),
            "labels": rng.uniform(-3, 3, size=count).astype(np.float32),
            "ids": np.array([f"video{i}[1]" for i in range(count)], dtype=object),
        }
    return write_dataset(path, splits, name="raw")


def test_modality_scaling_centres_each_feature_and_keeps_one_scale_per_modality():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3, 4)) * [1.0, 2.0, 5.0, 0.0] + [10.0, -3.0, 188.0, 7.0]
    mean, scale = input_statistics(_split(values), "modality")["a"]
    flat = values.reshape(-1, 4)
    assert np.allclose(mean.numpy(), flat.mean(0), atol=1e-4)
    rms = np.sqrt(flat.var(0).mean())
    assert np.allclose(scale.numpy(), rms, rtol=1e-5)


def test_feature_scaling_gives_z_scores_and_leaves_a_constant_feature_unscaled():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(40, 2, 3)) * [3.0, 0.5, 0.0] + [1.0, 2.0, 42.0]
    mean, scale = input_statistics(_split(values), "feature")["a"]
    flat = values.reshape(-1, 3)
    assert np.allclose(scale.numpy()[:2], flat.std(0)[:2], rtol=1e-5)
    assert scale[2].item() == 1.0 and mean[2].item() == pytest.approx(42.0)
    standardised = (torch.tensor(flat, dtype=torch.float32) - mean) / scale
    assert torch.isfinite(standardised).all()


def test_off_leaves_the_inputs_as_they_are():
    mean, scale = input_statistics(_split(np.full((4, 2, 3), 188.0)), "off")["a"]
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(scale, torch.ones(3))


def test_statistics_ignore_padding():
    values = np.ones((2, 4, 1))
    values[:, 2:] = 1000.0  # padding: only the first two steps are valid
    mean, std = feature_moments(_split(values, lengths=[2, 2]), "a")
    assert mean.item() == pytest.approx(1.0) and std.item() == pytest.approx(0.0)


def test_training_takes_the_statistics_of_the_train_split_only(tmp_path):
    path = _raw_scale_file(tmp_path / "raw.h5", shift=500.0)
    dataset = load_dataset(path)
    result = fit(apply_overrides(Config(), SMALL), dataset, device="cpu")
    expected = input_statistics(dataset.split("train"), "modality")
    for modality, urm in result.model.urms.items():
        assert torch.allclose(urm.standardise.mean, expected[modality][0])
        assert torch.allclose(urm.standardise.scale, expected[modality][1])
    valid_mean, _ = feature_moments(dataset.split("valid"), "a")
    assert not torch.allclose(result.model.urms["a"].standardise.mean, valid_mean, atol=100)


def test_the_statistics_travel_with_the_model_and_are_never_recomputed(tmp_path, capsys):
    trained_on = _raw_scale_file(tmp_path / "a.h5")
    other = _raw_scale_file(tmp_path / "b.h5", shift=-300.0)  # same valid and test splits
    dataset = load_dataset(trained_on)
    result = fit(apply_overrides(Config(), SMALL), dataset, device="cpu")
    save_run(tmp_path / "run", result)
    _, loaded = load_run(tmp_path / "run")
    for modality, urm in loaded.urms.items():
        assert torch.equal(urm.standardise.mean, result.model.urms[modality].standardise.mean)
        assert torch.equal(urm.standardise.scale, result.model.urms[modality].standardise.scale)
    scores = []
    for data in (trained_on, other):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--data", str(data),
                     "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1] == pytest.approx(result.test)


def test_standardisation_can_be_turned_off(tmp_path):
    dataset = load_dataset(_raw_scale_file(tmp_path / "raw.h5"))
    config = apply_overrides(Config(), {**SMALL, "standardise": "off"})
    result = fit(config, dataset, device="cpu")
    for urm in result.model.urms.values():
        assert torch.equal(urm.standardise.mean, torch.zeros_like(urm.standardise.mean))
        assert torch.equal(urm.standardise.scale, torch.ones_like(urm.standardise.scale))


def test_a_masked_modality_reaches_the_model_as_zeros_after_standardisation(tmp_path):
    dataset = load_dataset(_raw_scale_file(tmp_path / "raw.h5"))
    result = fit(apply_overrides(Config(), SMALL), dataset, device="cpu")
    masked = mask_modalities(dataset.split("test"), ["a"], fill=result.model.input_means())
    seen = result.model.urms["a"].standardise(masked.features["a"])
    assert torch.allclose(seen, torch.zeros_like(seen), atol=1e-5)
    assert torch.equal(masked.features["l"], dataset.split("test").features["l"])

"""Fusion pays and never hurts: on synthetic MOSI with every modality informative, with one
modality that is pure noise, and on real CMU-MOSI features on raw scales."""

import pytest

from ucrn.config import Config, apply_overrides
from ucrn.data.convert import convert_pickle
from ucrn.data.layout import load_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import fit

QUICK = {"batch_size": 32, "epochs": 12, "patience": 4, "seed": 0}


def _test_metrics(dataset, modalities: str, **overrides) -> dict[str, float]:
    config = apply_overrides(Config(), {**QUICK, **overrides, "modalities": modalities})
    return fit(config, dataset, device="cpu").test


@pytest.mark.slow
def test_trimodal_model_beats_every_unimodal_model_on_synthetic_mosi(tmp_path):
    dataset = load_dataset(synthesize("mosi", tmp_path / "mosi.h5", seed=0))
    test = {m: _test_metrics(dataset, m) for m in ("l,a,v", "l", "a", "v")}
    fused, singles = test["l,a,v"], [test[m] for m in "lav"]
    assert fused["MAE"] < min(s["MAE"] for s in singles)
    assert fused["Corr"] > max(s["Corr"] for s in singles)
    assert fused["Non0_acc_2"] > max(s["Non0_acc_2"] for s in singles)
    # Language is the strongest single modality and vision the weakest, as planted.
    assert test["l"]["Corr"] > test["a"]["Corr"] > test["v"]["Corr"]


@pytest.mark.slow
def test_a_modality_of_pure_noise_does_not_hurt_the_fused_model(tmp_path):
    path = synthesize("mosi", tmp_path / "mosi.h5", seed=0, signal={"a": 0.0})
    dataset = load_dataset(path)
    fused, language = _test_metrics(dataset, "l,a,v"), _test_metrics(dataset, "l")
    assert fused["Non0_acc_2"] >= language["Non0_acc_2"] - 0.01
    assert fused["MAE"] <= language["MAE"] + 0.01


@pytest.mark.slow
def test_real_features_on_raw_scales_train_for_every_seed(reference_data, tmp_path):
    source = reference_data / "mosi-real-fusion" / "mosi_minilm_opensmile.pkl"
    dataset = load_dataset(convert_pickle("mult-pkl", source, tmp_path / "real.h5")["output"])
    train, valid = dataset.split("train").labels[:, 0], dataset.split("valid").labels[:, 0]
    constant_mae = float((valid - train.median()).abs().mean())
    for seed in (0, 1, 2):
        config = apply_overrides(Config(), {"epochs": 10, "seed": seed, "modalities": "l,a"})
        result = fit(config, dataset, device="cpu", score_test=False)
        assert result.valid["MAE"] < 0.8 * constant_mae, seed  # far from the constant's 1.42

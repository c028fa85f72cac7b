"""On the synthetic default data, fusing all three modalities beats every single one."""

import pytest

from ucrn.config import Config, apply_overrides
from ucrn.data.layout import load_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import fit


@pytest.mark.slow
def test_trimodal_model_beats_every_unimodal_model_on_synthetic_mosi(tmp_path):
    dataset = load_dataset(synthesize("mosi", tmp_path / "mosi.h5", seed=0))
    test = {}
    for modalities in ("l,a,v", "l", "a", "v"):
        config = apply_overrides(Config(), {
            "modalities": modalities, "batch_size": 32, "epochs": 12, "patience": 4, "seed": 0,
        })
        test[modalities] = fit(config, dataset, device="cpu").test
    fused, singles = test["l,a,v"], [test[m] for m in "lav"]
    assert fused["MAE"] < min(s["MAE"] for s in singles)
    assert fused["Corr"] > max(s["Corr"] for s in singles)
    assert fused["Non0_acc_2"] > max(s["Non0_acc_2"] for s in singles)
    # Language is the strongest single modality and vision the weakest, as planted.
    assert test["l"]["Corr"] > test["a"]["Corr"] > test["v"]["Corr"]

"""The synthetic default data: real shapes, deterministic, with the planted structure."""

import json

import h5py
import numpy as np
import pytest

from ucrn.data.layout import load_dataset
from ucrn.data.synthetic import PRESETS, synthesize
from ucrn.errors import UcrnError
from ucrn.metrics import EMOTIONS


def test_mosi_preset_has_the_real_shapes_at_scale(tiny_mosi):
    dataset = load_dataset(tiny_mosi)
    assert [len(dataset.split(s)) for s in ("train", "valid", "test")] == [64, 11, 34]
    assert dataset.input_dims == {"l": 300, "a": 5, "v": 20}
    assert dataset.split("train").features["l"].shape[1] == 50
    assert dataset.label_names == ("sentiment",)


def test_mosei_preset_carries_sentiment_and_six_emotions(tiny_mosei):
    dataset = load_dataset(tiny_mosei)
    assert dataset.input_dims == {"l": 300, "a": 74, "v": 35}
    assert dataset.label_names == ("sentiment", *EMOTIONS)
    emotions = dataset.split("train").labels[:, 1:].numpy()
    assert ((emotions >= 0) & (emotions <= 3)).all()
    present = (emotions > 0).mean(axis=0)
    assert (present > 0.02).all() and (present < 0.8).all()


def test_full_size_counts_are_the_standard_splits():
    assert PRESETS["mosi"].counts == (1284, 229, 686)
    assert PRESETS["mosei"].counts == (16326, 1871, 4659)


def test_same_seed_same_data_and_another_seed_other_data(tmp_path):
    first = synthesize("mosi", tmp_path / "a.h5", scale=0.02, seed=7)
    second = synthesize("mosi", tmp_path / "b.h5", scale=0.02, seed=7)
    third = synthesize("mosi", tmp_path / "c.h5", scale=0.02, seed=8)
    with h5py.File(first) as a, h5py.File(second) as b, h5py.File(third) as c:
        assert np.array_equal(a["train/l"][()], b["train/l"][()])
        assert np.array_equal(a["test/labels"][()], b["test/labels"][()])
        assert not np.array_equal(a["train/l"][()], c["train/l"][()])


def test_labels_sit_on_a_third_grid_with_both_signs_and_some_zeros(tmp_path):
    labels = load_dataset(synthesize("mosi", tmp_path / "x.h5", scale=0.5)).split(
        "train").labels[:, 0].numpy()
    assert np.allclose(labels * 3, np.round(labels * 3), atol=1e-4)
    assert 0.3 < (labels > 0).mean() < 0.7 and (labels == 0).any()


def test_sequences_have_varying_lengths_and_zero_padding(tiny_mosi):
    train = load_dataset(tiny_mosi).split("train")
    lengths = train.lengths["a"]
    assert lengths is not None and lengths.min() < lengths.max()
    row = int(lengths.argmin())
    assert (train.features["a"][row, int(lengths[row]):] == 0).all()


def test_bad_preset_or_scale_is_refused(tmp_path):
    with pytest.raises(UcrnError, match="unknown preset"):
        synthesize("iemocap", tmp_path / "x.h5")
    with pytest.raises(UcrnError, match="scale"):
        synthesize("mosi", tmp_path / "x.h5", scale=0)


def test_a_modality_without_signal_loses_exactly_its_planted_sentiment(tmp_path):
    default = synthesize("mosi", tmp_path / "a.h5", scale=0.2, seed=3)
    silent = synthesize("mosi", tmp_path / "b.h5", scale=0.2, seed=3, signal={"a": 0.0})
    with h5py.File(default) as full, h5py.File(silent) as noise:
        for key in ("l", "v", "labels", "a_len"):
            assert np.array_equal(full[f"train/{key}"][()], noise[f"train/{key}"][()]), key
        removed = full["train/a"][()] - noise["train/a"][()]  # (N, T, d): the planted view
        labels = full["train/labels"][()]
        assert json.loads(noise.attrs["signal"]) == {"l": 1.0, "a": 0.0, "v": 1.0}
    view = removed.sum(axis=1) @ np.linalg.lstsq(removed.sum(axis=1), labels, rcond=None)[0]
    assert np.corrcoef(view, labels)[0, 1] > 0.3  # what was removed carried the sentiment


def test_a_bad_signal_strength_is_refused(tmp_path, capsys):
    from ucrn.cli import main

    assert main(["data", "synth", "--scale", "0.01", "--signal", "x=0",
                 "-o", str(tmp_path / "x.h5")]) == 2
    assert "--signal 'x=0'" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()

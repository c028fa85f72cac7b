"""Our HDF5 layout: what is written is read back, and every broken file is named clearly."""

import h5py
import numpy as np
import pytest
import torch
from helpers import small_arrays

from ucrn.data.layout import describe, load_dataset, read_attrs, write_dataset
from ucrn.errors import UcrnError


def test_a_written_file_reads_back_exactly(tmp_path):
    arrays = small_arrays()
    arrays["a_len"] = np.array([4, 3, 2, 1, 4, 4], dtype=np.int32)
    arrays["l_len"] = arrays["v_len"] = np.full(6, 4, dtype=np.int32)
    path = write_dataset(tmp_path / "x.h5", {"train": arrays, "valid": small_arrays(),
                                             "test": small_arrays()}, name="x")
    dataset = load_dataset(path)
    train = dataset.split("train")
    assert dataset.modalities == ("l", "a", "v")
    assert dataset.input_dims == {"l": 3, "a": 2, "v": 2}
    assert np.array_equal(train.features["l"].numpy(), arrays["l"])
    assert torch.equal(train.lengths["a"], torch.tensor([4, 3, 2, 1, 4, 4]))
    assert train.lengths["l"] is None  # no padding: no mask needed
    assert np.allclose(train.labels[:, 0].numpy(), arrays["labels"])
    assert train.ids == [f"video{i}[1]" for i in range(6)]


def test_only_the_requested_modalities_and_splits_are_loaded(write_small):
    dataset = load_dataset(write_small(), splits=["valid"], modalities=["v"])
    assert dataset.modalities == ("v",) and list(dataset.splits) == ["valid"]


def test_a_failed_write_leaves_no_file(tmp_path):
    broken = small_arrays()
    broken["l"] = np.full(broken["l"].shape, "text", dtype=object)  # h5py cannot store it
    with pytest.raises(OSError):  # the train split is written, then valid fails
        write_dataset(tmp_path / "x.h5", {"train": small_arrays(), "valid": broken}, name="x")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(UcrnError, match="missing.h5 does not exist.*ucrn data synth"):
        load_dataset(tmp_path / "missing.h5")


def test_a_file_that_is_not_hdf5_is_named(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("hello")
    with pytest.raises(UcrnError, match="notes.h5 is not an HDF5 file"):
        load_dataset(path)


def test_an_hdf5_file_of_another_layout_is_named(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=[1, 2])
    with pytest.raises(UcrnError, match="not in the ucrn layout"):
        read_attrs(path)


def test_a_missing_split_is_named(write_small):
    path = write_small(lambda s: s.pop("test"))
    with pytest.raises(UcrnError, match="split 'test' is missing"):
        load_dataset(path)


def test_a_missing_modality_is_named(write_small):
    path = write_small()
    with pytest.raises(UcrnError, match="modality t is not in this file|subset"):
        load_dataset(path, modalities=["t"])
    path = write_small(lambda s: [split.pop("v") for split in s.values()], name="lv.h5")
    with pytest.raises(UcrnError, match="modality v is not in this file"):
        load_dataset(path, modalities=["l", "v"])


def test_nan_or_inf_features_are_named(write_small):
    def spoil(splits):
        splits["valid"]["a"][2, 1, 0] = np.nan
        splits["valid"]["a"][3, 0, 1] = np.inf

    with pytest.raises(UcrnError, match="split 'valid' key 'a' has 2 NaN or infinite values"):
        load_dataset(write_small(spoil))


def test_labels_out_of_range_are_named(write_small):
    def spoil(splits):
        splits["train"]["labels"][4] = 3.5

    with pytest.raises(UcrnError, match="'sentiment': 1 values outside"):
        load_dataset(write_small(spoil))


def test_an_empty_split_is_named(write_small):
    def spoil(splits):
        splits["test"] = {key: value[:0] for key, value in splits["test"].items()}

    with pytest.raises(UcrnError, match="split 'test' is empty"):
        load_dataset(write_small(spoil))


def test_modalities_with_different_sample_counts_are_named(write_small):
    def spoil(splits):
        splits["train"]["v"] = splits["train"]["v"][:5]

    with pytest.raises(UcrnError, match="arrays differ in length"):  # the writer refuses...
        write_small(spoil)

    def shrink_after_writing(path):  # ...so make the mismatch in the file itself
        with h5py.File(path, "a") as file:
            data = file["train/v"][:5]
            del file["train/v"]
            file["train/v"] = data

    path = write_small(name="mismatch.h5")
    shrink_after_writing(path)
    with pytest.raises(UcrnError, match="key 'v' has 5 samples but labels has 6"):
        load_dataset(path)


def test_feature_sizes_must_agree_between_splits(write_small):
    def spoil(splits):
        splits["test"]["a"] = np.zeros((6, 4, 7), dtype=np.float32)

    with pytest.raises(UcrnError, match="feature sizes differ between splits"):
        load_dataset(write_small(spoil))


def test_lengths_outside_the_sequence_are_named(write_small):
    def spoil(splits):
        for split in splits.values():
            split["l_len"] = np.array([4, 4, 0, 4, 4, 4], dtype=np.int32)

    with pytest.raises(UcrnError, match="'l_len' has lengths outside"):
        load_dataset(write_small(spoil))


def test_describe_summarises_without_loading_features(write_small):
    summary = describe(write_small())
    assert summary["splits"]["train"]["count"] == 6
    assert summary["splits"]["train"]["shapes"]["l"] == (6, 4, 3)
    assert set(summary["splits"]["valid"]["labels"]["sentiment"]) >= {"mean", "std", "min"}

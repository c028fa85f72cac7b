"""Converters from MulT and MMSA pickles: exact source layouts in, our layout out, bad input
refused clearly — and a pickle that tries to run code is never run."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from ucrn.cli import main
from ucrn.data.convert import convert_pickle, load_pickle
from ucrn.data.layout import load_dataset, read_attrs
from ucrn.errors import UcrnError

COUNTS = {"train": 12, "valid": 4, "test": 6}


def _mult_split(count: int, seed: int, steps=(50, 50, 50), dims=(300, 5, 20)) -> dict:
    """One split exactly as MulT's pickles hold it (mosi_data.pkl)."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=(count, steps[1], dims[1])).astype(np.float32)
    audio[0, :3, 0] = -np.inf  # COVAREP's -inf, as in the real files
    return {
        "text": rng.normal(size=(count, steps[0], dims[0])).astype(np.float32),
        "audio": audio,
        "vision": rng.normal(size=(count, steps[2], dims[2])).astype(np.float32),
        "labels": rng.uniform(-3, 3, size=(count, 1, 1)).astype(np.float32),
        "id": np.array([[f"vid{seed}_{i}".encode(), str(i + 1).encode(), b"x"]
                        for i in range(count)]),
    }


def _mmsa_split(count: int, seed: int) -> dict:
    """One split as MMSA's unaligned pickles hold it."""
    rng = np.random.default_rng(seed)
    return {
        "text": rng.normal(size=(count, 39, 768)).astype(np.float32),
        "audio": rng.normal(size=(count, 375, 5)).astype(np.float32),
        "vision": rng.normal(size=(count, 500, 20)).astype(np.float32),
        "regression_labels": rng.uniform(-3, 3, size=count).astype(np.float32),
        "audio_lengths": rng.integers(1, 376, size=count).tolist(),
        "vision_lengths": rng.integers(1, 501, size=count).tolist(),
        "id": np.array([f"video{seed}$_${i}" for i in range(count)], dtype=object),
    }


def _write(path: Path, splits: dict) -> Path:
    path.write_bytes(pickle.dumps(splits, protocol=4))
    return path


@pytest.fixture
def mult_pickle(tmp_path) -> Path:
    return _write(tmp_path / "mosi_data.pkl",
                  {s: _mult_split(n, i) for i, (s, n) in enumerate(COUNTS.items())})


def test_a_mult_pickle_converts_with_its_shapes_labels_and_ids(mult_pickle, tmp_path):
    summary = convert_pickle("mult-pkl", mult_pickle, tmp_path / "out.h5")
    assert summary["counts"] == COUNTS
    assert summary["cleaned"] == {"a: -inf → 0": 9}  # 3 values in each of 3 splits
    dataset = load_dataset(tmp_path / "out.h5")
    train = dataset.split("train")
    source = pickle.loads(mult_pickle.read_bytes())["train"]
    assert dataset.input_dims == {"l": 300, "a": 5, "v": 20}
    assert np.allclose(train.labels[:, 0].numpy(), source["labels"].reshape(-1))
    assert train.features["a"][0, 0, 0].item() == 0.0
    assert np.array_equal(train.features["v"].numpy(), source["vision"])
    assert train.ids[1] == "vid0_1[2,x]"


def test_unaligned_sequences_keep_their_own_lengths(tmp_path):
    path = _write(tmp_path / "mosi_data_noalign.pkl", {
        s: _mult_split(n, i, steps=(50, 375, 500)) for i, (s, n) in enumerate(COUNTS.items())})
    convert_pickle("mult-pkl", path, tmp_path / "out.h5")
    features = load_dataset(tmp_path / "out.h5").split("valid").features
    assert [features[m].shape[1] for m in "lav"] == [50, 375, 500]


def test_an_mmsa_pickle_carries_its_lengths(tmp_path):
    path = _write(tmp_path / "unaligned_39.pkl",
                  {s: _mmsa_split(n, i) for i, (s, n) in enumerate(COUNTS.items())})
    convert_pickle("mmsa-pkl", path, tmp_path / "out.h5")
    dataset = load_dataset(tmp_path / "out.h5")
    source = pickle.loads(path.read_bytes())["test"]
    test = dataset.split("test")
    assert test.lengths["a"].tolist() == source["audio_lengths"]
    assert test.lengths["v"].tolist() == source["vision_lengths"]
    assert test.lengths["l"] is None  # no text lengths in the source: the full sequence
    assert test.ids[0] == "video2$_$0"


def test_mmsa_token_ids_are_refused_as_features(tmp_path):
    data = {s: _mmsa_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    for split in data.values():
        split["text_bert"] = np.zeros((len(split["regression_labels"]), 3, 50), np.float32)
        split.pop("text")
    path = _write(tmp_path / "bert.pkl", data)
    with pytest.raises(UcrnError, match="token ids"):
        convert_pickle("mmsa-pkl", path, tmp_path / "out.h5")


def test_mmsa_bad_lengths_and_missing_labels_are_named(tmp_path):
    data = {s: _mmsa_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    data["valid"]["audio_lengths"] = data["valid"]["audio_lengths"][:2]
    with pytest.raises(UcrnError, match="'audio_lengths' has 2 entries for 4 samples"):
        convert_pickle("mmsa-pkl", _write(tmp_path / "a.pkl", data), tmp_path / "out.h5")
    data = {s: _mmsa_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    data["test"].pop("regression_labels")
    with pytest.raises(UcrnError, match="no key 'regression_labels'"):
        convert_pickle("mmsa-pkl", _write(tmp_path / "b.pkl", data), tmp_path / "out.h5")


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": {"labels": Payload()}}))
    with pytest.raises(UcrnError, match="refused to load .*system"):
        load_pickle(path)
    with pytest.raises(UcrnError, match="refused"):
        convert_pickle("mult-pkl", path, tmp_path / "out.h5")
    assert not marker.exists()
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d.pop("valid"), "split(s) valid missing"),
    (lambda d: d["valid"].pop("audio"), "split 'valid' has feature keys text, vision but "
     "split 'train' has text, audio, vision (no key 'audio' in one of them)"),
    (lambda d: d["test"]["labels"].__setitem__((0, 0, 0), 4.5), "labels outside [-3, 3]"),
    (lambda d: d["train"]["vision"].__setitem__((1, 2, 3), np.nan), "1 NaN or infinite"),
    (lambda d: d["valid"].__setitem__("text", d["valid"]["text"][:3]), "has 3 samples"),
    (lambda d: d["train"].__setitem__("vision", d["train"]["vision"][:, :, :7]),
     "7 features in split 'train' but 20 in 'valid'"),
    (lambda d: d.__setitem__("valid", {k: v[:0] for k, v in d["valid"].items()}), "empty"),
    (lambda d: d["train"].__setitem__("id", d["train"]["id"][:5]), "'id' has 5 entries"),
    (lambda d: d["train"].__setitem__("audio", d["train"]["audio"].astype(str)),
     "dtype <U"),
    (lambda d: d.__setitem__("test", [1, 2]), "split 'test' is a list"),
])
def test_bad_mult_input_is_refused_and_no_output_is_left(tmp_path, spoil, message):
    data = {s: _mult_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    spoil(data)
    path = _write(tmp_path / "bad.pkl", data)
    with pytest.raises(UcrnError, match=re.escape(message)):
        convert_pickle("mult-pkl", path, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_a_truncated_pickle_is_named(mult_pickle, tmp_path):
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(mult_pickle.read_bytes()[:5000])
    with pytest.raises(UcrnError, match="not a readable pickle"):
        convert_pickle("mult-pkl", truncated, tmp_path / "out.h5")


def test_the_command_converts_inspects_and_the_result_trains(mult_pickle, tmp_path, capsys):
    output = tmp_path / "mosi.h5"
    assert main(["data", "convert", "mult-pkl", str(mult_pickle), "-o", str(output)]) == 0
    assert "-inf → 0 (9 values)" in capsys.readouterr().err
    assert read_attrs(output)["source_format"] == "mult-pkl"
    assert main(["data", "inspect", str(output)]) == 0
    out = capsys.readouterr().out
    assert "converted from mult-pkl" in out and "a: -inf → 0 (9)" in out
    assert main(["train", "--data", str(output), "--epochs", "1", "--set", "urm_layers=1",
                 "--set", "crm_layers=1", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("keys, modalities", [
    (("text", "audio"), ["l", "a"]), (("text",), ["l"]), (("audio", "vision"), ["a", "v"]),
])
def test_a_mult_pickle_with_any_subset_of_modalities_converts(tmp_path, capsys, keys,
                                                               modalities):
    data = {s: _mult_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    for split in data.values():
        for key in {"text", "audio", "vision"} - set(keys):
            split.pop(key)
    path = _write(tmp_path / "subset.pkl", data)
    output = tmp_path / "out.h5"
    assert main(["data", "convert", "mult-pkl", str(path), "-o", str(output)]) == 0
    found = next(line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("modalities found:"))
    assert re.findall(r"(\w) \((?:language|audio|vision), \d+ features\)", found) == modalities
    dataset = load_dataset(output)
    assert list(dataset.modalities) == modalities
    assert list(read_attrs(output)["modalities"]) == modalities


def test_an_mmsa_pickle_with_text_only_converts(tmp_path):
    data = {s: _mmsa_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    for split in data.values():
        for key in ("audio", "vision", "audio_lengths", "vision_lengths"):
            split.pop(key)
    summary = convert_pickle("mmsa-pkl", _write(tmp_path / "t.pkl", data), tmp_path / "o.h5")
    assert summary["modalities"] == ["l"] and summary["dims"] == {"l": 768}


def test_a_pickle_without_features_is_refused(tmp_path):
    data = {s: _mult_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    for split in data.values():
        for key in ("text", "audio", "vision"):
            split.pop(key)
    with pytest.raises(UcrnError, match="none of the feature keys text, audio, vision"):
        convert_pickle("mult-pkl", _write(tmp_path / "x.pkl", data), tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("kind", ["mmsa-pkl", "mult-pkl"])
def test_a_files_own_metadata_key_is_kept_in_the_provenance_not_refused(tmp_path, kind,
                                                                      capsys):
    make = _mmsa_split if kind == "mmsa-pkl" else _mult_split
    splits = {s: make(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    # as MMSA-FET writes its extraction settings beside the splits
    splits["config"] = {"audio": {"tool": "librosa", "sample_rate": 16000},
                        "video": {"tool": "openface", "fps": np.int64(25)}}
    path = _write(tmp_path / "fet.pkl", splits)
    assert main(["data", "convert", kind, str(path), "-o", str(tmp_path / "out.h5")]) == 0
    err = capsys.readouterr().err
    assert "note: top-level 'config' is the file's metadata, not a split" in err
    attrs = read_attrs(tmp_path / "out.h5")
    kept = json.loads(json.loads(attrs["source_metadata"])["config"])
    assert kept["audio"]["tool"] == "librosa" and kept["video"]["fps"] == 25
    assert set(load_dataset(tmp_path / "out.h5").splits) == {"train", "valid", "test"}
    assert main(["data", "inspect", str(tmp_path / "out.h5")]) == 0
    assert "source metadata 'config'" in capsys.readouterr().out


def test_an_unknown_top_level_key_is_still_refused(tmp_path):
    splits = {s: _mmsa_split(n, i) for i, (s, n) in enumerate(COUNTS.items())}
    splits["extra"] = {"x": 1}
    with pytest.raises(UcrnError, match="unknown split 'extra'"):
        convert_pickle("mmsa-pkl", _write(tmp_path / "x.pkl", splits), tmp_path / "out.h5")

"""CMU-SDK .csd conversion, checked against the real CMU-MOSI labels and standard folds.

The feature sequences are made here in the SDK's exact layout (HDF5: <root>/data/<video>/
features and intervals, <root>/metadata/* JSON strings) around the real labelled segments.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ucrn.cli import main
from ucrn.data.csd import ComputationalSequence, convert_csd, standard_folds
from ucrn.data.layout import load_dataset, read_attrs
from ucrn.errors import UcrnError


def write_csd(path: Path, root: str, videos: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A computational sequence in the CMU-SDK's layout."""
    with h5py.File(path, "w") as file:
        group = file.create_group(root)
        data = group.create_group("data")
        for video, (features, intervals) in videos.items():
            entry = data.create_group(video)
            entry["features"] = features
            entry["intervals"] = intervals
        metadata = group.create_group("metadata")
        for key, value in {"root name": root, "dimension names": ["x"],
                           "computational sequence version": "1.0"}.items():
            metadata.create_dataset(key, (1,), dtype=h5py.string_dtype(),
                                    data=[json.dumps(value)])
    return path


@pytest.fixture(scope="module")
def labels_path(reference_data) -> Path:
    return reference_data / "cmu-mosi" / "CMU_MOSI_Opinion_Labels.csd"


@pytest.fixture(scope="module")
def mosi_features(labels_path, tmp_path_factory) -> dict[str, Path]:
    """Words (4-d), audio at 10 Hz (3-d) and vision at 2 Hz (2-d) around every segment."""
    folder = tmp_path_factory.mktemp("csd")
    labels = ComputationalSequence(labels_path, "labels")
    words, audio, vision = {}, {}, {}
    for video in labels.videos():
        _, intervals = labels.sequence(video)
        end = float(intervals[:, 1].max()) + 2.0
        # Words: 4 per segment, splitting it evenly; plus one word in no segment.
        rows = [(s + (e - s) * k / 4, s + (e - s) * (k + 1) / 4) for s, e in intervals
                for k in range(4)]
        rows.append((end - 1.0, end - 0.5))
        word_intervals = np.array(rows, dtype=np.float64)
        words[video] = (np.column_stack([word_intervals, word_intervals.mean(1),
                                         np.arange(len(rows))]).astype(np.float32),
                        word_intervals)
        for table, rate, dims in ((audio, 0.1, 3), (vision, 0.5, 2)):
            starts = np.arange(0.0, end, rate)
            frames = np.column_stack([starts, starts + rate])
            values = np.repeat(starts[:, None], dims, axis=1).astype(np.float32)
            table[video] = (values, frames)
    labels.close()
    return {
        "l": write_csd(folder / "CMU_MOSI_TimestampedWordVectors.csd", "words", words),
        "a": write_csd(folder / "CMU_MOSI_COVAREP.csd", "COVAREP", audio),
        "v": write_csd(folder / "CMU_MOSI_Visual_Facet_41.csd", "FACET", vision),
    }


def test_real_mosi_labels_and_standard_folds_give_the_standard_split_sizes(
        labels_path, mosi_features, tmp_path):
    summary = convert_csd(labels_path, mosi_features, tmp_path / "mosi.h5",
                          folds=standard_folds("mosi"))
    assert summary["counts"] == {"train": 1284, "valid": 229, "test": 686}
    dataset = load_dataset(tmp_path / "mosi.h5")
    assert dataset.input_dims == {"l": 4, "a": 3, "v": 2}
    # Every segment carries its real label, under the id video[k] (k in time order).
    with h5py.File(labels_path) as file:
        data = file["Opinion Segment Labels"]["data"]
        expected = {}
        for video in data:
            intervals = data[video]["intervals"][()]
            order = np.argsort(intervals[:, 0], kind="stable")
            for k, row in enumerate(order, start=1):
                expected[f"{video}[{k}]"] = float(data[video]["features"][row, 0])
    for split in ("train", "valid", "test"):
        part = dataset.split(split)
        for segment_id, label in zip(part.ids, part.labels[:, 0].tolist(), strict=True):
            assert label == pytest.approx(expected[segment_id], abs=1e-6)
    assert len({i for s in dataset.splits.values() for i in s.ids}) == 2199
    folds = standard_folds("mosi")
    assert {i.split("[")[0] for i in dataset.split("valid").ids} == set(folds["valid"])


def test_word_alignment_averages_the_audio_and_vision_rows_that_overlap_each_word(
        labels_path, mosi_features, tmp_path):
    convert_csd(labels_path, mosi_features, tmp_path / "mosi.h5",
                folds=standard_folds("mosi"), seq_len=8)
    test = load_dataset(tmp_path / "mosi.h5").split("test")
    own = (test.lengths["l"] == 4).nonzero()[:, 0]  # 4 words of its own, no neighbour's
    assert len(own) > 0.8 * len(test)
    for segment in own[:5].tolist():
        words = test.features["l"][segment, :4].numpy()
        for modality, rate in (("a", 0.1), ("v", 0.5)):
            frames = test.features[modality][segment, :4].numpy()
            for (start, end, _, _), frame in zip(words, frames, strict=True):
                starts = np.arange(0.0, end + 1.0, rate)  # the fixture's frames and values
                overlapping = starts[(starts < end - 1e-3) & (starts + rate > start + 1e-3)]
                assert frame[0] == pytest.approx(overlapping.mean(), abs=1e-4)
    assert (test.features["l"][own[0], 4:] == 0).all()  # padding at the end


def _coarse_sequences(labels_path, tmp_path, shift: float = 0.0):
    """One row per labelled segment (as the SDK's utterance-level openSMILE files), its
    interval shifted by ``shift`` seconds, valued by its segment's number."""
    labels = ComputationalSequence(labels_path, "labels")
    videos = {}
    for video in labels.videos():
        _, intervals = labels.sequence(video)
        values = np.arange(1, len(intervals) + 1, dtype=np.float32)[:, None].repeat(2, 1)
        videos[video] = (values, intervals + shift)
    labels.close()
    return write_csd(tmp_path / "opensmile.csd", "openSMILE", videos)


def test_a_feature_coarser_than_the_words_serves_every_word_it_spans(
        labels_path, mosi_features, tmp_path):
    coarse = _coarse_sequences(labels_path, tmp_path)
    summary = convert_csd(labels_path, {"l": mosi_features["l"], "a": coarse},
                          tmp_path / "out.h5", folds=standard_folds("mosi"))
    audio = load_dataset(tmp_path / "out.h5").split("train").features["a"]
    lengths = load_dataset(tmp_path / "out.h5").split("train").lengths["l"]
    valid = torch.arange(audio.shape[1])[None, :] < lengths[:, None]
    assert (audio[valid] != 0).all()  # once: every value 0.0, with no word about it
    assert not any("overlaps" in key for key in summary["skipped"])


def test_words_no_audio_row_overlaps_are_zeros_and_counted(labels_path, mosi_features,
                                                           tmp_path):
    # every audio row moved an hour later: no word of any segment overlaps one
    late = _coarse_sequences(labels_path, tmp_path, shift=3600.0)
    summary = convert_csd(labels_path, {"l": mosi_features["l"], "a": late},
                          tmp_path / "out.h5", folds=standard_folds("mosi"))
    dataset = load_dataset(tmp_path / "out.h5")
    wordless = summary["skipped"].get("l: segments with no rows (one zero step)", 0)
    steps = sum(int(split.lengths["l"].sum()) for split in dataset.splits.values())
    assert summary["skipped"]["a: word steps no row overlaps (zeros)"] == steps - wordless
    assert summary["skipped"]["a: segments no row overlaps at all (all zeros)"] == \
        2199 - wordless


def test_without_alignment_a_row_across_the_segments_start_is_kept(
        labels_path, mosi_features, tmp_path):
    straddling = _coarse_sequences(labels_path, tmp_path, shift=-0.3)  # starts before it
    convert_csd(labels_path, {"l": mosi_features["l"], "a": straddling},
                tmp_path / "own.h5", folds=standard_folds("mosi"), align=None)
    train = load_dataset(tmp_path / "own.h5").split("train")
    assert (train.features["a"][:, 0] != 0).all()


def test_each_modality_can_keep_its_own_rate(labels_path, mosi_features, tmp_path):
    convert_csd(labels_path, mosi_features, tmp_path / "own.h5",
                folds=standard_folds("mosi"), align=None, seq_len=200)
    valid = load_dataset(tmp_path / "own.h5").split("valid")
    lengths = {m: valid.lengths[m] for m in "lav"}
    assert (lengths["a"] > lengths["v"]).all()  # 10 Hz against 2 Hz
    # Each segment holds its own 4 words, and those of a neighbour it overlaps (real MOSI
    # segments sometimes overlap).
    assert (lengths["l"] >= 4).all() and (lengths["l"] == 4).float().mean() > 0.8


def test_a_language_only_data_set_is_valid(labels_path, mosi_features, tmp_path):
    convert_csd(labels_path, {"l": mosi_features["l"]}, tmp_path / "l.h5",
                folds=standard_folds("mosi"))
    assert load_dataset(tmp_path / "l.h5").modalities == ("l",)


def test_videos_without_features_are_counted_and_refused_unless_allowed(
        labels_path, mosi_features, tmp_path):
    with h5py.File(mosi_features["v"]) as file:
        videos = {v: (file["FACET/data"][v]["features"][()],
                      file["FACET/data"][v]["intervals"][()])
                  for v in list(file["FACET/data"])[2:]}
    partial = write_csd(tmp_path / "partial.csd", "FACET", videos)
    files = {**mosi_features, "v": partial}
    with pytest.raises(UcrnError, match="2 missing from .*partial.csd.*--allow-missing"):
        convert_csd(labels_path, files, tmp_path / "out.h5", folds=standard_folds("mosi"))
    assert not (tmp_path / "out.h5").exists()
    summary = convert_csd(labels_path, files, tmp_path / "out.h5",
                          folds=standard_folds("mosi"), allow_missing=True)
    assert summary["skipped"]["videos without features"] == 2
    assert sum(summary["counts"].values()) == 2199 - summary["skipped"][
        "segments without features"]


def test_intervals_and_features_that_disagree_are_named(labels_path, mosi_features, tmp_path):
    with h5py.File(mosi_features["a"]) as file:
        videos = {v: (file["COVAREP/data"][v]["features"][()],
                      file["COVAREP/data"][v]["intervals"][()]) for v in file["COVAREP/data"]}
    first = next(iter(videos))
    features, intervals = videos[first]
    videos[first] = (features[:-1], intervals)
    broken = write_csd(tmp_path / "broken.csd", "COVAREP", videos)
    with pytest.raises(UcrnError, match="intervals and features disagree"):
        convert_csd(labels_path, {**mosi_features, "a": broken}, tmp_path / "out.h5",
                    folds=standard_folds("mosi"))


def test_a_file_that_is_not_a_csd_is_named(labels_path, tmp_path):
    text = tmp_path / "notes.csd"
    text.write_text("not hdf5")
    with pytest.raises(UcrnError, match="is not HDF5"):
        convert_csd(labels_path, {"l": text}, tmp_path / "out.h5",
                    folds=standard_folds("mosi"))
    other = tmp_path / "other.csd"
    with h5py.File(other, "w") as file:
        file["x"] = [1]
    with pytest.raises(UcrnError, match="not a computational sequence"):
        convert_csd(labels_path, {"l": other}, tmp_path / "out.h5",
                    folds=standard_folds("mosi"))


def test_the_command_converts_csd_and_records_provenance(labels_path, mosi_features,
                                                         tmp_path, capsys):
    output = tmp_path / "mosi.h5"
    assert main(["data", "convert", "csd", "--labels", str(labels_path), "--features",
                 *(f"{m}={p}" for m, p in mosi_features.items()), "--dataset", "mosi",
                 "-o", str(output)]) == 0
    attrs = read_attrs(output)
    assert attrs["source_format"] == "csd"
    assert json.loads(attrs["counts"]) == {"train": 1284, "valid": 229, "test": 686}
    assert main(["data", "inspect", str(output)]) == 0
    assert "converted from csd" in capsys.readouterr().out


def test_a_sequence_length_that_cannot_fit_is_refused_before_writing(labels_path,
                                                                      mosi_features, tmp_path):
    with pytest.raises(UcrnError, match=r"--seq-len 1000000000 needs about .* smaller"):
        convert_csd(labels_path, mosi_features, tmp_path / "huge.h5",
                    folds=standard_folds("mosi"), seq_len=1_000_000_000)
    assert not (tmp_path / "huge.h5").exists()

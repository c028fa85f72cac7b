"""CMU-SDK computational sequences (``.csd``) → our HDF5 layout.

A ``.csd`` is an HDF5 file with one root group holding ``data/<video>/features`` (n, d) and
``data/<video>/intervals`` (n, 2) in seconds, and ``metadata/*`` (JSON strings). A labels
sequence holds one row per opinion segment (features (n, 1): the sentiment score).

Each labelled segment of a video — numbered from 1 in time order, id ``video[k]`` — takes,
for each modality, the feature rows whose intervals overlap the segment's interval, in
time order (the CMU-SDK aligns by intersection). With ``align="l"`` (the SDK's usual word
alignment) every language row is one time step, clipped to the segment, and audio and
vision are averaged over the rows that overlap that word's interval — a row coarser than a
word (an utterance-level openSMILE vector, a video frame longer than a short word) serves
every word it spans — with zeros, counted, where no row overlaps; otherwise each modality
keeps its own rate. Sequences longer than
``seq_len`` keep their first ``seq_len`` steps; shorter ones are padded at the end and carry
their length. A segment with no row of a modality gets one zero step (counted). Audio
``-inf`` (COVAREP) becomes 0, as in MulT's data (counted). Segments go to the split of
their video in the standard folds (``ucrn/data/folds``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ucrn import MODALITIES
from ucrn.data.convert import Provenance
from ucrn.data.layout import SENTIMENT, SPLITS, create_dataset_file
from ucrn.errors import UcrnError
from ucrn.footprint import check_room

FOLDS_DIR = Path(__file__).resolve().parent / "folds"
TOLERANCE = 1e-3  # seconds: rows that only touch an interval's edge do not overlap it
CHUNK = 512  # segments written at a time


def standard_folds(dataset: str) -> dict[str, list[str]]:
    """The standard CMU-SDK folds (video ids per split) shipped with ucrn."""
    path = FOLDS_DIR / f"{dataset}.json"
    if not path.is_file():
        raise UcrnError(f"no standard folds for {dataset!r}; choose mosi or mosei, or give "
                        "--folds FILE.json")
    return json.loads(path.read_text())


def read_folds(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise UcrnError(f"--folds {path} does not exist")
    try:
        folds = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UcrnError(f"--folds {path} is not valid JSON: {error}") from None
    if not isinstance(folds, dict) or set(folds) != set(SPLITS):
        raise UcrnError(f"--folds {path} must map train, valid and test to lists of videos")
    return folds


class ComputationalSequence:
    """One ``.csd`` file, read one video at a time and checked as it is read."""

    def __init__(self, path: str | Path, role: str):
        self.path, self.role = Path(path), role
        if not self.path.is_file():
            raise UcrnError(f"{role} file {self.path} does not exist")
        if not h5py.is_hdf5(self.path):
            raise UcrnError(f"{role} file {self.path} is not HDF5, so not a CMU-SDK .csd")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise UcrnError(f"{role} file {self.path} cannot be read ({error}); is it "
                            "complete?") from None
        roots = [key for key in self.file if isinstance(self.file[key], h5py.Group)]
        if len(roots) != 1 or "data" not in self.file[roots[0]]:
            raise UcrnError(f"{role} file {self.path} is not a computational sequence: "
                            "expected one root group with data/<video>/features, intervals")
        self.root = roots[0]
        self.data = self.file[self.root]["data"]

    def metadata(self) -> dict[str, Any]:
        group = self.file[self.root].get("metadata")
        result = {}
        for key in group or []:
            value = group[key][()]
            value = value[0] if isinstance(value, np.ndarray) and value.size else value
            value = value.decode() if isinstance(value, bytes) else value
            try:
                result[key] = json.loads(value)
            except (TypeError, ValueError):
                result[key] = value
        return result

    def videos(self) -> list[str]:
        return list(self.data)

    def __contains__(self, video: str) -> bool:
        return video in self.data

    def sequence(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, d) float32, intervals (n, 2)) of ``video``, sorted by start."""
        group = self.data[video]
        if "features" not in group or "intervals" not in group:
            raise UcrnError(f"{self.path} video {video}: features or intervals missing")
        features, intervals = group["features"][()], group["intervals"][()]
        if features.ndim != 2 or intervals.ndim != 2 or intervals.shape[1] != 2:
            raise UcrnError(f"{self.path} video {video}: features {features.shape} and "
                            f"intervals {intervals.shape}; expected (n, d) and (n, 2)")
        if len(features) != len(intervals):
            raise UcrnError(f"{self.path} video {video}: intervals and features disagree "
                            f"({len(intervals)} intervals, {len(features)} feature rows)")
        if (intervals[:, 1] < intervals[:, 0]).any():
            raise UcrnError(f"{self.path} video {video}: "
                            f"{int((intervals[:, 1] < intervals[:, 0]).sum())} intervals "
                            "end before they start")
        order = np.argsort(intervals[:, 0], kind="stable")
        return features[order].astype(np.float32), intervals[order].astype(np.float64)

    def close(self) -> None:
        self.file.close()


@dataclass
class Segment:
    video: str
    index: int  # 1-based, in time order within the video
    start: float
    end: float
    label: float

    @property
    def id(self) -> str:
        return f"{self.video}[{self.index}]"


def _segments(labels: ComputationalSequence) -> dict[str, list[Segment]]:
    """Every labelled segment, per video, in time order."""
    result = {}
    for video in labels.videos():
        values, intervals = labels.sequence(video)
        if values.shape[1] != 1:
            raise UcrnError(f"{labels.path} video {video}: labels have {values.shape[1]} "
                            "columns; expected one sentiment score")
        scores = values[:, 0]
        if not np.isfinite(scores).all() or (np.abs(scores) > 3).any():
            raise UcrnError(f"{labels.path} video {video}: labels must be finite and in "
                            "[-3, 3]")
        result[video] = [Segment(video, k + 1, float(s), float(e), float(score))
                         for k, ((s, e), score) in enumerate(zip(intervals, scores,
                                                                 strict=True))]
    return result


def _overlapping(intervals: np.ndarray, start: float, end: float, longest: float) -> np.ndarray:
    """Indices of the rows that share part of [start, end], in time order: rows whose
    interval overlaps it by more than ``TOLERANCE``, and instants (rows of no duration)
    inside it. ``longest`` is the longest row's duration (rows sorted by start)."""
    first = np.searchsorted(intervals[:, 0], start - longest - TOLERANCE, side="left")
    last = np.searchsorted(intervals[:, 0], end + TOLERANCE, side="right")
    candidates = np.arange(first, last)
    begins, ends = intervals[candidates, 0], intervals[candidates, 1]
    overlap = (begins < end - TOLERANCE) & (ends > start + TOLERANCE)
    instant = (ends - begins <= 2 * TOLERANCE) & (begins >= start - TOLERANCE) & \
        (begins <= end + TOLERANCE)
    return candidates[overlap | instant]


def _average_over(features: np.ndarray, intervals: np.ndarray, longest: float,
                  steps: np.ndarray) -> tuple[np.ndarray, int]:
    """The CMU-SDK's alignment: for each step interval, the mean of the rows that overlap
    it (a row coarser than a step, e.g. one utterance-level vector, serves every step it
    spans); zeros where no row does. Returns the (len(steps), d) rows and how many steps
    no row overlapped."""
    result = np.zeros((len(steps), features.shape[1]), dtype=np.float32)
    empty = 0
    for row, (start, end) in enumerate(steps):
        chosen = _overlapping(intervals, start, end, longest)
        if len(chosen):
            result[row] = features[chosen].mean(axis=0)
        else:
            empty += 1
    return result, empty


class _Converter:
    def __init__(self, features: dict[str, ComputationalSequence], align: str | None,
                 seq_len: int, provenance: Provenance):
        self.features, self.align, self.seq_len = features, align, seq_len
        self.provenance = provenance
        self.dims: dict[str, int] = {}
        self._cache: tuple[str, dict] | None = None
        self._longest: dict[str, float] = {}  # the cached video's longest row, per modality

    def _video(self, video: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self._cache is None or self._cache[0] != video:
            sequences = {m: source.sequence(video) for m, source in self.features.items()}
            for modality, (values, _) in sequences.items():
                dim = self.dims.setdefault(modality, values.shape[1])
                if values.shape[1] != dim:
                    raise UcrnError(f"{self.features[modality].path} video {video}: "
                                    f"{values.shape[1]} features, other videos {dim}")
                if modality == "a":
                    negative = np.isneginf(values)
                    if negative.any():
                        values[negative] = 0.0
                        self._count("cleaned", "a: -inf → 0", int(negative.sum()))
                if not np.isfinite(values).all():
                    raise UcrnError(f"{self.features[modality].path} video {video}: "
                                    f"{int((~np.isfinite(values)).sum())} NaN or infinite "
                                    "values; clean the source first")
            self._cache = (video, sequences)
            self._longest = {m: float((i[:, 1] - i[:, 0]).max(initial=0.0))
                             for m, (_, i) in sequences.items()}
        return self._cache[1]

    def feature_sizes(self, video: str) -> dict[str, int]:
        """Each modality's feature size, from ``video``'s sequences (counting nothing twice:
        its segments are converted later from the same cached sequences)."""
        self._video(video)
        return self.dims

    def _count(self, kind: str, what: str, count: int) -> None:
        table = getattr(self.provenance, kind)
        table[what] = table.get(what, 0) + count

    def segment(self, segment: Segment) -> dict[str, tuple[np.ndarray, int]]:
        """modality → (steps (seq_len, d) padded, valid length) for one segment."""
        sequences = self._video(segment.video)
        rows: dict[str, np.ndarray] = {}
        if self.align:
            values, intervals = sequences[self.align]
            chosen = _overlapping(intervals, segment.start, segment.end,
                                  self._longest[self.align])
            if len(chosen) > self.seq_len:  # every modality keeps the first seq_len steps
                for modality in sequences:
                    self._count("cleaned", f"{modality}: segments cut to {self.seq_len} steps",
                                1)
                chosen = chosen[: self.seq_len]
            steps = np.clip(intervals[chosen], segment.start, segment.end)  # as the SDK clips
            for modality, (other, other_intervals) in sequences.items():
                if modality == self.align:
                    rows[modality] = values[chosen]
                    continue
                rows[modality], empty = _average_over(other, other_intervals,
                                                      self._longest[modality], steps)
                if empty:
                    self._count("skipped", f"{modality}: word steps no row overlaps (zeros)",
                                empty)
                if len(steps) and empty == len(steps):
                    self._count("skipped", f"{modality}: segments no row overlaps at all "
                                "(all zeros)", 1)
        else:
            for modality, (values, intervals) in sequences.items():
                rows[modality] = values[_overlapping(intervals, segment.start, segment.end,
                                                     self._longest[modality])]
        result = {}
        for modality, values in rows.items():
            if len(values) == 0:
                self._count("skipped", f"{modality}: segments with no rows (one zero step)", 1)
                values = np.zeros((1, self.dims[modality]), dtype=np.float32)
            if len(values) > self.seq_len:
                self._count("cleaned", f"{modality}: segments cut to {self.seq_len} steps", 1)
            kept = values[: self.seq_len]
            padded = np.zeros((self.seq_len, values.shape[1]), dtype=np.float32)
            padded[: len(kept)] = kept
            result[modality] = (padded, len(kept))
        return result


def convert_csd(
    labels_path: str | Path,
    feature_paths: dict[str, str | Path],
    output: str | Path,
    *,
    folds: dict[str, list[str]],
    seq_len: int = 50,
    align: str | None = "l",
    allow_missing: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Convert labels + feature ``.csd`` files to our layout (streamed, written atomically)."""
    unknown = [m for m in feature_paths if m not in MODALITIES]
    if unknown or not feature_paths:
        raise UcrnError(f"--features: give modality=FILE for a subset of l, a, v "
                        f"(got {', '.join(unknown) or 'none'})")
    if seq_len < 1:
        raise UcrnError(f"--seq-len {seq_len}: must be at least 1")
    if align is not None and align not in feature_paths:
        raise UcrnError(f"--align {align}: that modality's file is not among --features")
    labels = ComputationalSequence(labels_path, "labels")
    features = {m: ComputationalSequence(feature_paths[m], f"features {m}")
                for m in MODALITIES if m in feature_paths}
    provenance = Provenance("csd", [str(labels_path), *map(str, (feature_paths[m] for m in
                                                                 features))])
    provenance.notes.append(f"aligned to {align}" if align else "modalities at own rates")
    try:
        segments = _segments(labels)
        fold_of = {video: split for split, videos in folds.items() for video in videos}
        not_in_folds = [v for v in segments if v not in fold_of]
        if not_in_folds:
            provenance.skipped["videos not in the folds"] = len(not_in_folds)
        lost = _videos_without_features(segments, fold_of, features, allow_missing,
                                        provenance)
        per_split = {split: [s for video in segments if fold_of.get(video) == split
                             and video not in lost for s in segments[video]]
                     for split in SPLITS}
        empty = [split for split, chosen in per_split.items() if not chosen]
        if empty:
            raise UcrnError(f"split(s) {', '.join(empty)} would be empty: do the folds name "
                            "the videos of these files?")
        converter = _Converter(features, align, seq_len, provenance)
        counts = {split: len(chosen) for split, chosen in per_split.items()}
        _write(output, per_split, converter, list(features), provenance, counts,
               name or Path(labels_path).stem)
    finally:
        labels.close()
        for source in features.values():
            source.close()
    return {"output": str(output), "counts": counts,
            "modalities": [m for m in MODALITIES if m in features], "dims": converter.dims,
            "cleaned": provenance.cleaned, "skipped": provenance.skipped,
            "notes": provenance.notes}


def _videos_without_features(
    segments: dict[str, list[Segment]], fold_of: dict[str, str],
    features: dict[str, ComputationalSequence], allow_missing: bool, provenance: Provenance,
) -> set[str]:
    """The videos of the folds that some feature file lacks: an error, or (with
    ``allow_missing``) left out and counted."""
    missing = {m: [v for v in segments if v in fold_of and v not in source]
               for m, source in features.items()}
    missing = {m: videos for m, videos in missing.items() if videos}
    if not missing:
        return set()
    report = "; ".join(f"{len(v)} missing from {features[m].path} (e.g. {v[0]})"
                       for m, v in missing.items())
    if not allow_missing:
        raise UcrnError(f"videos with labels but no features: {report}; pass "
                        "--allow-missing to convert without them")
    lost = {v for videos in missing.values() for v in videos}
    provenance.skipped["videos without features"] = len(lost)
    provenance.skipped["segments without features"] = sum(len(segments[v]) for v in lost)
    return lost


def _chunks(items: list[Segment]) -> Iterator[tuple[int, list[Segment]]]:
    for start in range(0, len(items), CHUNK):
        yield start, items[start : start + CHUNK]


def _write(output: str | Path, per_split: dict[str, list[Segment]], converter: _Converter,
           modalities: list[str], provenance: Provenance, counts: dict[str, int],
           name: str) -> None:
    dims = converter.feature_sizes(per_split["train"][0].video)
    step_bytes = converter.seq_len * sum(dims.values()) * 4  # one segment, float32
    fix = "give a smaller --seq-len (MOSI's segments have at most about 50 words)"
    check_room(sum(counts.values()) * step_bytes, f"--seq-len {converter.seq_len}", fix,
               folder=Path(output).resolve().parent)
    check_room(2 * CHUNK * step_bytes, f"--seq-len {converter.seq_len}", fix)
    # The provenance is written last, so that it holds every count.
    with create_dataset_file(
        output, name=name, task="regression", modalities=modalities,
        label_names=[SENTIMENT], source="csd",
    ) as writer:
        for split, chosen in per_split.items():
            steps = converter.seq_len
            writer.create_split(split, len(chosen),
                                {m: (steps, converter.dims[m]) for m in modalities}, 1,
                                with_lengths=True)
            for start, chunk in _chunks(chosen):
                converted = [converter.segment(segment) for segment in chunk]
                arrays: dict[str, Any] = {
                    "labels": np.array([s.label for s in chunk], dtype=np.float32),
                    "ids": np.array([s.id for s in chunk], dtype=object),
                }
                for modality in modalities:
                    arrays[modality] = np.stack([c[modality][0] for c in converted])
                    arrays[f"{modality}_len"] = np.array([c[modality][1] for c in converted],
                                                         dtype=np.int32)
                writer.write(split, start, arrays)
        writer.set_attrs(provenance.attrs(counts))

"""Our HDF5 data layout: write it, read it into memory, and validate everything read.

```
/ attrs: format="ucrn", version=1, name, task, modalities, label_names, source
/train, /valid, /test, each:
   l, a, v       float32 [N, T_m, d_m]   (aligned: same T; unaligned: T per modality)
   l_len, ...    int32 [N]               optional valid lengths (padding at the end)
   labels        float32 [N] (sentiment in [-3, 3]) or [N, K] (columns named by label_names)
   ids           utf-8 strings [N]
```
Every mistake in a file is reported as a ``UcrnError`` naming the file, split, key and fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from ucrn import MODALITIES
from ucrn.errors import UcrnError
from ucrn.files import atomic_output
from ucrn.metrics import EMOTIONS

FORMAT, VERSION = "ucrn", 1
SPLITS = ("train", "valid", "test")
FILE_TASKS = ("regression", "classification", "multilabel")  # what a file's labels are
SENTIMENT = "sentiment"
# Valid label ranges by column name: sentiment in [-3, 3], emotion intensities in [0, 3].
LABEL_RANGES = {SENTIMENT: (-3.0, 3.0), **{name: (0.0, 3.0) for name in EMOTIONS}}


@dataclass
class Split:
    """One split held in memory as tensors."""

    features: dict[str, torch.Tensor]  # modality → (N, T_m, d_m) float32
    lengths: dict[str, torch.Tensor | None]  # modality → (N,) int64, None when unpadded
    labels: torch.Tensor  # (N, K) float32, columns named by Dataset.label_names
    ids: list[str]

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.features)

    def to(self, device: torch.device | str) -> Split:
        move = {m: (t.to(device) if t is not None else None) for m, t in self.lengths.items()}
        return Split(
            {m: t.to(device) for m, t in self.features.items()}, move,
            self.labels.to(device), self.ids,
        )


@dataclass
class Dataset:
    """A data file read into memory."""

    name: str
    task: str
    modalities: tuple[str, ...]
    label_names: tuple[str, ...]
    splits: dict[str, Split]
    source: str = ""
    path: str = ""
    attrs: dict = field(default_factory=dict)

    @property
    def input_dims(self) -> dict[str, int]:
        split = next(iter(self.splits.values()))
        return {m: int(t.shape[-1]) for m, t in split.features.items()}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UcrnError(
                f"{self.path}: split {name!r} was not loaded; available: {', '.join(self.splits)}"
            )
        return self.splits[name]


def fingerprint(dataset: Dataset) -> str:
    """A short digest that tells data sets apart: each split's ids, labels and shapes, and
    the features of its first and last sample (cheap: no pass over the features)."""
    digest = hashlib.sha256(json.dumps([dataset.task, list(dataset.label_names)]).encode())
    for name, split in sorted(dataset.splits.items()):
        digest.update(json.dumps([name, split.ids]).encode())
        digest.update(split.labels.numpy().tobytes())
        for modality, features in sorted(split.features.items()):
            digest.update(json.dumps([modality, list(features.shape)]).encode())
            if len(features):
                digest.update(features[[0, -1]].numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------- writing


class DatasetWriter:
    """Writes a data file split by split, in chunks; the file appears only when complete."""

    def __init__(self, file: h5py.File):
        self._file = file

    def create_split(
        self,
        split: str,
        count: int,
        shapes: dict[str, tuple[int, int]],
        label_columns: int,
        with_lengths: bool,
    ) -> None:
        """Make empty datasets for ``count`` samples: ``shapes`` is modality → (T, d)."""
        group = self._file.create_group(split)
        for modality, (steps, dim) in shapes.items():
            group.create_dataset(modality, (count, steps, dim), dtype="float32")
            if with_lengths:
                group.create_dataset(f"{modality}_len", (count,), dtype="int32")
        label_shape = (count,) if label_columns == 1 else (count, label_columns)
        group.create_dataset("labels", label_shape, dtype="float32")
        group.create_dataset("ids", (count,), dtype=h5py.string_dtype("utf-8"))

    def set_attrs(self, attrs: dict) -> None:
        """File attributes; values other than str, int and float are stored as JSON."""
        for key, value in attrs.items():
            plain = isinstance(value, (str, int, float))
            self._file.attrs[key] = value if plain else json.dumps(value)

    def write(self, split: str, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write rows ``start:start + n`` of each array named in ``arrays``."""
        group = self._file[split]
        for key, values in arrays.items():
            group[key][start : start + len(values)] = values


@contextmanager
def create_dataset_file(
    path: str | Path,
    *,
    name: str,
    task: str,
    modalities: Iterable[str],
    label_names: Iterable[str],
    source: str,
    extra_attrs: dict | None = None,
) -> Iterator[DatasetWriter]:
    """Open a writer on a temporary file beside ``path``; rename it into place on success.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    with atomic_output(path) as temporary, h5py.File(temporary, "w") as file:
        writer = DatasetWriter(file)
        writer.set_attrs({
            "format": FORMAT, "version": VERSION, "name": name, "task": task,
            "modalities": list(modalities), "label_names": list(label_names),
            "source": source, **(extra_attrs or {}),
        })
        yield writer


def write_dataset(
    path: str | Path,
    splits: dict[str, dict[str, np.ndarray]],
    *,
    name: str,
    task: str = "regression",
    label_names: Iterable[str] = (SENTIMENT,),
    source: str = "",
    extra_attrs: dict | None = None,
) -> Path:
    """Write whole in-memory splits: ``{split: {"l": …, "l_len": …, "labels": …, "ids": …}}``."""
    modalities = [m for m in MODALITIES if m in next(iter(splits.values()))]
    label_names = list(label_names)
    with create_dataset_file(
        path, name=name, task=task, modalities=modalities, label_names=label_names,
        source=source, extra_attrs=extra_attrs,
    ) as writer:
        for split, arrays in splits.items():
            counts = {key: len(value) for key, value in arrays.items()}
            if len(set(counts.values())) > 1:
                raise UcrnError(f"{path} split {split!r}: arrays differ in length: {counts}")
            writer.create_split(
                split, len(arrays["labels"]),
                {m: arrays[m].shape[1:] for m in modalities},
                label_columns=len(label_names),
                with_lengths=any(f"{m}_len" in arrays for m in modalities),
            )
            writer.write(split, 0, arrays)
    return Path(path)


# ---------------------------------------------------------------------------------- reading


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise UcrnError(
            f"data file {path} does not exist; make one with `ucrn data synth --preset mosi "
            f"-o {path}` or convert real data with `ucrn data convert`"
        )
    if path.is_dir():
        raise UcrnError(f"data file {path} is a directory; give the path of an .h5 file")
    if not h5py.is_hdf5(path):
        raise UcrnError(
            f"data file {path} is not an HDF5 file; give a file written by `ucrn data synth` "
            "or `ucrn data convert`"
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise UcrnError(f"data file {path} cannot be read as HDF5 ({error})") from None


def _json_attr(file: h5py.File, path: Path, key: str) -> list:
    raw = file.attrs.get(key)
    if raw is None:
        raise UcrnError(f"{path}: attribute {key!r} is missing; re-create the file with ucrn")
    try:
        return list(json.loads(raw))
    except (TypeError, ValueError):
        raise UcrnError(f"{path}: attribute {key!r} is not a JSON list ({raw!r})") from None


def read_attrs(path: str | Path) -> dict:
    """The file's root attributes, checked to be ours: format, version, modalities, ..."""
    path = Path(path)
    with _open(path) as file:
        return _checked_attrs(file, path)


def _checked_attrs(file: h5py.File, path: Path) -> dict:
    form = file.attrs.get("format")
    if not isinstance(form, str) or form != FORMAT:
        raise UcrnError(
            f"{path} is an HDF5 file but not in the ucrn layout (format attribute "
            f"{form!r}); convert it with `ucrn data convert`"
        )
    version = file.attrs.get("version", -1)
    if not isinstance(version, (int, np.integer)) or int(version) != VERSION:
        raise UcrnError(
            f"{path}: layout version {file.attrs.get('version')!r} is not supported "
            f"(this ucrn reads version {VERSION}); re-create the file"
        )
    attrs = {key: file.attrs[key] for key in file.attrs}
    attrs["modalities"] = _json_attr(file, path, "modalities")
    attrs["label_names"] = _json_attr(file, path, "label_names")
    if attrs.get("task") not in FILE_TASKS:
        raise UcrnError(
            f"{path}: task {attrs.get('task')!r} is not one of {', '.join(FILE_TASKS)}")
    unknown = [m for m in attrs["modalities"] if m not in MODALITIES]
    if unknown or not attrs["modalities"]:
        raise UcrnError(
            f"{path}: modalities attribute {attrs['modalities']} is not a subset of l,a,v"
        )
    return attrs


def load_dataset(
    path: str | Path,
    splits: Iterable[str] = SPLITS,
    modalities: Iterable[str] | None = None,
) -> Dataset:
    """Read the named splits and modalities of a data file into memory, validating all."""
    path = Path(path)
    with _open(path) as file:
        attrs = _checked_attrs(file, path)
        available = tuple(attrs["modalities"])
        wanted = tuple(modalities) if modalities is not None else available
        missing = [m for m in wanted if m not in available]
        if missing:
            raise UcrnError(
                f"{path}: modality {','.join(missing)} is not in this file (it has "
                f"{','.join(available)}); choose modalities among those"
            )
        label_names = tuple(attrs["label_names"])
        loaded = {
            split: _read_split(file, path, split, wanted, label_names) for split in splits
        }
    _check_consistent_dims(path, loaded)
    return Dataset(
        name=str(attrs.get("name", path.stem)), task=str(attrs["task"]),
        modalities=tuple(m for m in MODALITIES if m in wanted), label_names=label_names,
        splits=loaded, source=str(attrs.get("source", "")), path=str(path), attrs=attrs,
    )


def _read_split(
    file: h5py.File, path: Path, split: str, modalities: tuple[str, ...], label_names: tuple
) -> Split:
    where = f"{path} split {split!r}"
    if split not in file:
        present = [key for key in file if isinstance(file[key], h5py.Group)]
        raise UcrnError(f"{where} is missing (the file has {', '.join(present) or 'no splits'})")
    group = file[split]
    labels = _read_array(group, where, "labels")
    count = labels.shape[0]
    if count == 0:
        raise UcrnError(f"{where} is empty: it has no samples; re-create or re-convert the file")
    labels = labels.reshape(count, -1).astype(np.float32, copy=False)
    if labels.shape[1] != len(label_names):
        raise UcrnError(
            f"{where} key 'labels' has {labels.shape[1]} columns but label_names lists "
            f"{len(label_names)} ({', '.join(label_names)})"
        )
    _check_finite(labels, where, "labels")
    for column, name in enumerate(label_names):
        low, high = LABEL_RANGES.get(name, (-np.inf, np.inf))
        values = labels[:, column]
        bad = (values < low) | (values > high)
        if bad.any():
            raise UcrnError(
                f"{where} key 'labels' column {name!r}: {int(bad.sum())} values outside "
                f"[{low:g}, {high:g}] (e.g. {values[bad][0]:g} at row {int(np.argmax(bad))})"
            )

    features, lengths = {}, {}
    for modality in modalities:
        array = _read_array(group, where, modality)
        if array.ndim != 3:
            raise UcrnError(
                f"{where} key {modality!r} has shape {array.shape}; expected (N, T, d)"
            )
        if array.shape[0] != count:
            raise UcrnError(
                f"{where} key {modality!r} has {array.shape[0]} samples but labels has {count}; "
                "every modality and the labels must have one row per sample"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise UcrnError(f"{where} key {modality!r} has dtype {array.dtype}; expected float32")
        if 0 in array.shape[1:]:
            raise UcrnError(
                f"{where} key {modality!r} has shape {array.shape}: no "
                f"{'time steps' if array.shape[1] == 0 else 'features'}; training needs at "
                "least one of each (re-convert, or leave the modality out)")
        array = array.astype(np.float32, copy=False)
        _check_finite(array, where, modality)
        features[modality] = torch.from_numpy(array)
        lengths[modality] = _read_lengths(group, where, modality, count, array.shape[1])

    ids = _read_ids(group, where, count)
    return Split(features, lengths, torch.from_numpy(labels), ids)


def _read_array(group: h5py.Group, where: str, key: str) -> np.ndarray:
    if key not in group:
        raise UcrnError(f"{where} has no key {key!r}; the file is incomplete or not ours")
    if not isinstance(group[key], h5py.Dataset):
        raise UcrnError(f"{where} key {key!r} is a {type(group[key]).__name__}, not an array; "
                        "the file is not in the ucrn layout")
    array = group[key][()]
    if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.number)
                                                 and array.dtype != np.bool_):
        kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise UcrnError(f"{where} key {key!r} holds {kind} values; expected numbers")
    return array


def _check_finite(array: np.ndarray, where: str, key: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        row = int(np.argwhere(~finite)[0][0])
        raise UcrnError(
            f"{where} key {key!r} has {bad} NaN or infinite values (first in sample {row}); "
            "clean the source data (e.g. replace -inf audio by 0) and re-convert"
        )


def _read_lengths(
    group: h5py.Group, where: str, modality: str, count: int, steps: int
) -> torch.Tensor | None:
    key = f"{modality}_len"
    if key not in group:
        return None
    lengths = group[key][()]
    if lengths.shape != (count,) or not np.issubdtype(lengths.dtype, np.integer):
        raise UcrnError(
            f"{where} key {key!r} has shape {lengths.shape} and dtype {lengths.dtype}; "
            f"expected ({count},) integers"
        )
    if count and (lengths.min() < 1 or lengths.max() > steps):
        raise UcrnError(f"{where} key {key!r} has lengths outside [1, {steps}]")
    return None if (lengths == steps).all() else torch.from_numpy(lengths.astype(np.int64))


def _read_ids(group: h5py.Group, where: str, count: int) -> list[str]:
    if "ids" not in group:
        return [f"{i}" for i in range(count)]
    ids = group["ids"].asstr()[()] if h5py.check_string_dtype(group["ids"].dtype) else None
    if ids is None or len(ids) != count:
        raise UcrnError(f"{where} key 'ids' must hold {count} utf-8 strings")
    return list(ids)


def _check_consistent_dims(path: Path, splits: dict[str, Split]) -> None:
    reference = None
    for name, split in splits.items():
        dims = {m: int(t.shape[-1]) for m, t in split.features.items()}
        if reference is None:
            reference = (name, dims)
        elif dims != reference[1]:
            raise UcrnError(
                f"{path}: feature sizes differ between splits: {reference[0]} has "
                f"{reference[1]}, {name} has {dims}"
            )


def describe(path: str | Path) -> dict:
    """A summary of a data file without loading features: attributes and per-split shapes."""
    path = Path(path)
    with _open(path) as file:
        attrs = _checked_attrs(file, path)
        summary = {"path": str(path), "attrs": attrs, "splits": {}}
        for split in SPLITS:
            if split not in file:
                continue
            group = file[split]
            labels = group["labels"][()].reshape(len(group["labels"]), -1)
            info = {
                "count": int(labels.shape[0]),
                "shapes": {m: tuple(group[m].shape) for m in attrs["modalities"] if m in group},
                "padded": [m for m in attrs["modalities"] if f"{m}_len" in group],
                "labels": {},
            }
            for column, name in enumerate(attrs["label_names"]):
                values = labels[:, column]
                info["labels"][name] = {
                    "mean": float(values.mean()) if values.size else float("nan"),
                    "std": float(values.std()) if values.size else float("nan"),
                    "min": float(values.min()) if values.size else float("nan"),
                    "max": float(values.max()) if values.size else float("nan"),
                    "positive": float((values > 0).mean()) if values.size else float("nan"),
                }
            summary["splits"][split] = info
    return summary

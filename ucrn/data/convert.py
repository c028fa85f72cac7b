"""Converters from the formats people have CMU-MOSI / CMU-MOSEI in, to our HDF5 layout.

- ``mult-pkl``: MulT's ``mosi_data.pkl`` / ``mosei_senti_data.pkl`` (and ``*_noalign.pkl``):
  ``{split: {"text", "audio", "vision": (N, T_m, d_m), "labels": (N, 1, 1), "id": (N, 3)}}``.
  Audio ``-inf`` becomes 0, as MulT does (counted in the provenance).
- ``mmsa-pkl``: MMSA's pickles: ``{split: {"text" | "text_bert", "audio", "vision",
  "regression_labels", "id", ["audio_lengths", "vision_lengths"]}}``.
- ``csd``: CMU-SDK computational sequences (see ``ucrn.data.csd``).

Pickles can run code when loaded: they are read with an unpickler that allows only numpy
arrays and plain containers. Everything read is validated; the output is written to a
temporary file and renamed only when complete (``ucrn.data.layout``).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ucrn import MODALITIES
from ucrn.data.layout import SENTIMENT, SPLITS, create_dataset_file
from ucrn.errors import UcrnError

# The only globals a data pickle may name: numpy's array and scalar reconstruction and
# plain containers. Anything else (os.system, builtins.eval, ...) is refused.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}
SPLIT_NAMES = {"train": "train", "valid": "valid", "dev": "valid", "val": "valid",
               "test": "test"}
# Top-level keys that describe a file rather than hold a split: MMSA-FET, the tool MMSA's
# users extract their own features with, writes its extraction settings as "config".
METADATA_KEYS = ("config", "args", "meta", "metadata")
METADATA_CHARACTERS = 20_000  # kept in the provenance, cut beyond this


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and containers, and nothing that runs code."""

    def __init__(self, file: io.BufferedReader, source: Path):
        super().__init__(file, encoding="latin1")  # Python 2 pickles of numpy arrays
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UcrnError(
            f"{self.source}: refused to load {module}.{name} from this pickle; a data pickle "
            "may hold only numpy arrays and plain containers (a pickle can run code when "
            "loaded, so anything else is treated as unsafe)"
        )


def load_pickle(path: Path) -> Any:
    """A pickle file read with ``RestrictedUnpickler``; clear errors for broken files."""
    if not path.is_file():
        raise UcrnError(f"{path} does not exist")
    try:
        with path.open("rb") as file:
            return RestrictedUnpickler(file, path).load()
    except UcrnError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as error:
        raise UcrnError(f"{path} is not a readable pickle ({type(error).__name__}: "
                        f"{error}); is the file complete?") from None


@dataclass
class SourceSplit:
    """One split as read from a source, before writing."""

    features: dict[str, np.ndarray]  # modality → (N, T_m, d_m) float32
    lengths: dict[str, np.ndarray]  # modality → (N,) int, only where the source has them
    labels: np.ndarray  # (N,) sentiment
    ids: list[str]


@dataclass
class Provenance:
    """Where a converted file came from and what was done to it (stored as attributes)."""

    source_format: str
    files: list[str]
    cleaned: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # the source's own, as JSON

    def attrs(self, counts: dict[str, int]) -> dict[str, Any]:
        return {
            "source_metadata": json.dumps(self.metadata),
            "source_format": self.source_format,
            "source_files": json.dumps([{"path": f, "sha256": _sha256(Path(f))}
                                        for f in self.files]),
            "counts": json.dumps(counts), "cleaned": json.dumps(self.cleaned),
            "skipped": json.dumps(self.skipped), "notes": json.dumps(self.notes),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------- checks


def _array(where: str, key: str, value: Any, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise UcrnError(f"{where} key {key!r} is a {type(value).__name__}, not an array")
    if value.ndim != ndim:
        raise UcrnError(f"{where} key {key!r} has shape {value.shape}; expected {ndim} axes")
    return value


def _features(where: str, key: str, value: Any, count: int | None) -> np.ndarray:
    array = _array(where, key, value, 3)
    if not np.issubdtype(array.dtype, np.number):
        raise UcrnError(f"{where} key {key!r} has dtype {array.dtype}; expected numbers")
    if count is not None and array.shape[0] != count:
        raise UcrnError(f"{where} key {key!r} has {array.shape[0]} samples but the labels "
                        f"have {count}")
    if 0 in array.shape[1:]:
        raise UcrnError(f"{where} key {key!r} has shape {array.shape}: no "
                        f"{'time steps' if array.shape[1] == 0 else 'features'}; a modality "
                        "needs at least one of each (leave the modality out instead)")
    return array


def _labels(where: str, key: str, value: Any) -> np.ndarray:
    labels = _array(where, key, value, np.ndim(value))
    if not np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_:
        raise UcrnError(f"{where} key {key!r} holds {labels.dtype} values; expected numbers "
                        "(sentiment scores in [-3, 3])")
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size and labels.reshape(len(labels), -1).shape[1] != 1:
        raise UcrnError(f"{where} key {key!r} has shape {labels.shape}; expected one "
                        "sentiment score per sample")
    labels = labels.reshape(-1)
    if not np.isfinite(labels).all():
        raise UcrnError(f"{where} key {key!r} has {int((~np.isfinite(labels)).sum())} NaN "
                        "or infinite labels")
    outside = (labels < -3) | (labels > 3)
    if outside.any():
        raise UcrnError(f"{where} key {key!r}: {int(outside.sum())} labels outside [-3, 3] "
                        f"(e.g. {labels[outside][0]:g})")
    return labels.astype(np.float32)


def _ids(where: str, value: Any, count: int) -> list[str]:
    if value is None:
        return [f"{i}" for i in range(count)]
    rows = np.asarray(value)
    if len(rows) != count:
        raise UcrnError(f"{where} key 'id' has {len(rows)} entries but there are {count} "
                        "samples")

    def text(item: Any) -> str:
        return item.decode("utf-8") if isinstance(item, bytes) else str(item)

    if rows.ndim == 1:
        return [text(item) for item in rows]
    # MulT: (video, start, end) or (video, clip, ...): video[rest]
    return [f"{text(row[0])}[{','.join(text(item) for item in row[1:])}]" for row in rows]


def _clean_features(where: str, modality: str, array: np.ndarray,
                    provenance: Provenance, neg_inf_to_zero: bool) -> np.ndarray:
    """float32, with -inf → 0 where the source format says so; other NaN/inf refused."""
    array = np.asarray(array, dtype=np.float32)
    if neg_inf_to_zero:
        negative = np.isneginf(array)
        count = int(negative.sum())
        if count:
            array = array.copy() if not array.flags.writeable else array
            array[negative] = 0.0
            key = f"{modality}: -inf → 0"
            provenance.cleaned[key] = provenance.cleaned.get(key, 0) + count
    bad = ~np.isfinite(array)
    if bad.any():
        raise UcrnError(f"{where} key for modality {modality!r} has {int(bad.sum())} NaN or "
                        "infinite values; clean the source data first")
    return array


def _split_name(where: Path, name: str) -> str:
    if name not in SPLIT_NAMES:
        raise UcrnError(f"{where}: unknown split {name!r}; expected train, valid and test")
    return SPLIT_NAMES[name]


def _metadata_text(value: Any) -> str:
    """A metadata value as JSON (arrays as lists), cut to ``METADATA_CHARACTERS``."""
    def plain(item: Any) -> Any:
        return item.tolist() if isinstance(item, (np.ndarray, np.generic)) else str(item)

    return json.dumps(value, default=plain)[:METADATA_CHARACTERS]


def _check_splits(path: Path, data: Any, provenance: Provenance) -> dict[str, dict]:
    """The splits of a pickle; its known metadata keys go to the provenance, said in a note."""
    if not isinstance(data, dict):
        raise UcrnError(f"{path}: expected a dict of splits, found a {type(data).__name__}")
    for key in [k for k in data if str(k) in METADATA_KEYS]:
        provenance.metadata[str(key)] = _metadata_text(data[key])
        provenance.notes.append(f"top-level {str(key)!r} is the file's metadata, not a split: "
                                "kept in the provenance (ucrn data inspect shows it)")
    data = {name: content for name, content in data.items() if str(name) not in METADATA_KEYS}
    splits = {_split_name(path, str(name)): content for name, content in data.items()}
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise UcrnError(f"{path}: split(s) {', '.join(missing)} missing; found "
                        f"{', '.join(map(str, data))}")
    for name, content in splits.items():
        if not isinstance(content, dict):
            raise UcrnError(f"{path} split {name!r} is a {type(content).__name__}, not a dict")
    return splits


# ----------------------------------------------------------------------------- readers


def _present_modalities(
    where: str, split: str, content: dict, keys: dict[str, str], found: dict[str, Any]
) -> dict[str, str]:
    """The modalities (→ their keys) that ``split`` carries: any non-empty subset, the same
    in every split. ``found`` remembers the first split's, to compare the others with."""
    present = {m: key for m, key in keys.items() if key in content}
    if not present:
        raise UcrnError(f"{where} has none of the feature keys {', '.join(keys.values())}")
    if "modalities" not in found:
        found.update(modalities=tuple(present), split=split)
    elif tuple(present) != found["modalities"]:
        first = [keys[m] for m in found["modalities"]]
        lacking = sorted(set(first) ^ set(present.values()))
        raise UcrnError(
            f"{where} has feature keys {', '.join(present.values())} but split "
            f"{found['split']!r} has {', '.join(first)} (no key {lacking[0]!r} in one of "
            "them); every split must carry the same modalities"
        )
    return present


def _split_labels(path: Path, name: str, content: dict, label_keys: tuple[str, ...],
                  format_name: str) -> tuple[str, np.ndarray]:
    """Where a split is (for messages) and its labels: the first of ``label_keys`` found."""
    where = f"{path} split {name!r}"
    label_key = next((key for key in label_keys if key in content), None)
    if label_key is None:
        raise UcrnError(f"{where} has no key {label_keys[0]!r}; is this {format_name} pickle?")
    labels = _labels(where, label_key, content[label_key])
    if not len(labels):
        raise UcrnError(f"{where} is empty")
    return where, labels


@dataclass(frozen=True)
class PickleFormat:
    """What tells one pickle format's splits apart: its name, where its labels are and
    which key holds its language features."""

    name: str                     # the provenance's source format
    label_keys: tuple[str, ...]   # the first one found holds the labels
    described_as: str             # "is this {described_as} pickle?"


PICKLE_FORMATS = {
    "mult-pkl": PickleFormat("mult-pkl", ("labels",), "a MulT"),
    "mmsa-pkl": PickleFormat("mmsa-pkl", ("regression_labels", "labels"), "an MMSA"),
}


def _feature_keys(content: dict) -> dict[str, str]:
    """Modality → key; MMSA files may hold BERT features as 'text_bert' instead of 'text'."""
    text_key = "text_bert" if "text_bert" in content and "text" not in content else "text"
    return {"l": text_key, "a": "audio", "v": "vision"}


def _sample_lengths(where: str, content: dict, key: str, modality: str, steps: int,
                    samples: int, provenance: Provenance) -> np.ndarray | None:
    """MMSA's per-sample lengths of one modality (``{key}_lengths``), clipped to [1, T_m];
    None when the file has none (MulT's never do: its sequences are full length)."""
    length_key = f"{key}_lengths"
    if length_key not in content:
        return None
    raw = np.asarray(content[length_key]).reshape(-1)
    if len(raw) != samples:
        raise UcrnError(f"{where} key {length_key!r} has {len(raw)} entries for {samples} "
                        "samples")
    clipped = np.clip(raw.astype(np.int64), 1, steps)
    changed = int((clipped != raw).sum())
    if changed:
        provenance.cleaned[f"{modality}: lengths clipped to [1, {steps}]"] = changed
    return clipped.astype(np.int32)


def read_split_pickle(path: Path, form: PickleFormat) -> tuple[dict[str, SourceSplit],
                                                                Provenance]:
    """A MulT or MMSA pickle → splits. Unaligned sequences keep their own lengths T_m;
    MMSA's per-sample audio/vision lengths are kept when present."""
    provenance = Provenance(form.name, [str(path)])
    splits: dict[str, SourceSplit] = {}
    found: dict[str, Any] = {}
    for name, content in _check_splits(path, load_pickle(path), provenance).items():
        where, labels = _split_labels(path, name, content, form.label_keys, form.described_as)
        features, lengths = {}, {}
        present = _present_modalities(where, name, content, _feature_keys(content), found)
        for modality, key in present.items():
            array = _features(where, key, content[key], len(labels))
            if key == "text_bert" and array.shape[1] == 3:
                raise UcrnError(
                    f"{where} key 'text_bert' has shape {array.shape}: BERT token ids, "
                    "attention mask and segment ids, not feature vectors; UCRN needs "
                    "features — use MMSA's file with 'text' (feature vectors) instead"
                )
            features[modality] = _clean_features(where, modality, array, provenance,
                                                 neg_inf_to_zero=modality == "a")
            sample_lengths = _sample_lengths(where, content, key, modality, array.shape[1],
                                             len(labels), provenance)
            if sample_lengths is not None:
                lengths[modality] = sample_lengths
        splits[name] = SourceSplit(features, lengths, labels, _ids(where, content.get("id"),
                                                                   len(labels)))
    return splits, provenance


# ----------------------------------------------------------------------------- writing


def write_converted(
    splits: dict[str, SourceSplit], provenance: Provenance, output: Path, name: str
) -> dict[str, Any]:
    """Write converted splits to ``output`` (atomically); return a summary."""
    modalities = [m for m in MODALITIES if m in next(iter(splits.values())).features]
    dims: dict[str, tuple[int, str]] = {}
    for split_name, split in splits.items():
        for modality in modalities:
            dim = split.features[modality].shape[2]
            first_dim, first_split = dims.setdefault(modality, (dim, split_name))
            if dim != first_dim:
                raise UcrnError(f"modality {modality} has {first_dim} features in split "
                                f"{first_split!r} but {dim} in {split_name!r}")
    counts = {s: len(split.labels) for s, split in splits.items()}
    with create_dataset_file(
        output, name=name, task="regression", modalities=modalities, label_names=[SENTIMENT],
        source=provenance.source_format, extra_attrs=provenance.attrs(counts),
    ) as writer:
        for split_name in SPLITS:
            split = splits[split_name]
            shapes = {m: split.features[m].shape[1:] for m in modalities}
            writer.create_split(split_name, counts[split_name], shapes, 1,
                                with_lengths=bool(split.lengths))
            arrays: dict[str, Any] = {**split.features, "labels": split.labels,
                                      "ids": np.array(split.ids, dtype=object)}
            for modality in modalities:
                if split.lengths:
                    steps = split.features[modality].shape[1]
                    arrays[f"{modality}_len"] = split.lengths.get(
                        modality, np.full(counts[split_name], steps, dtype=np.int32))
            writer.write(split_name, 0, arrays)
    return {"output": str(output), "counts": counts, "modalities": modalities,
            "dims": {m: dim for m, (dim, _) in dims.items()},
            "cleaned": provenance.cleaned, "skipped": provenance.skipped,
            "notes": provenance.notes}


def convert_pickle(kind: str, path: str | Path, output: str | Path,
                   name: str | None = None) -> dict[str, Any]:
    """Convert a MulT or MMSA pickle to our layout at ``output``."""
    path, output = Path(path), Path(output)
    splits, provenance = read_split_pickle(path, PICKLE_FORMATS[kind])
    return write_converted(splits, provenance, output, name or path.stem)


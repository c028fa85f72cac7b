"""The one configuration object: model settings and training settings, defaults from the paper.

Paper §4.2: URM and CRM have 5 layers and 3 heads; batch size 16 and learning rate 1e-3 on
MOSI (32 and 2e-3 on MOSEI); λm = λc = 1 (§3.5). Settings the paper leaves open are ours
and are documented in DESIGN.md (width 30, FFN 4×, 2 SQIL layers, sinusoidal positions).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ucrn import MODALITIES
from ucrn.errors import UcrnError

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds alike: 0 to this

# The tasks' names; ``ucrn.tasks`` holds what each one is (it needs torch, the config not).
TASK_NAMES = ("regression", "binary", "seven_class", "emotions")

# How the model standardises its inputs with train-split statistics (ucrn.data.batches).
STANDARDISE = ("modality", "feature", "off")
STATIC_SHAPES = ("auto", "true", "false")  # TrainConfig.static_shapes


# Upper bounds far above any sensible setting, so that a typo fails at once instead of
# building a model that never finishes.
MAX_WIDTH, MAX_LAYERS, MAX_INPUT_DIM, MAX_COUNT = 4096, 64, 1_000_000, 1_000_000


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UcrnError(f"{name}={value}: must be between {low} and {high:,}")


@dataclass
class ModelConfig:
    """The UCRN architecture (paper §3)."""

    modalities: tuple[str, ...] = MODALITIES
    input_dims: dict[str, int] = field(default_factory=lambda: {"l": 300, "a": 5, "v": 20})
    width: int = 30  # d: every modality is projected to this width before the URM
    heads: int = 3
    urm_layers: int = 5
    crm_layers: int = 5
    sqil_layers: int = 2
    ffn_multiplier: int = 4  # FC2's width is ffn_multiplier × d (eq. 5)
    dropout: float = 0.1
    attention_dropout: float = 0.0
    task: str = "regression"
    standardise: str = "modality"  # inputs: centred per feature, scaled per modality
    use_urm: bool = True  # ablation: False keeps the projection only
    use_sqil: bool = True
    use_crm: bool = True  # ablation: False fuses by the mean of the modality tokens

    def validate(self) -> None:
        """Raise ``UcrnError`` for settings that cannot build a model."""
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise UcrnError(
                f"modalities {','.join(self.modalities) or '(none)'}: give a non-empty subset "
                "of l (language), a (audio), v (vision), each once"
            )
        missing = [m for m in self.modalities if m not in self.input_dims]
        if missing:
            raise UcrnError(f"input_dims lacks modality {','.join(missing)}")
        for modality, size in self.input_dims.items():
            _check_range(f"input_dims[{modality}]", size, 1, MAX_INPUT_DIM)
        for name, low, high in (("width", 1, MAX_WIDTH), ("heads", 1, MAX_WIDTH),
                                ("urm_layers", 1, MAX_LAYERS), ("crm_layers", 1, MAX_LAYERS),
                                ("ffn_multiplier", 1, 64), ("sqil_layers", 0, MAX_LAYERS)):
            _check_range(name, getattr(self, name), low, high)
        if self.width % self.heads:
            raise UcrnError(
                f"heads={self.heads} does not divide width={self.width}: each head takes an "
                f"equal slice of the width (paper eq. 3); pick a width that is a multiple of "
                f"{self.heads}, e.g. {self.heads * max(1, round(self.width / self.heads))}"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UcrnError(f"{name}={getattr(self, name)}: must be in [0, 1)")
        if self.task not in TASK_NAMES:
            raise UcrnError(f"task={self.task!r}: choose one of {', '.join(TASK_NAMES)}")
        if self.standardise not in STANDARDISE:
            raise UcrnError(
                f"standardise={self.standardise!r}: choose one of {', '.join(STANDARDISE)}"
            )


@dataclass
class TrainConfig:
    """How one model is trained (paper §3.5, §4.2)."""

    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 0.8  # max gradient norm; 0 turns clipping off
    lambda_m: float = 1.0  # weight of the Jensen–Shannon regulariser L_M (eq. 13)
    lambda_m_warmup: int = 3  # epochs over which λm ramps up: λm·e/(warmup + 1) in epoch e
    lambda_c: float = 1.0  # weight of the task loss L_C (eq. 13)
    modality_dropout: float = 0.0  # chance that a batch trains on a random proper subset
    patience: int = 10  # epochs without a better validation score before stopping
    select_metric: str = "auto"  # validation metric that picks the checkpoint
    score_robust: bool = False  # also score valid with one modality masked at a time (robust_*)
    eval_batch_size: int = 256
    seed: int = 0
    # Fixed shapes and no host syncs in a training step: "auto" (on for CUDA, where a step
    # is bound by launching kernels), "true" or "false"; the results are the same.
    static_shapes: str = "auto"
    # On CUDA, with the static step in one process: each step as one CUDA graph, replayed.
    cuda_graph: bool = True

    def validate(self) -> None:
        """Raise ``UcrnError`` for settings that cannot train."""
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            _check_range(name, getattr(self, name), 1, MAX_COUNT)
        _check_range("lambda_m_warmup", self.lambda_m_warmup, 0, MAX_COUNT)
        _check_range("seed", self.seed, 0, MAX_SEED)
        for name in ("learning_rate", "weight_decay", "grad_clip", "lambda_m", "lambda_c"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UcrnError(f"{name}={value}: must be a finite number ≥ 0")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise UcrnError(f"modality_dropout={self.modality_dropout}: must be in [0, 1]")
        if self.learning_rate == 0:
            raise UcrnError("learning_rate=0: must be positive")
        if self.static_shapes not in STATIC_SHAPES:
            raise UcrnError(f"static_shapes={self.static_shapes!r}: choose one of "
                            f"{', '.join(STATIC_SHAPES)}")


@dataclass
class Config:
    """Model and training settings together: what ``ucrn train`` and a search trial take."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"]["modalities"] = list(self.model.modalities)
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# Table 6 of the paper: each ablation is a set of overrides.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_urm": {"use_urm": False},
    "no_sqil": {"use_sqil": False},
    "no_mjs": {"lambda_m": 0.0},
    "no_crm": {"use_crm": False},
}


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


MODEL_KEYS = _fields(ModelConfig)
TRAIN_KEYS = _fields(TrainConfig)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Turn ``value`` (a JSON value or a command-line string) into the type of ``key``."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is tuple:
            return parse_modalities(value) if key == "modalities" else tuple(value)
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError, OverflowError, json.JSONDecodeError):
        pass
    name = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
    raise UcrnError(f"{key}={value!r}: expected a value of type {name}")


def parse_modalities(value: str | list | tuple) -> tuple[str, ...]:
    """``"l,a,v"``, ``"lav"`` or ``["l", "a"]`` → ``("l", "a", "v")`` in canonical order."""
    letters = value.replace(",", "").replace(" ", "") if isinstance(value, str) else value
    letters = list(letters)
    unknown = [m for m in letters if m not in MODALITIES]
    if unknown or not letters or len(set(letters)) != len(letters):
        shown = ",".join(map(str, letters)) or "(none)"
        raise UcrnError(
            f"modalities {shown}: give a non-empty subset of l (language), a (audio), "
            "v (vision), each once, e.g. l,a,v"
        )
    return tuple(m for m in MODALITIES if m in letters)


def _unknown_key(key: str) -> UcrnError:
    choices = sorted({*MODEL_KEYS, *TRAIN_KEYS})
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f"; known keys: {', '.join(choices)}"
    return UcrnError(f"unknown setting {key!r}{hint}")


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``config`` with flat ``{key: value}`` overrides applied and validated.

    Keys are field names of ``ModelConfig`` or ``TrainConfig`` (they share none), optionally
    prefixed ``model.`` / ``train.``.
    """
    model = dataclasses.asdict(config.model)
    train = dataclasses.asdict(config.train)
    for raw_key, value in overrides.items():
        key = raw_key.split(".", 1)[1] if raw_key.startswith(("model.", "train.")) else raw_key
        if key in MODEL_KEYS:
            model[key] = _coerce(key, value, MODEL_KEYS[key])
        elif key in TRAIN_KEYS:
            train[key] = _coerce(key, value, TRAIN_KEYS[key])
        else:
            raise _unknown_key(raw_key)
    return Config(ModelConfig(**model), TrainConfig(**train)).validate()


def parse_set_options(pairs: list[str]) -> dict[str, str]:
    """``["lr=1e-3", ...]`` from ``--set`` → ``{"lr": "1e-3"}``."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UcrnError(f"--set {pair!r}: write key=value, e.g. --set learning_rate=5e-4")
        overrides[key.strip()] = value.strip()
    return overrides


def config_from_options(
    config_file: str | None, set_pairs: list[str] | None, **options: Any
) -> tuple[Config, bool]:
    """The config a command was given — ``--config`` (else the paper's defaults), then
    ``--set``, then the command's own options (``None``: not given) — and whether the user
    chose the modalities (``--modalities``, a ``--config`` that names them, as a search's
    best.json does, or ``--set [model.]modalities``). Every entry point (``ucrn train``, the
    search, the evaluator) builds its config here."""
    overrides: dict[str, Any] = parse_set_options(set_pairs or [])
    data = _read_config_file(config_file) if config_file else {}
    model = data.get("model") if isinstance(data, dict) else None
    named = isinstance(data, dict) and (
        "modalities" in data or isinstance(model, dict) and "modalities" in model)
    chosen = named or options.get("modalities") is not None or any(
        key.rsplit(".", 1)[-1] == "modalities" for key in overrides)
    overrides.update({key: value for key, value in options.items() if value is not None})
    base = _config_of_file(config_file, data) if config_file else Config()
    return apply_overrides(base, overrides), chosen


def default_modalities(config: Config, data_modalities: list[str], chosen: bool) -> Config:
    """``config`` with the data's modalities when nobody chose them (a language-only file
    then trains a language-only model instead of failing on the missing audio)."""
    if chosen or tuple(config.model.modalities) == parse_modalities(list(data_modalities)):
        return config
    return apply_overrides(config, {"modalities": list(data_modalities)})


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated ``Config`` from ``{"model": {...}, "train": {...}}`` or one flat dict.

    Keys this library does not know are refused, so a typo never passes silently; a search's
    ``best.json`` may carry other top-level records under ``"search"`` or ``"metrics"``.
    """
    if not isinstance(data, dict):
        raise UcrnError("a config must be a JSON object")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in ("search", "metrics"):
            continue
        else:
            flat[key] = value
    return apply_overrides(Config(), flat)


def load_config(path: str | Path) -> Config:
    """Read a config JSON file (``config.json`` of a run, ``best.json`` of a search)."""
    return _config_of_file(path, _read_config_file(path))


def _read_config_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UcrnError(f"config file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UcrnError(f"config file {path} is not valid JSON: {error}") from None


def _config_of_file(path: str | Path, data: Any) -> Config:
    try:
        return config_from_dict(data)
    except UcrnError as error:
        raise UcrnError(f"config file {path}: {error}") from None


"""The search space: what Optuna tries, on one screen, and how a file overrides it.

Each entry is ``{"loguniform" | "uniform": [low, high]}``, ``{"int": [low, high]}`` (both
ends included) or ``{"int": [low, high, step]}`` (low, low + step, …, high), ``{"choice":
[...]}``, or a plain value that fixes the setting. Keys are ``ucrn.config`` settings, plus
``head_width``: the width is searched as heads × head_width, so the heads always divide it
(paper eq. 3).

Head widths are searched in steps of 4: in float32 on recent GPUs (compute capability 8 and
later, the H100 and H200 among them) PyTorch's memory-efficient attention kernel takes only
head widths that are multiples of 4, and every other width falls back to the plain
attention of several kernels. The paper's trial keeps its head width of 10 (width 30, 3
heads): a searched value may lie between a stepped range's points, while the search itself
proposes only the points.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ucrn.config import MODEL_KEYS, TRAIN_KEYS, Config, apply_overrides
from ucrn.errors import UcrnError

DEFAULT_SPACE: dict[str, Any] = {
    "lambda_m":      {"loguniform": [0.01, 10.0]},   # weight of L_M, the JS regulariser
    "lambda_c":      {"uniform": [0.5, 2.0]},        # weight of L_C, the task loss
    "urm_layers":    {"int": [1, 5]},
    "crm_layers":    {"int": [1, 5]},
    "heads":         {"choice": [2, 3, 4]},
    "head_width":    {"int": [8, 16, 4]},             # 8, 12 or 16; width = heads × it
    "sqil_layers":   {"int": [0, 3]},
    "learning_rate": {"loguniform": [5e-4, 3e-3]},
    "batch_size":    {"choice": [16, 32, 64]},
    "dropout":       {"uniform": [0.0, 0.3]},
}

# The published setting (paper §3.5 and §4.2): URM and CRM of 5 layers and 3 heads, λm and
# λc "set to 1" (searched around it here), learning rate 1e-3 (MOSI) or 2e-3 (MOSEI) with
# batch 16 or 32; the rest stays at the config's defaults (width 30, so 3 heads of 10).
PAPER_SPACE: dict[str, Any] = {
    "lambda_m":      {"loguniform": [0.5, 2.0]},
    "lambda_c":      {"loguniform": [0.5, 2.0]},
    "urm_layers":    5,
    "crm_layers":    5,
    "heads":         3,
    "learning_rate": {"choice": [1e-3, 2e-3]},
    "batch_size":    {"choice": [16, 32]},
}
PRESETS = {"default": DEFAULT_SPACE, "paper": PAPER_SPACE}  # --space NAME

KINDS = ("uniform", "loguniform", "int", "choice")
DERIVED = {"width": "head_width"}  # searched through another key
# Settings the search itself owns; a space that sets them would fight the command line.
RESERVED = ("epochs", "seed", "select_metric", "modalities", "input_dims", "task")


def load_space(
    path: str | Path | None, base: Config | None = None, fixed: Iterable[str] = ()
) -> dict[str, Any]:
    """The default space, with the entries of a JSON or YAML file laid over it; or a preset
    by name (``default``, ``paper``).

    In the file, a plain value fixes a setting and ``null`` takes it out of the search.
    Settings named in ``fixed`` (the command line's ``--set``) leave the space; every value
    the space can produce is checked against ``base``.
    """
    space = dict(DEFAULT_SPACE)
    fixed = {key.split(".", 1)[-1] for key in fixed}
    if path is None or str(path) in PRESETS:
        space = dict(PRESETS[str(path or "default")])
        return check_space(_without(space, fixed), base)
    path = Path(path)
    if not path.is_file():
        raise UcrnError(f"--space {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            overrides = yaml.safe_load(text)
        else:
            overrides = json.loads(text)
    except Exception as error:  # noqa: BLE001 - JSON and YAML raise different errors
        reason = " ".join(str(error).split())  # YAML's messages run over several lines
        raise UcrnError(f"--space {path} cannot be parsed: {reason}") from None
    if not isinstance(overrides, dict):
        raise UcrnError(f"--space {path} must hold a mapping of setting → range")
    for key, value in overrides.items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    try:
        return check_space(_without(space, fixed), base)
    except UcrnError as error:
        raise UcrnError(f"--space {path}: {error}") from None


def _without(space: dict[str, Any], fixed: set[str]) -> dict[str, Any]:
    """The space less the settings fixed elsewhere; a fixed width also fixes head_width."""
    removed = set(fixed) | ({"head_width"} if "width" in fixed else set())
    return {key: entry for key, entry in space.items() if key not in removed}


def _kind(key: str, entry: Any) -> tuple[str, Any] | None:
    """(kind, arguments) of a searched entry, None for a fixed value."""
    if not isinstance(entry, dict):
        return None
    if len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise UcrnError(f"{key}: write one of {', '.join(KINDS)} with its range, e.g. "
                        '{"uniform": [0.0, 0.3]}, or a plain value')
    kind, arguments = next(iter(entry.items()))
    return kind, arguments


def _values_to_check(key: str, entry: Any) -> list[Any]:
    kind_and_args = _kind(key, entry)
    if kind_and_args is None:
        return [entry]
    kind, arguments = kind_and_args
    if kind == "choice":
        if not isinstance(arguments, list) or not arguments:
            raise UcrnError(f"{key}: choice needs a non-empty list")
        return arguments
    stepped = kind == "int" and isinstance(arguments, list) and len(arguments) == 3
    if not (isinstance(arguments, list) and len(arguments) == 2 + stepped
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arguments)):
        shape = "[low, high] or [low, high, step]" if kind == "int" else "[low, high]"
        raise UcrnError(f"{key}: {kind} needs {shape} numbers, got {arguments!r}")
    low, high = arguments[:2]
    if stepped:
        step = arguments[2]
        if not (float(step).is_integer() and step > 0 and (high - low) % step == 0):
            raise UcrnError(f"{key}: int [{low}, {high}, {step}]: the step must be a whole "
                            f"number above 0 that leads from low to high")
    if not low < high:
        raise UcrnError(f"{key}: {kind} range [{low}, {high}] is empty; low must be < high")
    if kind == "loguniform" and low <= 0:
        raise UcrnError(f"{key}: loguniform needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UcrnError(f"{key}: int needs whole numbers, got [{low}, {high}]")
    return [low, high]


def check_space(space: dict[str, Any], base: Config | None = None) -> dict[str, Any]:
    """Raise ``UcrnError`` unless every value the space can produce is a valid config."""
    for key in space:
        if key in DERIVED:
            raise UcrnError(
                f"{key} is not searched directly: search {DERIVED[key]} (the width is "
                f"heads × {DERIVED[key]}, so the heads always divide it)"
            )
        if key in RESERVED:
            raise UcrnError(f"{key} is set by the search's own options, not by the space "
                            f"(fix it for every trial with --set {key}=...)")
        if key != "head_width" and key not in MODEL_KEYS and key not in TRAIN_KEYS:
            raise UcrnError(f"unknown setting {key!r} in the search space")
    base = base or Config()
    values = {key: _values_to_check(key, entry) for key, entry in space.items()}
    first = {key: options[0] for key, options in values.items()}
    for key, options in values.items():
        for value in options:
            if key == "head_width" and (not isinstance(value, int) or value < 1):
                raise UcrnError(f"head_width: {value!r} is not a positive whole number")
            try:  # this value with the first value of every other setting
                apply_overrides(base, trial_overrides({**first, key: value}, base))
            except UcrnError as error:
                raise UcrnError(f"{key}={value!r} is impossible: {error}") from None
    return space


def _build(space: dict[str, Any], makers: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Each searched entry of ``space`` made by ``makers[kind](arguments)``; fixed ones kept."""
    built: dict[str, Any] = {}
    for key, entry in space.items():
        kind_and_args = _kind(key, entry)
        built[key] = entry if kind_and_args is None else makers[kind_and_args[0]](
            kind_and_args[1])
    return built


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """The space as Ray Tune domains (which OptunaSearch turns into Optuna distributions)."""
    from ray import tune

    return _build(space, {
        "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "int": lambda a: (tune.qrandint(int(a[0]), int(a[1]), int(a[2])) if len(a) == 3
                          else tune.randint(int(a[0]), int(a[1]) + 1)),  # both ends included
    })


def draw(space: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One configuration drawn at random from ``space`` (as a trial's sampled values)."""
    return _build(space, {
        "choice": rng.choice, "uniform": lambda a: rng.uniform(*a),
        "loguniform": lambda a: math.exp(rng.uniform(math.log(a[0]), math.log(a[1]))),
        "int": lambda a: rng.choice(range(int(a[0]), int(a[1]) + 1, int((a[2:] or [1])[0]))),
    })


def trial_overrides(trial_config: dict[str, Any], base: Config) -> dict[str, Any]:
    """A trial's sampled values as ``ucrn`` overrides: head_width becomes the width."""
    overrides = {k: v for k, v in trial_config.items() if k != "head_width"}
    if "head_width" in trial_config:
        heads, head_width = overrides.get("heads", base.model.heads), trial_config["head_width"]
        for key, value in (("heads", heads), ("head_width", head_width)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise UcrnError(f"{key}={value!r}: give a whole number")
        overrides["width"] = heads * head_width
    return overrides


def _setting(base: Config, key: str) -> Any:
    """``base``'s value of a space key (head_width: its width over its heads)."""
    if key == "head_width":
        return base.model.width // base.model.heads
    return getattr(base.model if key in MODEL_KEYS else base.train, key)


def _holds(entry: Any, value: Any) -> bool:
    """Whether the searched ``entry`` can produce ``value``."""
    kind, arguments = next(iter(entry.items()))
    if kind == "choice":
        return value in arguments
    low, high = arguments[:2]
    if kind == "int" and not float(value).is_integer():
        return False
    return low <= value <= high  # between a stepped range's points too (see the top)


def at_point(config: dict[str, Any] | None, point: dict[str, Any] | None) -> bool:
    """Whether a trial's ``config`` holds every value of ``point`` (the paper's trial is the
    one at ``base_point``); never for no point."""
    return bool(point) and all((config or {}).get(key) == value for key, value in point.items())


RERUN_KEY = "rerun"  # in a trial's config: the trial trains a finalist again (tuning.finalists)


def is_rerun(config: dict[str, Any] | None) -> bool:
    """Whether a trial of the search trains a finalist again from another seed, rather than
    trying a point of the space: the scheduler, the study and trials.csv leave it out."""
    return RERUN_KEY in (config or {})


def base_point(space: dict[str, Any], base: Config) -> tuple[dict[str, Any] | None, list[str]]:
    """The base config (the paper's defaults, with --config/--set laid over them) as one
    point of the space: every searched key at the base's value. None, with the keys whose
    value lies outside their range, when the space cannot produce it."""
    point, outside = {}, []
    for key, entry in space.items():
        if not isinstance(entry, dict):
            continue
        value = _setting(base, key)
        if _holds(entry, value):
            point[key] = value
        else:
            outside.append(f"{key}={value!r}")
    return (None if outside else point), outside

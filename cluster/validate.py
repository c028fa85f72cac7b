"""Offline validation of Ray cluster-launcher configs, with Ray's own schema and defaults.

Ray 2.60's ``ray.autoscaler._private.util.prepare_config`` (fills in the provider's
defaults, no cloud call) followed by ``validate_config`` (the JSON schema and the checks of
``ray up``) is what ``ray up`` runs before it touches a cloud. That API is private; it is
wrapped here, in one place, with a clear failure if a Ray upgrade moves it.

    python cluster/validate.py cluster.yaml cluster/local.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT_SETUP_MARKER = "pip install -e"  # the project's own setup command


class ClusterConfigError(Exception):
    """A cluster config that ``ray up`` would refuse, or that would run the wrong setup."""


def _ray_validators():
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as error:  # pragma: no cover - only after a Ray upgrade
        raise ClusterConfigError(
            "Ray's offline config validation (ray.autoscaler._private.util.prepare_config "
            f"and validate_config) is not where Ray 2.60 had it: {error}; update "
            "cluster/validate.py for this Ray version"
        ) from None
    return prepare_config, validate_config


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClusterConfigError(f"{path}: cannot read it as YAML ({error})") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: a cluster config must be a mapping")
    return config


def validate_cluster_config(config: dict[str, Any], name: str = "config") -> dict[str, Any]:
    """The config as ``ray up`` would use it; ``ClusterConfigError`` if Ray refuses it."""
    prepare_config, validate_config = _ray_validators()
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as error:  # noqa: BLE001 - jsonschema, ValueError, KeyError, ...
        message = getattr(error, "message", None) or str(error)
        raise ClusterConfigError(f"{name}: {type(error).__name__}: {message}") from None
    if config.get("provider", {}).get("type") != "local":
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
            if key not in config:
                raise ClusterConfigError(
                    f"{name}: no {key}, so Ray's default ones would run instead of the "
                    "project's; is it misspelled?")
        for key in ("head_setup_commands", "worker_setup_commands"):
            if PROJECT_SETUP_MARKER not in " ".join(prepared.get(key, [])):
                raise ClusterConfigError(
                    f"{name}: {key} in effect do not install the project (no "
                    f"'{PROJECT_SETUP_MARKER}')")
    return prepared


def validate_file(path: str | Path) -> dict[str, Any]:
    return validate_cluster_config(load_yaml(path), str(path))


def main(paths: list[str]) -> int:
    status = 0
    for path in paths or ["cluster.yaml"]:
        try:
            validate_file(path)
            print(f"{path}: valid")
        except ClusterConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

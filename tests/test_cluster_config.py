"""cluster.yaml is valid for Ray's own launcher, runs the project's setup, and opens no Ray
port to the internet; Ray's validation catches the usual mistakes (broken copies)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from cluster.validate import ClusterConfigError, load_yaml, validate_cluster_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_CONFIGS = sorted([ROOT / "cluster.yaml", *(ROOT / "cluster").glob("*.yaml")])
RAY_PORTS = {6379, 8265, 10001, 8076, 52365, 8077}


@pytest.fixture
def aws() -> dict:
    return load_yaml(ROOT / "cluster.yaml")


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_every_cluster_config_in_the_repository_is_valid(path):
    validate_cluster_config(load_yaml(path), str(path))


def test_the_projects_setup_commands_are_the_ones_in_effect(aws):
    prepared = validate_cluster_config(aws)
    assert any("pip install -e ~/ucrn" in c for c in prepared["setup_commands"])
    assert not any("ray-wheels" in c for c in prepared["setup_commands"])  # Ray's default


def test_a_misspelled_setup_commands_key_is_caught(aws):
    broken = copy.deepcopy(aws)
    broken["setup_command"] = broken.pop("setup_commands")
    with pytest.raises(ClusterConfigError):
        validate_cluster_config(broken)


def test_a_misspelled_key_is_caught(aws):
    broken = copy.deepcopy(aws)
    broken["idle_timout_minutes"] = broken.pop("idle_timeout_minutes")
    with pytest.raises(ClusterConfigError, match="idle_timout_minutes"):
        validate_cluster_config(broken)


def test_a_wrong_type_is_caught(aws):
    broken = copy.deepcopy(aws)
    broken["max_workers"] = "four"
    with pytest.raises(ClusterConfigError, match="four"):
        validate_cluster_config(broken)


def test_a_missing_head_node_type_is_caught(aws):
    broken = copy.deepcopy(aws)
    del broken["head_node_type"]
    with pytest.raises(ClusterConfigError, match="head_node_type"):
        validate_cluster_config(broken)


def test_more_min_workers_than_max_workers_is_caught(aws):
    broken = copy.deepcopy(aws)
    broken["available_node_types"]["ucrn.gpu"]["min_workers"] = 9
    with pytest.raises(ClusterConfigError):
        validate_cluster_config(broken)


def test_the_gpu_workers_autoscale_from_zero(aws):
    gpu = aws["available_node_types"]["ucrn.gpu"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceType"].startswith(("g4", "g5", "g6", "p3", "p4", "p5"))
    assert aws["idle_timeout_minutes"] > 0


def _start_commands(config: dict) -> list[str]:
    return [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_no_ray_port_is_opened_and_token_auth_stays_on(path):
    config = load_yaml(path)
    starts = [c for c in _start_commands(config) if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in " ".join(_start_commands(config))
    assert "--ray-client-server-port" not in head  # no client server for the outside
    for rule in config.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        ports = set(range(rule["FromPort"], rule["ToPort"] + 1))
        assert not ports & RAY_PORTS, rule
        assert ports == {22}, f"only SSH may be opened: {rule}"
        for address in rule.get("IpRanges", []):
            assert address["CidrIp"] != "0.0.0.0/0", "SSH open to the whole internet"


def test_the_auth_token_reaches_every_node(aws):
    assert "~/.ray/auth_token" in aws["file_mounts"]


def test_the_installed_ray_matches_the_projects_pin(aws):
    pin = re.search(r'"ray\[[^\]]*\]([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    setup = " ".join(aws["setup_commands"])
    # The nodes install the project, which pins Ray; nothing installs another Ray.
    assert "pip install -e ~/ucrn" in setup and "ray==" not in setup
    assert pin.startswith(">=2.60") and "<2.61" in pin

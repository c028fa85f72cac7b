"""cluster.yaml is valid for Ray's own launcher, runs the project's setup, and opens no Ray
port to the internet; Ray's validation catches the usual mistakes (broken copies)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
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
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install -e ~/ucrn" in c for c in prepared[key]), key
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not any("ray-wheels" in c for c in prepared[key])  # Ray's default


def _torch_install(commands: list[str]) -> tuple[int, str]:
    """The position of the torch install among ``commands``, and its wheel index."""
    for position, command in enumerate(commands):
        if "torch==" in command:
            return position, re.search(r"--index-url (\S+)", command).group(1)
    raise AssertionError(f"no torch install in {commands}")


def _project_install(commands: list[str]) -> int:
    return next(i for i, c in enumerate(commands) if "pip install -e ~/ucrn" in c)


def test_gpu_nodes_install_a_cuda_build_of_torch_before_the_project(aws):
    commands = aws["worker_setup_commands"]
    position, index = _torch_install(commands)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index), index
    assert position < _project_install(commands)  # the project's install keeps that torch


def test_the_cuda_build_is_one_the_named_amis_driver_supports(aws):
    _, index = _torch_install(aws["worker_setup_commands"])
    cuda = int(index.rsplit("cu", 1)[1])  # e.g. 130 for CUDA 13.0
    text = (ROOT / "cluster.yaml").read_text()
    driver = int(re.search(r"NVIDIA\s+#?\s*driver \((\d+) or newer\)", text).group(1))
    # NVIDIA's minimum Linux drivers: CUDA 12.6 → 560, 12.8 → 570, 12.9 → 575, 13.0 → 580
    minimum = {126: 560, 128: 570, 129: 575, 130: 580}[cuda]
    assert driver >= minimum
    assert f"CUDA {cuda // 10}.{cuda % 10}" in text  # the comments name the same CUDA


def test_the_config_says_how_to_find_the_ami_in_a_region(aws):
    text = (ROOT / "cluster.yaml").read_text()
    assert "aws ssm get-parameter" in text and "base-oss-nvidia-driver-gpu" in text
    assert aws["available_node_types"]["ucrn.gpu"]["node_config"]["ImageId"].startswith("ami-")


def test_a_gpu_node_fails_its_setup_when_torch_cannot_use_its_gpu(aws):
    commands = aws["worker_setup_commands"]
    check = commands[-1]
    assert "torch.cuda.is_available()" in check and "sys.exit(" in check
    assert _project_install(commands) < len(commands) - 1
    # On this machine (torch's CPU build, no GPU) the check itself fails, as it must.
    finished = subprocess.run(["bash", "-c", check.replace("python3", sys.executable, 1)],
                              capture_output=True, text=True, check=False)
    assert finished.returncode != 0
    assert "torch cannot use this GPU" in finished.stderr


def test_the_head_installs_the_cpu_build_of_torch(aws):
    commands = aws["head_setup_commands"]
    position, index = _torch_install(commands)
    assert index == "https://download.pytorch.org/whl/cpu"
    assert position < _project_install(commands)


@pytest.mark.parametrize("key", ["setup_commands", "head_setup_commands",
                                 "worker_setup_commands"])
def test_a_misspelled_setup_commands_key_is_caught(aws, key):
    broken = copy.deepcopy(aws)
    broken[key[:-1]] = broken.pop(key)
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
    setup = " ".join(aws["setup_commands"] + aws["head_setup_commands"]
                     + aws["worker_setup_commands"])
    # The nodes install the project, which pins Ray; nothing installs another Ray.
    assert "pip install -e ~/ucrn" in setup and "ray==" not in setup
    assert pin.startswith(">=2.60") and "<2.61" in pin

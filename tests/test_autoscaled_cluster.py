"""The GPU cluster's first contact, without a cloud: a head of no GPU whose autoscaler can
add a GPU node (Ray's fake multi-node provider, ``cluster/fake_autoscaler.py``).

The search and the evaluator are not refused, plan with the GPUs the autoscaler can add, the
autoscaler adds the node, the trials go to it (not to the head), and as that fake node
declares a GPU torch cannot use, each command ends with the one line that says so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAD_ID = "f" * 51 + "00000"  # the fake provider's head
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def autoscaled_cluster(tmp_path_factory):
    """A fake autoscaling cluster: a 1-CPU head, one GPU node type at min_workers 0."""
    state = tmp_path_factory.mktemp("fake") / "state.json"
    environment = {**os.environ, "UCRN_FAKE_AUTOSCALER_STATE": str(state)}
    command = [sys.executable, str(ROOT / "cluster" / "fake_autoscaler.py")]
    subprocess.run([*command, "start", "--gpu-nodes", "1"], env=environment, check=True,
                   capture_output=True)
    try:
        yield {"address": "127.0.0.1:6392", "state": state}
    finally:
        subprocess.run([*command, "stop"], env=environment, check=True)
    assert not state.exists()


def _run(script: str, cluster: dict, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RAY_AUTH_MODE": "token"}
    environment.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "tuning" / script), "--address", cluster["address"],
         "--stall-minutes", "3", *args],
        env=environment, capture_output=True, text=True, timeout=400, check=False)


def _folder(cluster: dict) -> str:
    import json

    return json.loads(cluster["state"].read_text())["folder"]


def _listening_addresses(folder: str) -> set[str]:
    """The addresses on which the fake cluster's processes listen."""
    addresses = set()
    for process in psutil.process_iter(["cmdline"]):
        if folder not in " ".join(process.info.get("cmdline") or []):
            continue
        for owner in [process, *process.children(recursive=True)]:
            try:
                connections = owner.net_connections(kind="inet")
            except psutil.Error:
                continue
            addresses |= {c.laddr.ip.removeprefix("::ffff:")  # IPv4 mapped into IPv6
                          for c in connections if c.status == psutil.CONN_LISTEN}
    return addresses


def test_a_search_on_an_autoscaled_cluster_adds_a_gpu_node_and_trains_there(
        autoscaled_cluster, tiny_mosi, tmp_path):
    finished = _run("search.py", autoscaled_cluster, "--data", str(tiny_mosi),
                    "--num-samples", "2", "--epochs", "1", "--grace-period", "1",
                    "--storage", str(tmp_path))
    err = finished.stderr
    # planned with what the autoscaler can add (no --gpus-per-worker given): not refused
    assert "0 GPUs up; the autoscaler can add gpu.node ≤ 1 × 1 GPU (A10G)" in err, err[-3000:]
    assert re.search(r"with \S+ CPU and 0\.25 GPU each", err), err[-3000:]
    assert "waiting for GPU nodes: 0 GPU(s) up" in err
    # the trial ran on the node the autoscaler added, whose torch cannot use the GPU
    assert finished.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("search: error: node 127.0.0.1 (id "), last
    assert "was given a GPU that torch cannot use" in last and "CUDA" in last
    node = re.search(r"\(id (\w+)\)", last).group(1)
    assert node != HEAD_ID and node.startswith("f" * 51)
    assert not (tmp_path / "best.json").exists()
    listening = _listening_addresses(_folder(autoscaled_cluster))
    assert listening == {"127.0.0.1"}, listening


def test_an_evaluation_on_an_autoscaled_cluster_is_not_refused_and_meets_the_gpu_node(
        autoscaled_cluster, tiny_mosi, tmp_path):
    finished = _run("evaluate.py", autoscaled_cluster, "--data", str(tiny_mosi),
                    "--seeds", "1", "--ablations", "none", "--epochs", "1",
                    "--gpus-per-worker", "0.5", "--out", str(tmp_path / "out"))
    err = finished.stderr
    assert "the autoscaler can add gpu.node" in err, err[-3000:]
    assert finished.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("evaluate: error: node 127.0.0.1 (id "), last
    assert "torch cannot use" in last and HEAD_ID not in last
    assert not (tmp_path / "out" / "REPORT.md").exists()


def test_only_this_clusters_autoscaler_is_read(autoscaled_cluster):
    from tuning.capacity import _config_on_this_machine

    ours = _config_on_this_machine(autoscaled_cluster["address"])
    assert ours is not None and "gpu.node" in ours["available_node_types"]
    assert _config_on_this_machine("127.0.0.1:1") is None  # another cluster: not its config


def test_a_local_search_beside_an_autoscaled_cluster_trains_on_its_own_cpus(
        autoscaled_cluster, tiny_mosi, tmp_path):
    environment = {**os.environ}
    environment.pop("RAY_ADDRESS", None)
    finished = subprocess.run(
        [sys.executable, str(ROOT / "tuning" / "search.py"), "--data", str(tiny_mosi),
         "--num-samples", "1", "--epochs", "1", "--grace-period", "1", "--finalists", "0",
         "--set", "urm_layers=1", "--set", "crm_layers=1", "--storage", str(tmp_path)],
        env=environment, capture_output=True, text=True, timeout=400, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "the autoscaler can add" not in finished.stderr
    assert re.search(r"with \S+ CPU and 0 GPU each", finished.stderr)

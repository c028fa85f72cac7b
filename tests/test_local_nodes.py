"""Several Ray nodes on one machine (cluster/local_nodes.py): trials spread over the nodes,
and a trial whose node is killed continues from its last checkpoint on a surviving node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from ray._private.utils import get_ray_address_file

ROOT = Path(__file__).resolve().parents[1]
NODES = [sys.executable, str(ROOT / "cluster" / "local_nodes.py")]
SEARCH = [sys.executable, str(ROOT / "tuning" / "search.py")]
PACED_SEARCH = [sys.executable, str(ROOT / "tests" / "paced_search.py")]  # 0.5 s an epoch
ENVIRONMENT = {**os.environ, "RAY_AUTH_MODE": "token"}


@pytest.fixture
def two_nodes(tmp_path):
    """A head (1 CPU) and one worker node (1 CPU), on 127.0.0.1; stopped by PID after."""
    state = tmp_path / "nodes.json"
    environment = {**ENVIRONMENT, "UCRN_NODES_STATE": str(state)}
    started = subprocess.run([*NODES, "start", "--workers", "1"], env=environment,
                             capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    address = started.stdout.strip().splitlines()[-1]
    yield address, state, environment
    subprocess.run([*NODES, "stop"], env=environment, timeout=120)
    pids = [pid for pids in json.loads(state.read_text()).values() for pid in pids] \
        if state.exists() else []
    assert not any(psutil.pid_exists(pid) for pid in pids)
    latest = Path(get_ray_address_file(None))  # what a plain ray.init() would dial
    assert not latest.exists() or latest.read_text().strip() != address


def _search_args(address: str, data: Path, storage: Path, epochs: int) -> list[str]:
    return ["--address", address, "--data", str(data), "--num-samples", "2",
            "--max-concurrent", "2", "--epochs", str(epochs), "--grace-period", str(epochs),
            "--set", "urm_layers=1", "--set", "crm_layers=1", "--storage", str(storage),
            "--name", "exp"]


def _histories(experiment: Path) -> dict[str, list[dict]]:
    histories = {}
    for path in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            histories[rows[0]["trial_id"]] = rows
    return histories


def _worker_node_id(address: str, environment: dict) -> str:
    script = (f"from tuning.ray_start import start_ray; start_ray({address!r}); import ray, "
              "json; print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and "
              "'node:__internal_head__' not in n['Resources']]))")
    found = subprocess.run([sys.executable, "-c", script],
                           env=environment, capture_output=True, text=True, timeout=60)
    return json.loads(found.stdout.strip().splitlines()[-1])[0]


@pytest.mark.slow
def test_trials_run_on_both_nodes(two_nodes, tiny_mosi, tmp_path):
    address, _, environment = two_nodes
    finished = subprocess.run([*SEARCH, *_search_args(address, tiny_mosi, tmp_path, 2)],
                              env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    nodes = {rows[-1]["node_id"] for rows in _histories(tmp_path / "exp").values()}
    assert len(nodes) == 2


@pytest.mark.slow
def test_a_trial_on_a_killed_node_resumes_from_its_checkpoint(two_nodes, tiny_mosi, tmp_path):
    address, _, environment = two_nodes
    worker = _worker_node_id(address, environment)
    epochs = 12  # paced: the kill at epoch 2 lands inside the trial
    # result.json, which the test reads, reaches the storage with each saved state: every 1 s.
    search = subprocess.Popen([*PACED_SEARCH, *_search_args(address, tiny_mosi, tmp_path,
                                                            epochs)],
                              env={**environment, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    experiment = tmp_path / "exp"
    deadline, victim = time.monotonic() + 300, None
    while victim is None and time.monotonic() < deadline:
        assert search.poll() is None, "the search ended before a node could be killed"
        for trial, rows in _histories(experiment).items():
            if rows[-1].get("node_id") == worker and rows[-1]["epoch"] >= 2:
                victim = trial
        time.sleep(0.5)
    assert victim, "no trial reached epoch 2 on the worker node in time"
    subprocess.run([*NODES, "kill", "worker-1"], env=environment, check=True, timeout=60)
    _, errors = search.communicate(timeout=600)
    assert search.returncode == 0, errors[-3000:]

    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}
    rows = _histories(experiment)[victim]
    epochs_seen = [row["epoch"] for row in rows]
    assert epochs_seen[-1] == epochs  # it finished
    assert epochs_seen.count(1) == 1  # and did not start again from the beginning
    assert rows[-1]["node_id"] != worker  # on the surviving node

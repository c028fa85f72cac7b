"""`ray up cluster/local.yaml` for real: a head node on 127.0.0.1 over SSH, a search
submitted as a Ray job, `ray down`, and no Ray process left behind.

Needs Debian's openssh-server and rsync (CI installs them). `ray down` runs `ray stop`,
which stops every Ray of this user on the machine, so this test runs while no other Ray is
up (the file sorts before the tests that start the session's Ray).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
RAY_PROCESSES = {"raylet", "gcs_server"}


def _ray_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in RAY_PROCESSES]


def _run(command: list[str], timeout: int) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHON": sys.executable,
                   "PATH": f"/tmp/ucrn-ssh:{os.environ['PATH']}"}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_ray_up_then_a_search_job_then_ray_down_leaves_no_ray(tiny_mosi, tmp_path):
    import ray

    missing = [tool for tool in ("sshd", "rsync") if not shutil.which(tool) and
               not Path(f"/usr/sbin/{tool}").exists()]
    assert not missing, f"install Debian's openssh-server and rsync ({missing} missing)"
    assert not ray.is_initialized() and not _ray_processes(), \
        "another Ray runs on this machine; `ray down` would stop it too"
    started = _run(["bash", "cluster/local_sshd.sh", "start"], timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        up = _run([RAY, "up", "cluster/local.yaml", "-y"], timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        job = _run([RAY, "job", "submit", "--address", "http://127.0.0.1:8266",
                    "--working-dir", str(ROOT), "--", sys.executable, "tuning/search.py",
                    "--data", str(tiny_mosi), "--num-samples", "2", "--epochs", "2",
                    "--grace-period", "1", "--set", "urm_layers=1", "--set", "crm_layers=1",
                    "--storage", str(tmp_path), "--name", "job"], timeout=600)
        output = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in output, output[-3000:]
        record = json.loads((tmp_path / "job" / "best.json").read_text())
        assert record["search"]["trials"] == 2 and "MAE" in record["metrics"]["test"]
    finally:
        down = _run([RAY, "down", "cluster/local.yaml", "-y"], timeout=300)
        _run(["bash", "cluster/local_sshd.sh", "stop"], timeout=60)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not _ray_processes(), "ray down left Ray running"
    assert not Path("/tmp/ucrn-ssh").exists(), "the sshd's keys and home outlived it"

"""Starting Ray (tuning/ray_start.py): a local start is a new Ray, never a stale one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_local_start_ignores_the_last_cluster_this_machine_started():
    # Ray's plain ray.init() dials the cluster named in <temp>/ray/ray_current_cluster,
    # which a cluster stopped by PID leaves behind; nothing listens at port 1.
    temp = Path(tempfile.mkdtemp(prefix="ucrn-", dir="/tmp"))  # short: Ray's socket paths
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        environment["RAY_TMPDIR"] = str(temp)
        script = ("from tuning.ray_start import start_ray; import ray; "
                  "s = start_ray(num_cpus=1, object_store_bytes=100 * 2**20); "
                  "print(s.address, s.started_here); ray.shutdown()")
        started = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        address, started_here = started.stdout.split()[-2:]
        assert address.startswith("127.0.0.1:") and address != "127.0.0.1:1"
        assert started_here == "True"
    finally:
        shutil.rmtree(temp, ignore_errors=True)


RACING_START = """
import socket
import ray
import tuning.ray_start as ray_start

held = socket.socket()
held.bind(("127.0.0.1", 0))
held.listen()
taken = held.getsockname()[1]
probe = ray_start._free_port
probes = []

def losing_the_race(preferred, attempts=50):
    # The first probe finds the port free; another command binds it before Ray does.
    probes.append(preferred)
    return taken if len(probes) == 1 else probe(preferred)

ray_start._free_port = losing_the_race
session = ray_start.start_ray(num_cpus=1, object_store_bytes=100 * 2**20)
print(taken, session.dashboard_url.rsplit(":", 1)[-1], probes[-1])
ray.shutdown()
"""


@pytest.mark.slow
def test_a_dashboard_port_taken_meanwhile_moves_to_the_next():
    started = subprocess.run([sys.executable, "-c", RACING_START], cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    taken, used, second_probe = map(int, started.stdout.split())
    assert used != taken and second_probe == taken + 1


def test_a_second_local_ray_is_pointed_out():
    from tuning.ray_start import RaySession, sharing_note

    alone = RaySession("127.0.0.1:1", "", True, 2.0, 0.0)
    assert sharing_note(alone) is None
    shared = RaySession("127.0.0.1:1", "", True, 2.0, 0.0, other_local_rays=["127.0.0.1:2"])
    assert "another Ray runs on this machine (127.0.0.1:2)" in sharing_note(shared)

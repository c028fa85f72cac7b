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

"""Benchmark scripts that run only where a GPU is lent keep working: their dry runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_packing_benchmark_runs_end_to_end_dry():
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_packing.py"), "--dry-run"],
        capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    lines = finished.stdout.splitlines()
    assert any(line.startswith("1 per GPU: search") for line in lines)
    assert any(line.startswith("2 per GPU: search") for line in lines)
    assert lines[-1].startswith("packing 2: ") and "trials per hour of packing 1" in lines[-1]

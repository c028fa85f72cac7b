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


FAKE_MULT = {  # the names train_speed.py takes from a MulT checkout, doing little
    "src/models.py": """
import torch
from torch import nn


class MULTModel(nn.Module):
    def __init__(self, hyp_params):
        super().__init__()
        width = hyp_params.orig_d_l + hyp_params.orig_d_a + hyp_params.orig_d_v
        self.out_layer = nn.Linear(width, hyp_params.output_dim)

    def forward(self, x_l, x_a, x_v):
        last = torch.cat([x_l[:, -1], x_a[:, -1], x_v[:, -1]], dim=1)
        return self.out_layer(last), last
""",
    "modules/position_embedding.py": "def make_positions(tensor, padding_idx, left_pad):\n"
                                     "    return tensor\n",
    "modules/multihead_attention.py": "class MultiheadAttention:\n    pass\n",
}


@pytest.mark.slow
def test_the_training_speed_benchmark_times_a_mult_checkout_side_by_side(tmp_path):
    from ucrn.data.synthetic import synthesize

    checkout = tmp_path / "Multimodal-Transformer"
    for name, text in FAKE_MULT.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)
    data = synthesize("mosi", tmp_path / "small.h5", scale=0.1)
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--data", str(data),
         "--epochs", "2", "--mult", str(checkout), "--mult-batches", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    mult = finished.stdout.splitlines()[-1]
    assert mult.startswith(f"MulT ({checkout}), ") and "median of 2, each from 3 batches" in mult
    assert mult.endswith("× faster")

    not_mult = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--data", str(data),
         "--mult", str(tmp_path)], capture_output=True, text=True, timeout=600,
    )
    assert not_mult.returncode != 0
    assert "not a checkout of yaohungt/Multimodal-Transformer" in not_mult.stderr

"""Benchmark scripts that run only where a GPU is lent keep working: their dry runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_acceptance_script_runs_every_part_dry_on_the_cpu(tmp_path):
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--dry-run",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert finished.stdout.strip().splitlines()[-1].endswith("every part ran")
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert report["dry_run"] and report["environment"]["device"] == "cpu"
    assert report["parity"]["max_valid_MAE_difference"] == 0.0  # CPU against CPU
    for shape in ("step_aligned", "step_unaligned"):
        step, dynamic = report[shape], report[f"{shape}_dynamic"]
        assert step["ms_per_step"] > 0 and step["non_view_ops_per_step"] > 0
        assert step["static_shapes"] and not dynamic["static_shapes"]
        assert step["host_syncs_per_step"] == 0 < dynamic["host_syncs_per_step"]
    graphed = report["graphed"]  # on the CPU no graph is captured: the eager step twice
    assert graphed["graphed"]["graphs"] == [] and not graphed["graphed"]["capture_failed"]
    assert graphed["speedup"] > 0 and graphed["max_epoch_difference"] == 0
    levels = report["packing"]["levels"]
    assert [row["k"] for row in levels] == [1, 2] and levels[0]["speedup_over_k1"] == 1.0
    assert report["footprint"]["estimate_mib"] > 0
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["loss_difference"] < 1e-5
    assert report["resume"]["exact"]


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


@pytest.mark.slow
def test_the_search_value_benchmark_compares_the_pick_with_the_defaults_over_seeds(tiny_mosi,
                                                                                  tmp_path):
    small = "--set urm_layers=1 --set crm_layers=1"
    kept = tmp_path / "kept"
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search_value.py"), "--data",
         str(tiny_mosi), "--seeds", "3", "--json", "--evaluate-args", f"--epochs 2 {small}",
         "--defaults", str(kept),
         "--search-args", f"--num-samples 2 --epochs 1 --grace-period 1 --finalists 1 "
         f"--finalist-seeds 2 --winner-seeds 2 --set epochs=2 {small}"],
        capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["metric"] == "MAE" and report["seeds"] == 3
    # the search ran seeds 0 and 1 of its pick; the evaluator's seeds 0 and 1 repeat them
    assert report["search_seeds"] == [0, 1] and report["fresh_seeds"] == 1
    repeated = report["per_seed"]["pick at trial length"]["valid MAE"][:2]
    assert sum(repeated) / 2 == pytest.approx(report["search_reported_valid"], rel=1e-6)
    assert report["winners_curse_on_fresh_seeds"] is not None
    # the defaults' evaluation is kept for the next run of the same inputs
    assert len(list(kept.glob("defaults-*/runs/full-seed*.json"))) == 3
    assert report["trial_epochs"] == 1 and report["epochs"] == 2  # best.json: the full budget
    names = ("pick at trial length", "search pick", "paper defaults")
    for name in names:
        scores = report["configurations"][name]
        assert set(scores) == {"valid MAE", "test Non0_acc_2", "test MAE"}
        assert scores["valid MAE"]["std"] >= 0
    # more epochs from the same seeds: each seed's best validation epoch can only improve
    assert (report["configurations"]["search pick"]["valid MAE"]["mean"]
            <= report["configurations"]["pick at trial length"]["valid MAE"]["mean"])
    assert report["search_reported_seeds"] == 2
    assert isinstance(report["pick_beats_defaults"], bool)
    assert set(report["seconds"]) == {"search", *names}


def _step_benchmark(name: str) -> dict:
    """The JSON object a step benchmark prints with --quick --json on the CPU."""
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--json",
         "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


def test_the_step_ops_benchmark_counts_both_paths_and_the_static_one_never_syncs():
    report = _step_benchmark("step_ops.py")
    assert set(report) == {"dynamic", "static"}
    for path in report.values():
        assert set(path) == {"aligned", "unaligned"}
        for figures in path.values():
            assert figures["ops"] > 0 and figures["ms"] > 0
    assert report["static"]["aligned"]["syncs"] == report["static"]["unaligned"]["syncs"] == 0
    assert report["dynamic"]["unaligned"]["syncs"] > 0


def test_the_stacked_models_benchmark_reports_ops_speed_memory_and_exactness():
    report = _step_benchmark("stacked_models.py")
    ops = report["ops_per_model_step"]
    assert set(ops) == {"1", "4", "10"}
    assert ops["10"] <= ops["1"] / 8  # ten models dispatch about what one does
    assert report["cpu_speedup_k10"] > 0 and set(report["peak_mib_per_model"]) == {"1", "10"}
    assert report["max_relative_deviation"] <= 1e-4


def _search_value():
    """benchmarks/search_value.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("search_value",
                                                  ROOT / "benchmarks" / "search_value.py")
    search_value = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search_value)
    return search_value


def test_search_value_reuses_the_defaults_runs_only_for_a_pick_that_trains_alike(tmp_path):
    from ucrn.config import Config, apply_overrides

    search_value = _search_value()
    defaults = tmp_path / "defaults"
    (defaults / "runs").mkdir(parents=True)
    ran = apply_overrides(Config(), {"seed": 3}).to_dict()  # as the evaluator records a run
    (defaults / "runs" / "full-seed3.json").write_text(json.dumps({"config": ran}))

    def best(**overrides) -> str:
        path = tmp_path / "best.json"
        record = apply_overrides(Config(), overrides).to_dict()
        path.write_text(json.dumps({**record, "search": {"trial": "t"}}))
        return str(path)

    assert search_value.trains_alike(defaults, best(select_metric="MAE"))  # auto is MAE
    assert not search_value.trains_alike(defaults, best(learning_rate=0.002))
    assert not search_value.trains_alike(defaults, best(epochs=8, patience=8))


def test_search_value_reads_the_search_where_its_own_storage_and_name_put_it(tmp_path):
    where = _search_value().experiment_folder
    assert where(tmp_path, ["--num-samples", "4"]) == tmp_path / "s"
    assert where(tmp_path, ["--seed", "1", "--storage", "/x/y", "--name", "n"]) == Path("/x/y/n")
    assert where(tmp_path, ["--name=n", "--study-storage", "sqlite:///a.db"]) == tmp_path / "n"

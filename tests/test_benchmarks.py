"""Benchmark scripts that run only where a GPU is lent keep working: their dry runs."""

from __future__ import annotations

import json
import math
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


def _benchmark(name: str):
    """benchmarks/NAME.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_value_reuses_the_defaults_runs_only_for_a_pick_that_trains_alike(tmp_path):
    from ucrn.config import Config, apply_overrides

    search_value = _benchmark("search_value")
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
    where = _benchmark("search_value").experiment_folder
    assert where(tmp_path, ["--num-samples", "4"]) == tmp_path / "s"
    assert where(tmp_path, ["--seed", "1", "--storage", "/x/y", "--name", "n"]) == Path("/x/y/n")
    assert where(tmp_path, ["--name=n", "--study-storage", "sqlite:///a.db"]) == tmp_path / "n"


def test_replayed_halving_stops_all_but_the_best_half_at_each_rung_and_never_the_paper():
    halving = _benchmark("seeds_per_trial").halving
    scores = {0: 9.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0, 6: 6.0, 7: 7.0}  # 0: the paper
    ran = halving(list(scores), 0, 8, lambda trial, epochs: scores[trial])
    # rung 2: the best 4 of 8 and the paper go on; rung 4: the best 3 of those 5 and the paper
    assert ran == {0: 8, 1: 8, 2: 8, 3: 8, 4: 4, 5: 2, 6: 2, 7: 2}


def _made_table(configurations: int, seeds: int, epochs: int) -> dict:
    """A table whose every configuration beats the paper's (0) by 0.5 on each seed, by
    more the higher its number, with a little spread over seeds; one second an epoch."""
    def curve(index: int, seed: int) -> list[float]:
        level = 1.0 if index == 0 else 0.5 - 0.01 * index
        return [level + 0.02 * math.sin(2.3 * seed + index) + 0.1 / (epoch + 1)
                for epoch in range(epochs)]

    return {"epochs": epochs, "metric": "valid_MAE", "points": [{}] * (configurations + 1),
            "runs": [{str(seed): {"valid": curve(index, seed), "seconds": [1.0] * epochs}
                      for seed in range(seeds)} for index in range(configurations + 1)]}


def test_replayed_searches_take_a_clearly_better_configuration_and_pay_for_their_seeds():
    module = _benchmark("seeds_per_trial")
    report = module.replay(_made_table(12, 8, 8), repeats=30, seed=0)
    rows = report["strategies"]
    assert set(rows) == set(module.STRATEGIES)
    # halving of 8 trials with the paper worst: 3 stop at 2 epochs, 1 at 4, 4 run all 8
    assert rows["one seed, 8 trials"]["seconds"] == 42
    assert rows["2 seeds a trial, 8 trials"]["seconds"] == 84
    assert rows["3 seeds a trial, 8 trials"]["seconds"] == 126
    finalists = rows["finalists, 8 trials (main job)"]["seconds"]
    assert 42 + 2 * 8 <= finalists <= 42 + 6 * 8  # the race's reruns, 8 epochs each
    for row in rows.values():
        assert row["took_other"] == 1.0 and row["worse_when_other"] == 0.0
        assert 0.4 < row["gain"] <= row["best_tried_gain"] + 1e-12
    assert (rows["2 seeds a trial, 8 trials"]["curse_in_seed_std"]
            <= rows["one seed, 8 trials"]["curse_in_seed_std"] + 1e-9)


@pytest.mark.slow
def test_the_seeds_per_trial_table_is_kept_as_it_grows(tiny_mosi, tmp_path):
    table = tmp_path / "table.json"

    def grow(seeds: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "seeds_per_trial.py"), "--data",
             str(tiny_mosi), "--table", str(table), "--pool", "1", "--seeds", str(seeds),
             "--epochs", "2", "--jobs", "1"],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    first = grow(1)
    assert first.returncode != 0 and "a replay needs 8" in first.stderr  # too few to replay
    kept = json.loads(table.read_text())
    assert len(kept["points"]) == 2 and kept["points"][0] and kept["points"][1]
    assert [sorted(runs) for runs in kept["runs"]] == [["0"], ["0"]]
    assert all(len(run["valid"]) == len(run["seconds"]) == 2
               for runs in kept["runs"] for run in runs.values())
    second = grow(2)  # the new seed's two runs alone
    assert "run 2/2" in second.stdout and "run 3/" not in second.stdout
    assert [sorted(runs) for runs in json.loads(table.read_text())["runs"]] == [["0", "1"]] * 2
    assert json.loads(table.read_text())["runs"][0]["0"] == kept["runs"][0]["0"]

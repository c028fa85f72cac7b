"""``python tuning/evaluate.py``: seed reruns on Ray, persisted per run, and the paper's tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from helpers import fails_before_ray, small_arrays

from ucrn.config import ABLATIONS, Config, apply_overrides
from ucrn.data.layout import load_dataset, write_dataset
from ucrn.engine import fit

FAST = ["--epochs", "2", "--set", "urm_layers=1", "--set", "crm_layers=1", "--set",
        "width=12"]


def _evaluate(*args: str) -> int:
    from tuning.evaluate import main

    return main(list(args))


def _fails_before_ray(capsys, *args) -> str:
    from tuning.evaluate import main

    return fails_before_ray(capsys, main, "evaluate", *args)


def test_zero_seeds_fail_before_ray(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--seeds", "0",
                             "--out", str(tmp_path))
    assert "--seeds 0" in line


@pytest.mark.parametrize("option, value, message", [
    ("--workers-per-trial", "0", "--workers-per-trial 0: give at least 1"),
    ("--cpus-per-worker", "-1", "--cpus-per-worker -1.0: give a number ≥ 0"),
    ("--gpus-per-worker", "0.5", "could share a GPU"),
])
def test_impossible_resources_fail_before_ray(capsys, tiny_mosi, tmp_path, option, value,
                                              message):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--workers-per-trial", "2",
                             option, value, "--out", str(tmp_path))
    assert message in line


def test_an_unknown_baseline_metric_fails_before_ray(capsys, tiny_mosi, tmp_path):
    baselines = tmp_path / "baselines.csv"
    baselines.write_text("method,dataset,metric,value\nMulT,mosi,Acc_2_magic,0.8\n")
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--baselines",
                             str(baselines), "--out", str(tmp_path / "out"))
    assert "unknown metric(s) Acc_2_magic" in line


def test_a_config_for_another_modality_set_fails_before_ray(capsys, tmp_path):
    splits = {s: small_arrays(seed=i) for i, s in enumerate(("train", "valid", "test"))}
    for arrays in splits.values():
        arrays.pop("v")
    data = write_dataset(tmp_path / "la.h5", splits, name="la")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"modalities": ["l", "a", "v"]}}))
    line = _fails_before_ray(capsys, "--config", str(config), "--data", str(data),
                             "--out", str(tmp_path / "out"))
    assert "modality v" in line


def test_a_config_for_other_feature_sizes_fails_before_ray(capsys, tiny_mosi, tmp_path):
    config = tmp_path / "best.json"
    apply_overrides(Config(), {"input_dims": '{"l": 300, "a": 74, "v": 35}'}).save(config)
    line = _fails_before_ray(capsys, "--config", str(config), "--data", str(tiny_mosi),
                             "--out", str(tmp_path / "out"))
    assert "made for 74 a features" in line and "has 5" in line


def test_an_unknown_ablation_fails_before_ray(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--ablations", "no_magic",
                             "--out", str(tmp_path))
    assert "unknown 'no_magic'" in line


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    return values.mean(), values.std(ddof=1)


@pytest.mark.slow
def test_evaluation_end_to_end_tables_agree_with_the_per_seed_files(ray_session, tiny_mosi,
                                                                   tmp_path):
    out = tmp_path / "evaluation"
    assert _evaluate("--data", str(tiny_mosi), "--seeds", "2", "--ablations", "no_crm",
                     *FAST, "--out", str(out)) == 0
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {"full-seed0", "full-seed1", "no_crm-seed0", "no_crm-seed1"}
    full = [runs["full-seed0"], runs["full-seed1"]]
    # two at a time: later runs train in an earlier run's process, and train as they would
    # alone (what a run gives does not depend on what its process trained before)
    pids = {json.loads(path.read_text().splitlines()[0])["pid"]
            for path in (out / "ray").rglob("result.json")}
    assert len(pids) < len(runs)
    base = apply_overrides(Config(), {"epochs": 2, "patience": 2, "urm_layers": 1,
                                      "crm_layers": 1, "width": 12})
    for variant, overrides in (("full", {}), ("no_crm", ABLATIONS["no_crm"])):
        for seed in (0, 1):
            alone = fit(apply_overrides(base, {**overrides, "seed": seed}),
                        load_dataset(tiny_mosi), device="cpu", score_test=False)
            assert alone.valid["MAE"] == pytest.approx(runs[f"{variant}-seed{seed}"]["valid"][
                "MAE"], rel=1e-6)

    main = pd.read_csv(out / "main.csv").set_index("metric")
    for metric in ("MAE", "Corr", "Non0_acc_2", "Acc_7"):
        mean, std = _mean_std([r["test"][metric] for r in full])
        assert main.loc[metric, "mean"] == pytest.approx(mean)
        assert main.loc[metric, "std"] == pytest.approx(std)

    missing = pd.read_csv(out / "missing_modality.csv").set_index("condition")
    expected = {f"{kind} {subset}" for kind in ("masked", "dropped")
                for subset in ("L+A", "L+V", "A+V", "L", "A", "V")}
    assert set(missing.index) == expected
    scores = [r["conditions"]["masked L+V"]["Non0_acc_2"] for r in full]
    assert missing.loc["masked L+V", "Non0_acc_2 mean"] == pytest.approx(np.mean(scores))
    drops = [100 * (r["test"]["Non0_acc_2"] - r["conditions"]["masked L+V"]["Non0_acc_2"])
             / r["test"]["Non0_acc_2"] for r in full]
    assert missing.loc["masked L+V", "Non0_acc_2 drop % mean"] == pytest.approx(
        np.mean(drops))
    mae_drops = [100 * (r["conditions"]["dropped A"]["MAE"] - r["test"]["MAE"])
                 / r["test"]["MAE"] for r in full]
    assert missing.loc["dropped A", "MAE drop % mean"] == pytest.approx(np.mean(mae_drops))

    noise = pd.read_csv(out / "noise.csv")
    assert list(noise["condition"]) == ["noise L", "noise A", "noise V", "noise L+A+V"]

    ablation = pd.read_csv(out / "ablation.csv").set_index("model")
    assert list(ablation.index) == ["UCRN", "UCRN w/o CRM"]
    mean, std = _mean_std([runs[f"no_crm-seed{s}"]["test"]["MAE"] for s in (0, 1)])
    assert ablation.loc["UCRN w/o CRM", "MAE mean"] == pytest.approx(mean)
    assert ablation.loc["UCRN w/o CRM", "MAE std"] == pytest.approx(std)

    parameters = pd.read_csv(out / "parameters.csv")
    assert len(parameters) == 4 and (parameters["parameters"] > 0).all()
    assert parameters["parameters"][0] == full[0]["params"]

    rpi = pd.read_csv(out / "rpi.csv")
    mult = rpi[(rpi["baseline"] == "MulT") & (rpi["metric"] == "MAE")].iloc[0]
    mean, std = _mean_std([r["test"]["MAE"] for r in full])
    assert mult["RPI"] == pytest.approx(abs(mean - 0.87) / std)
    std_table = pd.read_csv(out / "std.csv")
    assert std_table.iloc[0]["MAE"] == pytest.approx(_mean_std([r["test"]["MAE"]
                                                                 for r in full])[1])

    report = (out / "REPORT.md").read_text()
    for heading in ("## Main", "## Missing modality", "## Noise", "## Ablation",
                    "## Parameters", "## Standard deviations", "## Relative performance"):
        assert heading in report
    for figure in ("per_seed.png", "robustness.png"):
        assert (out / figure).stat().st_size > 1000 and f"({figure})" in report

    # A rerun skips finished runs; a lost run is redone alone.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    (out / "runs" / "no_crm-seed1.json").unlink()
    assert _evaluate("--data", str(tiny_mosi), "--seeds", "2", "--ablations", "no_crm",
                     *FAST, "--out", str(out)) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert set(after) == set(before)
    assert all(after[name] == before[name] for name in after if name != "no_crm-seed1.json")
    assert not math.isnan(pd.read_csv(out / "ablation.csv")["MAE std"][1])
    assert "for the 1 run this invocation made" in (out / "REPORT.md").read_text()


@pytest.mark.slow
def test_an_evaluation_of_stacked_seeds_writes_what_one_of_runs_apart_writes(ray_session,
                                                                            tiny_mosi,
                                                                            tmp_path):
    # dropout 0: a stack then trains each seed as its run apart does (float noise aside)
    given = ["--data", str(tiny_mosi), "--seeds", "3", "--ablations", "no_crm", *FAST,
             "--set", "dropout=0"]
    apart, stacked = tmp_path / "apart", tmp_path / "stacked"
    assert _evaluate(*given, "--out", str(apart)) == 0
    assert _evaluate(*given, "--stack-seeds", "2", "--out", str(stacked)) == 0
    files = {folder: sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                            if p.is_file() and "ray" not in p.parts) for folder in (apart,
                                                                                   stacked)}
    assert files[apart] == files[stacked] and "runs/no_crm-seed2.json" in files[stacked]
    for name in files[apart]:
        if name.startswith("runs/"):
            mine, theirs = (json.loads((folder / name).read_text()) for folder in (stacked,
                                                                                 apart))
            assert mine.keys() == theirs.keys()
            for metric, value in theirs["test"].items():
                assert mine["test"][metric] == pytest.approx(value, rel=1e-3, abs=1e-3), (
                    name, metric)
    for table in ("main.csv", "ablation.csv", "missing_modality.csv"):
        mine, theirs = (pd.read_csv(folder / table) for folder in (stacked, apart))
        assert list(mine.columns) == list(theirs.columns) and len(mine) == len(theirs)
    # an interrupted stack trains again whole; finished runs stay
    (stacked / "runs" / "full-seed1.json").unlink()
    assert _evaluate(*given, "--stack-seeds", "2", "--out", str(stacked)) == 0
    assert (stacked / "runs" / "full-seed1.json").exists()


def test_pending_runs_stack_by_variant_in_the_order_they_come():
    from tuning.evaluate import stacked_runs

    pending = [("full", 0), ("no_crm", 0), ("full", 1), ("no_crm", 1), ("full", 2)]
    assert stacked_runs(pending, 2) == [{"variant": "full", "seeds": [0, 1]},
                                        {"variant": "no_crm", "seeds": [0, 1]},
                                        {"variant": "full", "seeds": [2]}]
    assert len(stacked_runs(pending, 1)) == 5


def test_the_driver_writes_the_scores_its_trial_reported_and_scores_nothing_itself(tmp_path):
    from types import SimpleNamespace

    from tuning.evaluate import RecordRuns

    scored = {"best_epoch": 2, "epochs": 3, "params": 10, "valid": {"MAE": 0.9},
              "test": {"MAE": 1.0}, "conditions": {"full": {"MAE": 1.0}}, "config": {}}
    plan = SimpleNamespace(out=tmp_path)  # no data: the driver could not score if it tried
    recorder = RecordRuns(plan)
    trial = SimpleNamespace(config={"run": {"variant": "full", "seeds": [4]}},
                            last_result={"done": True, "run_record": json.dumps(scored)})
    recorder.on_trial_complete(0, [], trial)
    written = json.loads((tmp_path / "runs" / "full-seed4.json").read_text())
    assert written == {"variant": "full", "seed": 4, **scored}
    unscored = SimpleNamespace(config={"run": {"variant": "full", "seeds": [5]}},
                               last_result={"done": True})
    recorder.on_trial_complete(0, [], unscored)
    assert recorder.failed == ["full-seed5: its trial reported no scores"]
    # a trial of stacked seeds reports one record per seed, or what stopped that seed
    stacked = SimpleNamespace(
        config={"run": {"variant": "no_crm", "seeds": [6, 7]}},
        last_result={"done": True, "run_records": json.dumps([
            json.dumps(scored), json.dumps({"error": "training diverged at epoch 2"})])})
    recorder.on_trial_complete(0, [], stacked)
    assert (tmp_path / "runs" / "no_crm-seed6.json").exists()
    assert recorder.failed[-1] == "no_crm-seed7: training diverged at epoch 2"


@pytest.mark.slow
def test_ctrl_c_after_a_finished_run_writes_no_report_and_the_rerun_goes_on(tiny_mosi,
                                                                            tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tuning" / "evaluate.py"
    out = tmp_path / "out"
    command = [sys.executable, str(script), "--data", str(tiny_mosi), "--seeds", "3",
               "--ablations", "none", "--max-concurrent", "1", *FAST, "--out", str(out)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 300
    while not list((out / "runs").glob("*.json")):
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err[-2000:]
    assert "evaluate: interrupted" in err.strip().splitlines()[-1]
    assert not (out / "REPORT.md").exists()  # no report from a part of the seeds
    finished = len(list((out / "runs").glob("*.json")))
    assert 1 <= finished < 3
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{finished} already done" in rerun.stderr
    assert (out / "REPORT.md").exists() and len(list((out / "runs").glob("*.json"))) == 3


def test_an_out_folder_with_runs_of_another_configuration_or_data_is_refused(tiny_mosi,
                                                                              tmp_path):
    from tuning.evaluate import check_finished_runs, plan_evaluation, run_overrides
    from ucrn.data.layout import fingerprint
    from ucrn.errors import UcrnError

    out = tmp_path / "out"
    plan = plan_evaluation(["--data", str(tiny_mosi), "--seeds", "2", "--ablations", "none",
                            *FAST, "--out", str(out)])
    data = {"name": plan.dataset.name, "fingerprint": fingerprint(plan.dataset)}

    def record(config, seed=1, variant="full", ran_on=data):
        ran = apply_overrides(config, run_overrides(variant, seed))
        return {"variant": variant, "seed": seed, "config": ran.to_dict(), "data": ran_on}

    same = record(apply_overrides(plan.base, {"static_shapes": "true"}))  # speed alone
    check_finished_runs(plan, {"full-seed1": same})
    old = {key: value for key, value in same.items() if key != "data"}  # older runs
    check_finished_runs(plan, {"full-seed1": old})
    for runs, said in (
            ({"full-seed1": record(apply_overrides(plan.base, {"learning_rate": 0.002}))},
             "learning_rate: 0.002 → 0.001"),
            ({"full-seed1": record(plan.base, ran_on={"name": "other", "fingerprint": "0"})},
             f"data: other → {plan.dataset.name}")):
        with pytest.raises(UcrnError, match="holds runs of another evaluation") as refused:
            check_finished_runs(plan, runs)
        assert said in str(refused.value) and str(out) in str(refused.value)


def test_data_sets_that_differ_in_one_label_or_one_feature_differ_in_fingerprint(tiny_mosi):
    from ucrn.data.layout import fingerprint

    dataset = load_dataset(tiny_mosi)
    first = fingerprint(dataset)
    assert fingerprint(load_dataset(tiny_mosi)) == first
    dataset.splits["test"].labels[3, 0] += 0.5
    assert fingerprint(dataset) != first
    dataset = load_dataset(tiny_mosi)
    dataset.splits["train"].features["a"][0, 0, 0] += 1.0
    assert fingerprint(dataset) != first

"""``python tuning/search.py``: bad input fails before Ray; searches run, resume and recover."""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from helpers import fails_before_ray

from ucrn.config import Config, apply_overrides, load_config
from ucrn.data.layout import load_dataset
from ucrn.engine import fit

ROOT = Path(__file__).resolve().parents[1]
SEARCH = [sys.executable, str(ROOT / "tuning" / "search.py")]
PACED_SEARCH = [sys.executable, str(ROOT / "tests" / "paced_search.py")]  # 0.5 s an epoch
NODES = [sys.executable, str(ROOT / "cluster" / "local_nodes.py")]
TINY_SEARCH = ["--num-samples", "2", "--epochs", "2", "--grace-period", "1",
               "--set", "urm_layers=1", "--set", "crm_layers=1", "--finalists", "0"]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _search(*args: str) -> int:
    from tuning.search import main

    return main(list(args))


# ------------------------------------------------------------------ failures before Ray


def _fails_before_ray(capsys, *args) -> str:
    from tuning.search import main

    return fails_before_ray(capsys, main, "search", *args)


def test_a_missing_data_file_fails_before_ray(capsys, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tmp_path / "none.h5"),
                             "--storage", str(tmp_path))
    assert "none.h5 does not exist" in line


def test_an_unknown_metric_fails_before_ray(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--metric", "valid_Acc_9",
                             "--storage", str(tmp_path))
    assert "valid_Acc_9 is not a metric" in line and "valid_Non0_acc_2" in line


def test_a_test_split_metric_is_refused(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--metric", "test_MAE",
                             "--storage", str(tmp_path))
    assert "validation metric" in line


@pytest.mark.parametrize("metric, mode", [("valid_MAE", "max"), ("valid_Corr", "min")])
def test_a_mode_against_the_metrics_direction_fails_before_ray(capsys, tiny_mosi, tmp_path,
                                                               metric, mode):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--metric", metric,
                             "--mode", mode, "--storage", str(tmp_path))
    assert f"--mode {mode} contradicts {metric}" in line


@pytest.mark.parametrize("options, message", [
    (["--metric", "valid_MAE", "--metric", "valid_Corr", "--metric", "valid_Acc_7"],
     "one or two objectives"),
    (["--metric", "valid_MAE", "--metric", "valid_MAE"], "given twice"),
    (["--metric", "valid_MAE", "--metric", "valid_robust_Acc_9"],
     "valid_robust_Acc_9 is not a metric"),
    (["--metric", "valid_MAE", "--metric", "valid_Corr", "--mode", "min"],
     "--mode given 1 time(s) for 2 --metric"),
    (["--metric", "valid_MAE", "--metric", "valid_robust_Corr", "--mode", "min", "--mode",
      "min"], "--mode min contradicts valid_robust_Corr"),
    (["--metric", "valid_robust_MAE", "--modalities", "l"], "need two or more"),
])
def test_bad_objectives_fail_before_ray(capsys, tiny_mosi, tmp_path, options, message):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), *options,
                             "--storage", str(tmp_path))
    assert message in line


def test_a_winner_without_seeds_fails_before_ray(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--winner-seeds", "0",
                             "--storage", str(tmp_path))
    assert "--winner-seeds at least 1" in line


def test_data_parallel_workers_on_a_shared_gpu_fail_before_ray(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--workers-per-trial", "2",
                             "--gpus-per-worker", "0.25", "--storage", str(tmp_path))
    assert "could share a GPU" in line and "--gpus-per-worker 1" in line


def test_data_parallel_workers_get_whole_gpus_by_default():
    from types import SimpleNamespace

    from tuning.capacity import Capacity
    from tuning.trials import resources_for

    def args(workers):
        return SimpleNamespace(gpus_per_worker=None, cpus_per_worker=1.0, max_concurrent=2,
                               workers_per_trial=workers, max_failures=2)

    with_gpu, without = Capacity(cpus=16, gpus=4), Capacity(cpus=16, gpus=0)
    assert resources_for(args(1), with_gpu).gpus_per_worker == 0.25
    assert resources_for(args(2), with_gpu).gpus_per_worker == 1.0
    assert resources_for(args(2), without).gpus_per_worker == 0.0


@pytest.mark.parametrize("space, message", [
    ({"heads": {"choice": [3, 4]}, "head_width": None}, "heads=4 is impossible"),
    ({"width": {"choice": [30, 32]}}, "search head_width"),
    ({"dropout": {"uniform": [0.3, 0.1]}}, "range [0.3, 0.1] is empty"),
    ({"learning_rate": {"loguniform": [0, 1e-3]}}, "loguniform needs low > 0"),
    ({"urm_layer": {"int": [1, 3]}}, "unknown setting 'urm_layer'"),
    ({"batch_size": {"choice": []}}, "non-empty list"),
    ({"head_width": {"int": [8, 16, 3]}}, "the step must be a whole number above 0"),
    ({"urm_layers": {"int": [1, 2, 3, 4]}}, "int needs [low, high] or [low, high, step]"),
])
def test_an_impossible_space_fails_before_ray(capsys, tiny_mosi, tmp_path, space, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--space", str(path),
                             "--storage", str(tmp_path))
    assert message in line


def test_a_yaml_space_is_read(tmp_path):
    from tuning.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: 0.001\nheads:\n  choice: [1, 3]\ndropout: null\n")
    space = load_space(path)
    assert space["learning_rate"] == 0.001 and space["heads"] == {"choice": [1, 3]}
    assert "dropout" not in space


def test_the_paper_configuration_is_a_point_of_the_default_space():
    from tuning.space import DEFAULT_SPACE, base_point

    point, outside = base_point(DEFAULT_SPACE, Config())
    assert outside == [] and point["urm_layers"] == 5 and point["heads"] == 3
    assert point["head_width"] == 10 and point["lambda_m"] == 1.0
    narrow = {**DEFAULT_SPACE, "learning_rate": {"loguniform": [2e-3, 3e-3]}}
    point, outside = base_point(narrow, Config())
    assert point is None and outside == ["learning_rate=0.001"]


def test_the_searched_head_widths_are_those_the_efficient_attention_kernel_takes():
    import random

    from tuning.space import DEFAULT_SPACE, draw, to_tune

    rng = random.Random(0)
    widths = {draw(DEFAULT_SPACE, rng)["head_width"] for _ in range(200)}
    assert widths == {8, 12, 16}  # multiples of 4 (float32 on compute capability ≥ 8)
    domain = to_tune(DEFAULT_SPACE)["head_width"]
    assert {domain.sample() for _ in range(200)} == {8, 12, 16}


def test_tpe_starts_proposing_after_a_third_of_the_trials():
    from tuning.study import startup_trials

    assert [startup_trials(n) for n in (2, 8, 12, 64)] == [2, 3, 4, 10]


def test_the_paper_preset_is_the_published_setting():
    from tuning.space import draw, load_space, trial_overrides
    from ucrn.config import Config, apply_overrides

    space = load_space("paper")
    assert (space["urm_layers"], space["crm_layers"], space["heads"]) == (5, 5, 3)
    assert space["learning_rate"] == {"choice": [1e-3, 2e-3]}
    config = apply_overrides(Config(), trial_overrides(draw(space, random.Random(0)), Config()))
    assert config.model.width == 30 and config.model.heads == 3  # 3 heads of 10
    assert 0.5 <= config.train.lambda_m <= 2.0 and config.train.batch_size in (16, 32)
    assert "urm_layers" not in load_space("paper", fixed=["urm_layers"])


def test_an_existing_experiment_needs_resume(capsys, tiny_mosi, tmp_path):
    (tmp_path / "taken").mkdir()
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--storage", str(tmp_path),
                             "--name", "taken")
    assert "pass --resume" in line


def test_a_resumed_search_keeps_its_objectives(capsys, tiny_mosi, tmp_path):
    import optuna

    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "tuner.pkl").touch()  # an interrupted experiment
    study = optuna.create_study(study_name="exp", storage=f"sqlite:///{experiment}/study.db",
                                directions=["minimize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["valid_MAE", "valid_robust_MAE"])
    capsys.readouterr()  # Optuna's own log line
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--storage", str(tmp_path),
                             "--name", "exp", "--resume", "--metric", "valid_MAE")
    assert "optimises valid_MAE and valid_robust_MAE, not valid_MAE" in line
    assert "--metric valid_MAE --metric valid_robust_MAE" in line


def test_a_study_storage_that_is_no_url_fails_before_ray(capsys, tiny_mosi, tmp_path):
    line = _fails_before_ray(capsys, "--data", str(tiny_mosi), "--storage", str(tmp_path),
                             "--study-storage", "study.db")
    assert "--study-storage 'study.db' is not a database URL" in line


# --------------------------------------------------------------------------- searches


def test_ray_listens_on_loopback_only(ray_session):
    ray_processes = psutil.Process().children(recursive=True)
    pids = {p.pid for p in ray_processes}
    listening = [c for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "found no listening socket of Ray"
    assert {c.laddr.ip for c in listening} <= LOOPBACK
    assert ray_session.dashboard_url.startswith("http://127.0.0.1:")


def _listening_addresses(root: psutil.Process) -> set[str]:
    """The addresses every process of ``root``'s tree listens on, now."""
    try:
        pids = {root.pid} | {p.pid for p in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _search_watching_sockets(tiny_mosi, tmp_path, workers: int,
                             environment=None) -> tuple[set[str], str]:
    """Run a search of two trials in a subprocess; the addresses its process tree listened
    on while it ran (polled every 0.2 s), and its stderr. The search must succeed and leave
    no rendezvous file behind."""
    stores = Path(tempfile.gettempdir()).glob
    stores_before = set(stores("ucrn-rendezvous-*"))
    driver = subprocess.Popen(
        [*SEARCH, "--data", str(tiny_mosi), *TINY_SEARCH, "--max-concurrent", "1",
         "--workers-per-trial", str(workers), "--cpus-per-worker", "0.5",
         "--storage", str(tmp_path), "--name", "exp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=environment)
    root, seen = psutil.Process(driver.pid), set()
    deadline = time.monotonic() + 400
    while driver.poll() is None and time.monotonic() < deadline:
        seen |= _listening_addresses(root)
        time.sleep(0.2)
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGKILL)
    _, err = driver.communicate()
    assert driver.returncode == 0, err[-2000:]
    assert set(stores("ucrn-rendezvous-*")) == stores_before
    return seen, err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_nothing_a_search_starts_listens_beyond_loopback(tiny_mosi, tmp_path, workers):
    seen, _ = _search_watching_sockets(tiny_mosi, tmp_path, workers)
    assert seen, "found no listening socket at all"
    assert seen <= LOOPBACK, f"listening beyond loopback: {seen - LOOPBACK}"


@pytest.fixture(params=["another Ray", "a stale note", "a live ray start cluster"])
def neighbour(request):
    """What else a machine has: another Ray instance; Ray's note of the latest ``ray start``
    cluster naming one long gone; or a live ``ray start`` cluster (and its note). The note
    lives in a temporary RAY_TMPDIR, not the machine's; the environment for the search is
    yielded, and whatever was started is stopped by its PID afterwards."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ucrn-"))  # short: Ray's socket paths live there
    environment = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    (ray_tmp / "ray").mkdir()
    try:
        if request.param == "another Ray":
            other = subprocess.Popen([sys.executable, str(ROOT / "tests" / "another_ray.py")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=environment)
            try:
                assert other.stdout.readline().strip() == "up"
                yield environment
            finally:
                other.terminate()
                other.wait(timeout=60)
        elif request.param == "a stale note":
            (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:6380")
            yield environment
        else:
            nodes = {**environment, "UCRN_NODES_STATE": str(ray_tmp / "nodes.json")}
            started = subprocess.run([*NODES, "start", "--workers", "0"], env=nodes,
                                     capture_output=True, text=True, timeout=180)
            try:
                assert started.returncode == 0, started.stderr[-2000:]
                assert (ray_tmp / "ray" / "ray_current_cluster").exists()
                yield environment
            finally:
                subprocess.run([*NODES, "stop"], env=nodes, timeout=120)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_data_parallel_trials_follow_each_other_beside(neighbour, tiny_mosi, tmp_path,
                                                        request):
    # Ray Train's placement-group cleaner asks the state API about the trial's controller.
    # Looked up on the machine, the API was the wrong one (or none): the cleaner gave up and
    # the first trial's workers kept their CPUs, so the second trial waited for ever.
    _, err = _search_watching_sockets(tiny_mosi, tmp_path, workers=2, environment=neighbour)
    trials = pd.read_csv(tmp_path / "exp" / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}
    if request.node.callspec.params["neighbour"] != "a stale note":  # another Ray runs
        assert "note: another Ray runs on this machine" in err


def test_the_dashboard_refuses_a_client_without_the_token(ray_session):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_session.dashboard_url}/api/version", timeout=10)
    assert refused.value.code == 401
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{ray_session.dashboard_url}/api/version",
                                     headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(request, timeout=10).status == 200


@pytest.mark.slow
def test_a_search_writes_its_tables_and_a_usable_best_config(ray_session, tiny_mosi, tmp_path,
                                                             capsys):
    assert _search("--data", str(tiny_mosi), *TINY_SEARCH[:-2], "--finalists", "1",
                   "--finalist-seeds", "2", "--winner-seeds", "3", "--storage", str(tmp_path),
                   "--name", "exp") == 0
    experiment = tmp_path / "exp"
    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}
    # the paper's trial and the best other one trained again from another seed, two each,
    # and then the race's leader from a third (a slot the race left idle may have given the
    # paper's configuration its third ahead of need, whichever leads at the end)
    reran = trials
    assert 3 in set(reran["seeds"]) and set(reran["seeds"]) <= {2, 3}
    assert len(list((experiment / "finalists").glob("*.json"))) == reran["seeds"].sum() - 2
    # as trials of the search's own experiment, which had no experiment of their own to start
    assert not (experiment / "finalists" / "ray").exists()
    assert (reran["valid_MAE std"] > 0).all()
    # one trial ran the paper's configuration (the base config: defaults with --set)
    paper = trials[trials["paper"]]
    assert len(paper) == 1
    defaults = Config()
    assert paper.iloc[0]["lambda_m"] == defaults.train.lambda_m
    assert paper.iloc[0]["learning_rate"] == defaults.train.learning_rate
    assert paper.iloc[0]["heads"] * paper.iloc[0]["head_width"] == defaults.model.width
    assert paper.iloc[0]["head_width"] == 10  # between the searched widths: still a trial
    assert (trials[~trials["paper"]]["head_width"] % 4 == 0).all()
    record = json.loads((experiment / "best.json").read_text())
    assert record["search"]["paper_trial"]["trial"].startswith(paper.iloc[0]["trial"])
    assert record["search"]["metric"] == "valid_MAE"
    # the paper's configuration unless the other is better on the seed mean with 90 %
    # confidence: never worse than the paper's trial on that mean
    chosen = trials[trials["trial"] == record["search"]["trial"][:8]].iloc[0]
    decision = record["search"]["seeds"]["decision"]
    assert decision["kept_paper"] == bool(chosen["paper"])
    assert decision["kept_paper"] == (decision["confidence"] < 0.9)
    assert chosen["valid_MAE mean"] <= paper.iloc[0]["valid_MAE mean"]
    out = capsys.readouterr().out
    assert ("best.json keeps the paper's configuration" if decision["kept_paper"]
            else "best.json takes") in out
    seeds = record["search"]["seeds"]["chosen"]
    assert seeds["seeds"] == 3 and seeds["mean"] == pytest.approx(chosen["valid_MAE mean"])
    assert chosen["seeds"] == 3  # the winner's seeds went to the one best.json took
    assert record["metrics"]["valid"]["MAE"] == pytest.approx(chosen["valid_MAE"])
    assert set(record["metrics"]["test"]) >= {"MAE", "Corr", "Non0_acc_2"}
    config = load_config(experiment / "best.json")  # what ucrn train --config takes
    # the config's full budget (the paper's 40 epochs, patience 10), the trial's length kept
    assert config.model.urm_layers == 1 and config.train.epochs == defaults.train.epochs
    assert config.train.patience == defaults.train.patience
    length = record["search"]["trial_epochs"]
    assert length == chosen["epochs"]
    repeated = fit(apply_overrides(config, {"epochs": length, "patience": length}),
                   load_dataset(tiny_mosi), device="cpu", score_test=False)
    assert repeated.valid["MAE"] == pytest.approx(record["metrics"]["valid"]["MAE"], rel=1e-3)
    # the finalist's rerun had the next seed, which the evaluator's run of that seed repeats
    rerun = json.loads(next((experiment / "finalists").glob(
        f"{record['search']['trial'][:8]}-seed1.json")).read_text())
    again = fit(apply_overrides(config, {"epochs": length, "patience": length, "seed": 1}),
                load_dataset(tiny_mosi), device="cpu", score_test=False)
    assert again.valid["MAE"] == pytest.approx(rerun["value"], rel=1e-3)
    assert sorted(p.name for p in (experiment / "best").iterdir()) == [
        "config.json", "metrics.json", "model.pt"]
    assert "test (scored once)" in out
    url = f"sqlite:///{experiment / 'study.db'}"
    assert f"optuna-dashboard {url}" in out
    assert (experiment / "history.png").exists()

    import optuna

    study = optuna.load_study(study_name="exp", storage=url)  # what optuna-dashboard opens
    by_trial = {round(row.lambda_m, 9): row for row in trials.itertuples()}
    assert len(study.trials) == len(trials)
    for trial in study.trials:
        row = by_trial[round(trial.params["lambda_m"], 9)]
        assert len(trial.intermediate_values) == row.epochs  # one value per epoch
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(row.valid_MAE)  # the trial's best epoch
        else:
            assert trial.state == optuna.trial.TrialState.PRUNED and row.epochs < 2


@pytest.mark.slow
def test_a_search_with_two_objectives_writes_its_pareto_front(ray_session, tiny_mosi,
                                                                tmp_path, capsys):
    assert _search("--data", str(tiny_mosi), *TINY_SEARCH, "--num-samples", "3",
                   "--metric", "valid_MAE", "--metric", "valid_robust_Non0_acc_2",
                   "--storage", str(tmp_path), "--name", "two") == 0
    experiment = tmp_path / "two"
    # Trial ids are hex: one such as 12345e67 would read as a number.
    trials = pd.read_csv(experiment / "trials.csv", dtype={"trial": str})
    front = pd.read_csv(experiment / "pareto.csv", dtype={"trial": str})
    assert (experiment / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    mae, robust = "valid_MAE", "valid_robust_Non0_acc_2"
    assert trials[[mae, robust]].notna().all().all()
    # The front: no trial beats a front trial on both; every other trial is beaten by one.
    for row in trials.itertuples():
        beaten = ((front[mae] <= getattr(row, mae)) & (front[robust] >= getattr(row, robust))
                  & ((front[mae] < getattr(row, mae)) | (front[robust] > getattr(row, robust))))
        assert beaten.any() != (row.trial in set(front["trial"]))
    record = json.loads((experiment / "best.json").read_text())
    assert record["search"]["objectives"] == [mae, robust]
    assert record["search"]["trial"][:8] in set(front["trial"])
    assert record["metrics"]["valid"]["MAE"] == pytest.approx(trials[mae].min())
    assert "Pareto front of valid_MAE and valid_robust_Non0_acc_2" in capsys.readouterr().out

    import optuna

    study = optuna.load_study(study_name="two", storage=f"sqlite:///{experiment / 'study.db'}")
    assert study.metric_names == [mae, robust]
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    by_trial = {round(row.lambda_m, 9): row for row in trials.itertuples()}
    for trial in study.trials:
        row = by_trial[round(trial.params["lambda_m"], 9)]
        assert len(trial.user_attrs["epochs"][robust]) == row.epochs  # each epoch's values
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.values == pytest.approx([getattr(row, mae), getattr(row, robust)])


def _completed_trials(experiment: Path) -> set[str]:
    done = set()
    for result in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and lines[-1].get("epoch") == 2:
            done.add(lines[-1]["trial_id"])
    return done


def _terminated_in_snapshot(experiment: Path) -> set[str]:
    """Trials the experiment's latest saved state records as finished."""
    terminated = set()
    for snapshot in experiment.glob("experiment_state-*.json"):
        try:
            trials = json.loads(snapshot.read_text())["trial_data"]
        except (json.JSONDecodeError, KeyError, OSError):
            continue  # being rewritten
        terminated |= {state["trial_id"] for state in (json.loads(t[0]) for t in trials)
                       if state["status"] == "TERMINATED"}
    return terminated


def _trial_errors(experiment: Path) -> str:
    return "\n".join(f"{error.parent.name}: {error.read_text()[-1500:]}"
                     for error in experiment.glob("*/error.txt")) or "no error.txt"


@pytest.mark.slow
def test_a_killed_search_resumes_and_keeps_every_completed_trial(ray_session, tiny_mosi,
                                                                 tmp_path):
    args = ["--data", str(tiny_mosi), "--num-samples", "4", "--max-concurrent", "1",
            "--epochs", "2", "--grace-period", "2", "--set", "urm_layers=1",
            "--set", "crm_layers=1", "--storage", str(tmp_path), "--name", "exp",
            "--address", ray_session.address]
    # Tune saves the experiment's state every 10 s or more; a tiny search would end before a
    # saved state recorded its first trial, so this one saves it every second.
    driver = subprocess.Popen([*PACED_SEARCH, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    experiment = tmp_path / "exp"
    deadline = time.monotonic() + 240
    while not _completed_trials(experiment) and time.monotonic() < deadline:
        assert driver.poll() is None, "the search ended before it could be killed"
        time.sleep(1)
    completed = _completed_trials(experiment)
    assert completed, "no trial completed in time"
    while not completed <= _terminated_in_snapshot(experiment) and time.monotonic() < deadline:
        time.sleep(0.2)  # the experiment snapshot, which --resume reads, follows the trial
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = datetime.datetime.now()

    resumed = subprocess.run([*SEARCH, *args, "--resume"], capture_output=True, text=True,
                             timeout=420)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 4
    assert {t[:8] for t in completed} <= set(trials["trial"])
    assert set(trials["status"]) == {"done"}, _trial_errors(experiment)

    import optuna

    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{experiment}/study.db")
    ended = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,
                                     optuna.trial.TrialState.PRUNED))
    # --resume went on with the same study. A trial that ended after the last saved state
    # (Tune's) is run again, so the study may hold more trials than the search.
    assert ended[0].datetime_complete < killed_at
    assert len(ended) >= 4


@pytest.mark.slow
def test_a_worker_that_fails_once_is_retried_from_its_checkpoint(tiny_mosi, tmp_path):
    marker = tmp_path / "failed-once"
    finished = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fail_once_search.py"), str(marker),
         "--data", str(tiny_mosi), "--num-samples", "1", "--epochs", "3",
         "--grace-period", "3", "--set", "urm_layers=1", "--set", "crm_layers=1",
         "--storage", str(tmp_path), "--name", "exp"],
        capture_output=True, text=True, timeout=420,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert marker.exists()  # the failure happened
    record = json.loads((tmp_path / "exp" / "best.json").read_text())
    assert record["search"]["best_epoch"] >= 1
    history = [json.loads(line) for line in
               next((tmp_path / "exp").glob("*/result.json")).read_text().splitlines()]
    epochs = [entry["epoch"] for entry in history]
    assert epochs[-1] == 3  # the trial finished all its epochs
    assert epochs.count(1) == 1  # epoch 1 was not redone: the restart used its checkpoint


@pytest.mark.slow
def test_a_search_whose_trials_stop_reporting_fails_with_one_line(tiny_mosi, tmp_path):
    stalled = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "stalled_search.py"), "--data", str(tiny_mosi),
         *TINY_SEARCH, "--stall-minutes", "0.2", "--storage", str(tmp_path), "--name", "exp"],
        capture_output=True, text=True, timeout=300,
    )
    assert stalled.returncode == 2, stalled.stderr[-2000:]
    last = stalled.stderr.strip().splitlines()[-1]
    assert last.startswith("search: error: no trial reported for 0.2 minutes"), last
    assert last.endswith("continue with --resume")
    assert not (tmp_path / "exp" / "best.json").exists()


def _wait_for(condition, driver: subprocess.Popen, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert driver.poll() is None, f"the command ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds:g} s"
        time.sleep(0.1)


def _checkpointed_trials(experiment: Path) -> int:
    """Trials that have reported an epoch. A trial writes its checkpoint to the storage as it
    reports; the driver's records (result.json) follow with Tune's next saved state."""
    return len({checkpoint.parent for checkpoint in experiment.glob("*/checkpoint_*")})


def _ray_started(driver: subprocess.Popen) -> bool:
    """Ray is starting: the driver has started a process of its own."""
    return bool(psutil.Process(driver.pid).children(recursive=True))


# Paced, a trial's epochs take 5 s: the signal sent after its first lands inside it.
INTERRUPTED_EPOCHS = 10
INTERRUPTED_SEARCH = ["--num-samples", "2", "--epochs", str(INTERRUPTED_EPOCHS),
                      "--grace-period", str(INTERRUPTED_EPOCHS), "--max-concurrent", "1",
                      "--set", "urm_layers=1", "--set", "crm_layers=1", "--winner-seeds", "3"]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["while Ray starts", "in the first trial"])
def test_ctrl_c_at_any_moment_exits_130_scores_nothing_and_resumes(tiny_mosi, tmp_path,
                                                                    moment):
    args = ["--data", str(tiny_mosi), *INTERRUPTED_SEARCH, "--storage", str(tmp_path),
            "--name", "exp"]
    driver = subprocess.Popen([*PACED_SEARCH, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    experiment = tmp_path / "exp"
    if moment == "while Ray starts":
        _wait_for(lambda: _ray_started(driver), driver, "Ray's start", seconds=60)
    else:
        _wait_for(lambda: _checkpointed_trials(experiment) >= 1, driver, "first epoch")
    driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "search: interrupted; continue with --resume"
    assert not (experiment / "best.json").exists()  # nothing was scored on test
    if moment == "while Ray starts":
        return  # no experiment yet: a new search starts afresh
    trials = pd.read_csv(experiment / "trials.csv")
    assert trials.loc[0, "status"] == "interrupted"
    assert trials.loc[0, "epochs"] < INTERRUPTED_EPOCHS
    resumed = subprocess.run([*SEARCH, *args, "--resume"], capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}
    assert set(trials["epochs"]) == {INTERRUPTED_EPOCHS}  # the interrupted one went on
    assert set(trials["seeds"]) == {3}  # both finalists, three seeds each
    assert json.loads((experiment / "best.json").read_text())["search"]["seeds"][
        "chosen"]["seeds"] == 3


@pytest.mark.slow
def test_ctrl_c_in_a_finalists_rerun_resumes_with_the_reruns_left(tiny_mosi, tmp_path):
    args = ["--data", str(tiny_mosi), *INTERRUPTED_SEARCH, "--storage", str(tmp_path),
            "--name", "exp"]
    driver = subprocess.Popen([*PACED_SEARCH, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    experiment = tmp_path / "exp"
    # Two trials; the third to report an epoch is a finalist's rerun.
    _wait_for(lambda: _checkpointed_trials(experiment) >= 3, driver, "a rerun's first epoch")
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err[-2000:]
    assert not (experiment / "best.json").exists()
    assert len(list((experiment / "finalists").glob("*.json"))) < 4
    resumed = subprocess.run([*SEARCH, *args, "--resume"], capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}  # no rerun among them
    assert set(trials["seeds"]) == {3}
    reruns = [json.loads(p.read_text()) for p in (experiment / "finalists").glob("*.json")]
    assert len(reruns) == 4 and {r["epochs"] for r in reruns} == {INTERRUPTED_EPOCHS}
    assert not (experiment / "finalists" / "ray").exists()  # all in the search's experiment


def test_the_paper_trial_can_be_left_out(tiny_mosi, tmp_path):
    from tuning.search import plan_search

    given = ["--data", str(tiny_mosi), "--storage", str(tmp_path)]
    assert plan_search(given).base_point["urm_layers"] == 5
    assert plan_search([*given, "--no-paper-trial"]).base_point is None
    fixed = plan_search([*given, "--set", "urm_layers=2"]).base_point
    assert "urm_layers" not in fixed  # fixed for every trial, no longer searched


@pytest.mark.parametrize("space, message", [
    ({"heads": {"choice": [2, "x"]}}, "heads='x': give a whole number"),
    ({"heads": [2, 3]}, "heads=[2, 3]: give a whole number"),
    ({"head_width": {"choice": [[8]]}}, "head_width=[8]: give a whole number"),
])
def test_a_space_value_of_the_wrong_type_is_one_line(capsys, tiny_mosi, tmp_path, space,
                                                     message):
    from tuning.search import main

    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    line = fails_before_ray(capsys, main, "search", "--data", str(tiny_mosi),
                            "--space", str(path), "--storage", str(tmp_path))
    assert message in line


@pytest.mark.slow
def test_a_finalists_reruns_train_as_one_stack_where_stacks_pay(ray_session, tiny_mosi,
                                                                tmp_path, monkeypatch):
    import tuning.finalists
    import tuning.search

    monkeypatch.setattr(tuning.search, "stacks_reruns", lambda resources: True)  # a GPU's
    assert _search("--data", str(tiny_mosi), *TINY_SEARCH[:-2], "--finalists", "2",
                   "--finalist-seeds", "3", "--winner-seeds", "3", "--storage", str(tmp_path),
                   "--name", "exp") == 0
    experiment = tmp_path / "exp"
    reruns = [json.loads(p.read_text()) for p in (experiment / "finalists").glob("*.json")]
    assert len(reruns) == 4 and all(math.isfinite(r["value"]) for r in reruns)
    trials = pd.read_csv(experiment / "trials.csv")
    assert set(trials["seeds"]) == {3}
    for _, row in trials.iterrows():  # each trial's own seed and its two reruns
        values = [row["valid_MAE"]] + [r["value"] for r in reruns
                                       if r["trial"][:8] == row["trial"]]
        assert row["valid_MAE mean"] == pytest.approx(sum(values) / 3)


def test_stacked_reruns_are_written_one_file_a_seed(tmp_path):
    from types import SimpleNamespace

    from tuning.finalists import BestOfRun, stacked_reruns

    pending = [{"trial": t, "seed": s, "params": {}, "epochs": 2}
               for t in ("aaaaaaaa1", "bbbbbbbb2") for s in (1000, 2000)]
    trials = stacked_reruns(pending, 2)
    assert [t["seeds"] for t in trials] == [[1000, 2000], [1000, 2000]]
    assert len(stacked_reruns(pending, 1)) == 4
    keeper = BestOfRun(tmp_path, "valid_MAE")
    records = [json.dumps({"valid": {"MAE": 0.9}, "best_epoch": 2, "epochs": 2}),
               json.dumps({"error": "training diverged at epoch 1"})]
    keeper.on_trial_complete(0, [], SimpleNamespace(
        trial_id="t", config={"rerun": trials[0]},
        last_result={"done": True, "run_records": json.dumps(records)}))
    assert json.loads((tmp_path / "aaaaaaaa-seed1000.json").read_text())["value"] == 0.9
    assert not (tmp_path / "aaaaaaaa-seed2000.json").exists()  # still to do

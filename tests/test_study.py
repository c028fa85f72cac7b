"""The search's Optuna study in a database: each epoch an intermediate value, a trial's
value its best epoch, trials stopped early pruned, failed ones failed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from tuning.study import StudySearch, check_study_url, study_url, what_mattered
from ucrn.errors import UcrnError


def _report(search: StudySearch, trial: str, values: list[float]) -> dict:
    result = {}
    for epoch, value in enumerate(values, start=1):
        result = {"valid_MAE": value, "training_iteration": epoch, "epoch": epoch}
        search.on_trial_result(trial, result)
    return result


def test_the_study_records_epochs_best_values_pruned_and_failed_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = StudySearch(url=url, study_name="exp", epochs=3, seed=0, concurrent=2, trials=8,
                         space={"x": tune.uniform(0.0, 1.0)}, metrics=["valid_MAE"])
    for trial in ("full", "stopped", "failed"):
        assert 0.0 <= search.suggest(trial)["x"] <= 1.0
    search.on_trial_complete("full", _report(search, "full", [1.2, 0.9, 1.0]))
    _report(search, "stopped", [1.5])
    # Tune hands the result on which ASHA stops a trial to on_trial_complete only.
    search.on_trial_complete("stopped", {"valid_MAE": 1.4, "training_iteration": 2,
                                         "epoch": 2})
    _report(search, "failed", [1.1])
    search.on_trial_complete("failed", None, error=True)

    study = optuna.load_study(study_name="exp", storage=url)
    full, stopped, failed = study.get_trials(deepcopy=False)
    assert full.state == TrialState.COMPLETE
    assert full.value == pytest.approx(0.9)  # its best epoch, as its checkpoint is chosen
    assert full.intermediate_values == {1: 1.2, 2: 0.9, 3: 1.0}
    assert stopped.state == TrialState.PRUNED
    assert stopped.intermediate_values == {1: 1.5, 2: 1.4}
    assert failed.state == TrialState.FAIL
    assert study.direction == optuna.study.StudyDirection.MINIMIZE


def test_a_maximised_metric_keeps_its_highest_epoch(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = StudySearch(url=url, study_name="exp", epochs=2, seed=0, concurrent=1, trials=8,
                         space={"x": tune.uniform(0.0, 1.0)}, metrics=["valid_Non0_acc_2"])
    search.suggest("a")
    for epoch, value in ((1, 0.71), (2, 0.69)):
        result = {"valid_Non0_acc_2": value, "training_iteration": epoch, "epoch": epoch}
        search.on_trial_result("a", result)
    search.on_trial_complete("a", result)
    assert optuna.load_study(study_name="exp", storage=url).best_value == pytest.approx(0.71)


def test_where_the_study_lives(tmp_path):
    assert study_url(str(tmp_path / "exp"), None) == f"sqlite:///{tmp_path / 'exp' / 'study.db'}"
    assert study_url("s3://bucket/exp", None) is None  # in memory: no file system there
    assert study_url(str(tmp_path), "postgresql://u@127.0.0.1/db") == "postgresql://u@127.0.0.1/db"


def test_a_study_storage_that_is_no_url_is_refused():
    with pytest.raises(UcrnError, match="not a database URL"):
        check_study_url("study.db")


# ------------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (its data in a temporary folder), stopped
    by its PID. CI installs the server and sets UCRN_REQUIRE_POSTGRES=1, so that there this
    test cannot be skipped."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("UCRN_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL's server is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL's server is not installed; CI installs it")
    # The server refuses to run as root; there it runs as the postgres user.
    user = "postgres" if os.geteuid() == 0 else None
    home = Path(tempfile.mkdtemp(prefix="ucrn-pg-"))
    if user:
        shutil.chown(home, user)
    data, port = home / "data", _free_port()
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ucrn"],
                   user=user, check=True, capture_output=True, timeout=120)
    server = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(home)], user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.2)
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "ucrn", "study"], check=True, capture_output=True, timeout=60)
        yield f"postgresql://ucrn@127.0.0.1:{port}/study"
    finally:
        server.send_signal(signal.SIGINT)  # "fast" shutdown (clients may still be connected)
        try:
            server.wait(timeout=60)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("url, message", [
    ("mysql://u@127.0.0.1/x", "no installed driver can open it (No module named 'MySQLdb')"),
    ("nosuch://x", "is not a database URL"),
    ("postgresql+psycopg://u@127.0.0.1:1/x", "cannot be opened"),  # nothing listens there
])
def test_a_study_storage_that_cannot_be_opened_is_refused(url, message):
    with pytest.raises(UcrnError, match=re.escape(message)):
        check_study_url(url)


def test_the_study_lives_in_postgresql(postgres):
    search = StudySearch(url=postgres, study_name="exp", epochs=2, seed=0, concurrent=1, trials=8,
                         space={"x": tune.uniform(0.0, 1.0)}, metrics=["valid_MAE"])
    search.suggest("a")
    search.on_trial_complete("a", _report(search, "a", [1.3, 1.1]))
    search.suggest("b")
    search.on_trial_complete("b", _report(search, "b", [1.4]))
    study = optuna.load_study(study_name="exp", storage=postgres)
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.best_value == pytest.approx(1.1)
    assert study.trials[0].intermediate_values == {1: 1.3, 2: 1.1}


def test_what_mattered_draws_the_history_and_ranks_the_parameters(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0)}
    search = StudySearch(url=url, study_name="exp", epochs=1, seed=0, concurrent=1, trials=8,
                         space=space, metrics=["valid_MAE"])
    assert what_mattered(url, "exp", tmp_path)[0].empty  # nothing finished yet
    for index in range(6):
        config = search.suggest(f"t{index}")
        search.on_trial_complete(f"t{index}", _report(search, f"t{index}",
                                                      [1.0 + config["x"] + 0.01 * config["y"]]))
    importances, over = what_mattered(url, "exp", tmp_path)
    assert over == "the 6 trials that ran all their epochs"
    assert set(importances["parameter"]) == {"x", "y"}
    assert importances["valid_MAE"].sum() == pytest.approx(1.0)
    assert importances.iloc[0]["parameter"] == "x"  # it drives the score
    for name in ("history.png", "importance.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_objectives_are_told_at_the_first_metrics_best_epoch(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    metrics = ["valid_MAE", "valid_robust_Non0_acc_2"]
    search = StudySearch(url=url, study_name="exp", epochs=3, seed=0, concurrent=1, trials=8,
                         space={"x": tune.uniform(0.0, 1.0)}, metrics=metrics)
    search.suggest("full")
    result = {}
    for epoch, (mae, robust) in enumerate(((1.2, 0.60), (0.9, 0.55), (1.0, 0.70)), start=1):
        result = {"valid_MAE": mae, "valid_robust_Non0_acc_2": robust,
                  "training_iteration": epoch, "epoch": epoch}
        search.on_trial_result("full", result)
    search.on_trial_complete("full", result)
    search.suggest("stopped")
    search.on_trial_complete("stopped", {"valid_MAE": 1.5, "valid_robust_Non0_acc_2": 0.5,
                                         "training_iteration": 1, "epoch": 1})

    study = optuna.load_study(study_name="exp", storage=url)
    assert study.metric_names == metrics
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    full, stopped = study.trials
    assert full.values == pytest.approx([0.9, 0.55])  # both at epoch 2, its checkpoint
    assert full.user_attrs["epochs"]["valid_robust_Non0_acc_2"] == [[1, 0.6], [2, 0.55],
                                                                    [3, 0.7]]
    assert stopped.state == TrialState.PRUNED
    assert stopped.user_attrs["epochs"]["valid_MAE"] == [[1, 1.5]]


def test_what_mattered_ranks_the_parameters_for_each_objective(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0)}
    metrics = ["valid_MAE", "valid_Corr"]
    # trials=30: ten random start-up trials, so that the twelve below spread over the space
    search = StudySearch(url=url, study_name="exp", epochs=1, seed=0, concurrent=1, trials=30,
                         space=space, metrics=metrics)
    for index in range(12):
        config = search.suggest(f"t{index}")
        result = {"valid_MAE": 1.0 + config["x"] + 0.01 * config["y"],  # x drives MAE
                  "valid_Corr": config["y"] + 0.01 * config["x"],  # and y the correlation
                  "training_iteration": 1, "epoch": 1}
        search.on_trial_result(f"t{index}", result)
        search.on_trial_complete(f"t{index}", result)
    importances = what_mattered(url, "exp", tmp_path)[0].set_index("parameter")
    assert list(importances.columns) == metrics
    assert importances.loc["x", "valid_MAE"] > importances.loc["y", "valid_MAE"]
    assert importances.loc["y", "valid_Corr"] > importances.loc["x", "valid_Corr"]


@pytest.mark.parametrize("metrics", [["valid_MAE"], ["valid_MAE", "valid_Corr"]])
def test_with_few_trials_to_the_end_all_compare_at_the_epoch_all_reached(tmp_path, metrics):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0)}
    search = StudySearch(url=url, study_name="exp", epochs=4, seed=0, concurrent=1, trials=8,
                         space=space, metrics=metrics)
    for index in range(20):
        config = search.suggest(f"t{index}")
        score = 1.0 + config["x"] + 0.01 * config["y"]
        epochs = 4 if index < 3 else 2 + index % 2  # ASHA stopped the others at 2 or 3
        result = {}
        for epoch in range(1, epochs + 1):
            result = {"valid_MAE": score + 1.0 / epoch, "valid_Corr": 0.5,
                      "training_iteration": epoch, "epoch": epoch}
            search.on_trial_result(f"t{index}", result)
        search.on_trial_complete(f"t{index}", result)
    importances, over = what_mattered(url, "exp", tmp_path)
    assert over == "all 20 trials at epoch 2, which each of them reached"
    assert importances.iloc[0]["parameter"] == "x"  # it drives the score
    assert (tmp_path / "importance.png").exists()


STRAY_LINE_SCRIPT = """
import sys
from ray import tune
from tuning.study import StudySearch, what_mattered
from pathlib import Path
folder = Path(sys.argv[1])
url = f"sqlite:///{folder}/study.db"
search = StudySearch(url=url, study_name="exp", epochs=1, seed=0, concurrent=1, trials=8,
                     space={"x": tune.uniform(0.0, 1.0)}, metrics=["valid_MAE"])
for index in range(3):
    config = search.suggest(f"t{index}")
    result = {"valid_MAE": config["x"], "training_iteration": 1, "epoch": 1}
    search.on_trial_result(f"t{index}", result)
    search.on_trial_complete(f"t{index}", result)
print("importances", len(what_mattered(url, "exp", folder)[0]))
"""


def test_what_mattered_prints_no_stray_study_line(tmp_path):
    # in a process of its own: Optuna's log handler keeps the stderr it first saw
    finished = subprocess.run([sys.executable, "-c", STRAY_LINE_SCRIPT, str(tmp_path)],
                              capture_output=True, text=True, timeout=120, check=True)
    assert "importances 1" in finished.stdout
    assert "A new study created in RDB" in finished.stderr  # Optuna's own lines still show
    assert "A new study created in memory" not in finished.stderr

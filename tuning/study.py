"""The search as an Optuna study in a database, which ``optuna.load_study`` and
optuna-dashboard open during and after the search.

By default the study is a SQLite file in the experiment folder (``study.db``), named after
the experiment; ``--study-storage URL`` puts it elsewhere (e.g. a PostgreSQL database on the
head node). Each epoch is an intermediate value (its step is the epoch); a trial's value is
its best epoch's score, the one its checkpoint is chosen by; a trial ASHA stopped before its
last epoch is recorded as pruned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from ucrn.errors import UcrnError
from ucrn.files import atomic_write
from ucrn.metrics import is_better

STUDY_FILE = "study.db"


def study_url(experiment: str, study_storage: str | None) -> str | None:
    """Where the study lives: ``study_storage``, else SQLite in a local experiment folder;
    ``None`` (in memory) for an experiment under a URI such as ``s3://``."""
    if study_storage:
        return study_storage
    if "://" in experiment:
        return None
    return f"sqlite:///{Path(experiment).resolve() / STUDY_FILE}"


def check_study_url(url: str) -> None:
    """A database URL SQLAlchemy can read (checked before Ray starts)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise UcrnError(f"--study-storage {url!r} is not a database URL; give e.g. "
                        "sqlite:///path/study.db or postgresql://user@127.0.0.1/ucrn") from None


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {url}"


class StudySearch(OptunaSearch):
    """``OptunaSearch`` with the study in ``url`` (``None``: in memory) under ``study_name``.

    Optuna is told each trial's best epoch (not its last), in the metric's own direction,
    and a trial that ended before ``epochs`` without an error is pruned.
    """

    def __init__(self, *, url: str | None, study_name: str, epochs: int, seed: int,
                 concurrent: int, **kwargs: Any):
        import optuna

        storage = optuna.storages.RDBStorage(url) if url is not None else None
        # With trials running at once, the constant liar keeps TPE from sending them all to
        # the same region.
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=concurrent > 1)
        super().__init__(storage=storage, study_name=study_name, sampler=sampler, **kwargs)
        self._epochs = epochs
        self._best: dict[str, float] = {}
        self._last_step: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if is_better(self.metric, value, self._best.get(trial_id)):
            self._best[trial_id] = value
        self._last_step[trial_id] = result.get(TRAINING_ITERATION, 0)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or not result or error:
            return super().on_trial_complete(trial_id, result, error)
        if result.get(TRAINING_ITERATION, 0) > self._last_step.get(trial_id, 0):
            self.on_trial_result(trial_id, result)  # a trial stopped by ASHA: its last epoch
        if result.get("epoch", self._epochs) < self._epochs:  # stopped by the scheduler
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return None
        best = self._best.get(trial_id, result.get(self.metric))
        return super().on_trial_complete(trial_id, {**result, self.metric: best}, error)


def what_mattered(url: str, study_name: str, folder: Path) -> pd.DataFrame:
    """From the stored study: the optimisation history as ``history.png`` and, once two
    trials have finished with a value, Optuna's parameter importances (fANOVA) as a table
    and ``importance.png``, in ``folder``. The table is empty when there are too few."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    study = optuna.load_study(study_name=study_name, storage=url)
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    importances = pd.DataFrame(columns=["parameter", "importance"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures = {"history.png": plots.plot_optimization_history} if finished else {}
        if len(finished) >= 2:
            found = optuna.importance.get_param_importances(study)
            importances = pd.DataFrame(list(found.items()), columns=["parameter", "importance"])
            figures["importance.png"] = plots.plot_param_importances
        for name, plot in figures.items():
            figure = plot(study).figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            atomic_write(folder / name, lambda path, f=figure: f.savefig(path, dpi=120,
                                                                         format="png"))
            plt.close(figure)
    return importances

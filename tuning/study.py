"""The search as an Optuna study in a database, which ``optuna.load_study`` and
optuna-dashboard open during and after the search.

By default the study is a SQLite file in the experiment folder (``study.db``), named after
the experiment; ``--study-storage URL`` puts it elsewhere (e.g. a PostgreSQL database on the
head node). Each epoch is an intermediate value (its step is the epoch); a trial's value is
its best epoch's score, the one its checkpoint is chosen by; a trial stopped early before its
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
from ucrn.metrics import mode as metric_mode

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
        dialect = make_url(url).get_dialect()
    except ArgumentError:
        raise UcrnError(f"--study-storage {url!r} is not a database URL; give e.g. "
                        "sqlite:///path/study.db or postgresql://user@127.0.0.1/ucrn") from None
    except Exception as error:  # noqa: BLE001 - an unknown dialect: NoSuchModuleError
        raise UcrnError(f"--study-storage {url!r}: no database of that kind is known "
                        f"({' '.join(str(error).split())[:160]})") from None
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise UcrnError(f"--study-storage {url!r}: no installed driver can open it ({error}); "
                        "install the database's Python driver (PostgreSQL: pip install "
                        "'psycopg[binary]') or use sqlite:///") from None
    if dialect.name != "sqlite":  # a server: it must answer now, not after Ray has started
        from sqlalchemy import create_engine

        try:
            create_engine(url).connect().close()
        except Exception as error:  # noqa: BLE001 - refused, unknown host, bad password
            reason = " ".join(str(error).split("(Background on this error")[0].split())
            raise UcrnError(f"--study-storage {url!r} cannot be opened ({reason[:200]}); "
                            "is the database server running and the URL right?") from None


def check_same_objectives(url: str, study_name: str, metrics: tuple[str, ...]) -> None:
    """A resumed search optimises what its study does: the same ``--metric`` options, in the
    same order (a study this version did not name, or none yet, is not checked)."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return  # nothing to compare with (and SQLite would make an empty file)
    try:
        names = optuna.load_study(study_name=study_name, storage=url).metric_names
    except KeyError:
        return
    if names and list(names) != list(metrics):
        given = " ".join(f"--metric {name}" for name in names)
        raise UcrnError(f"--resume: this experiment optimises {' and '.join(names)}, not "
                        f"{' and '.join(metrics)}; resume it with {given}")


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {url}"


class StudySearch(OptunaSearch):
    """``OptunaSearch`` with the study in ``url`` (``None``: in memory) under ``study_name``.

    Optuna is told each trial's best epoch (not its last), chosen by the first of ``metrics``
    in its own direction, with every metric's value at that epoch; a trial that ended before
    ``epochs`` without an error is pruned. With two or more metrics the study has as many
    objectives, and since Optuna keeps no intermediate values for those, each trial's
    per-epoch values go in its user attribute ``epochs`` instead.
    """

    def __init__(self, *, url: str | None, study_name: str, metrics: list[str],
                 epochs: int, seed: int, concurrent: int, trials: int, **kwargs: Any):
        import optuna

        storage = optuna.storages.RDBStorage(url) if url is not None else None
        # With trials running at once, the constant liar keeps TPE from sending them all to
        # the same region. Its random start-up trials fit the budget (Optuna's 10 would
        # outnumber a small search's trials, which then never sees TPE propose one).
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=concurrent > 1,
                                             n_startup_trials=startup_trials(trials))
        modes = [metric_mode(metric) for metric in metrics]
        several = len(metrics) > 1
        self._metrics = list(metrics)  # before the study is set up: it names the objectives
        self._epochs, self._slots = epochs, concurrent
        self._best: dict[str, dict[str, float]] = {}  # trial → values at its best epoch
        self._curves: dict[str, dict[str, list]] = {}  # trial → metric → [[epoch, value]…]
        self._last_step: dict[str, int] = {}
        super().__init__(metric=metrics if several else metrics[0],
                         mode=modes if several else modes[0], storage=storage,
                         study_name=study_name, sampler=sampler, **kwargs)

    def _setup_study(self, mode: str | list[str]) -> None:
        import warnings

        import optuna

        super()._setup_study(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(self._metrics)  # the dashboard shows them

    def suggest(self, trial_id: str) -> dict | None:
        import warnings

        with warnings.catch_warnings():
            # The paper's trial may lie between a stepped range's points (tuning.space).
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            self._record_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Told to the study just before the search was killed, after Tune's last
            # snapshot: --resume replays the trial's last epochs; the study keeps its value.
            self._completed_trials.add(trial_id)

    def _record_result(self, trial_id: str, result: dict) -> None:
        first = self._metrics[0]
        values = {metric: result.get(metric) for metric in self._metrics}
        best = self._best.get(trial_id)
        if is_better(first, values[first], best[first] if best else None):
            self._best[trial_id] = values
        step = result.get(TRAINING_ITERATION, 0)
        self._last_step[trial_id] = step
        if len(self._metrics) > 1 and trial_id in self._ot_trials:
            curves = self._curves.setdefault(trial_id, {m: [] for m in self._metrics})
            for metric, value in values.items():
                curves[metric].append([step, value])
            self._ot_trials[trial_id].set_user_attr("epochs", curves)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or not result or error:
            return super().on_trial_complete(trial_id, result, error)
        if result.get(TRAINING_ITERATION, 0) > self._last_step.get(trial_id, 0):
            self.on_trial_result(trial_id, result)  # a trial stopped early: its last epoch
        if result.get("epoch", self._epochs) < self._epochs:  # stopped by the scheduler
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED,
                                skip_if_finished=True)  # see on_trial_result
            self._completed_trials.add(trial_id)
            return None
        best = self._best.get(trial_id, {m: result.get(m) for m in self._metrics})
        return super().on_trial_complete(trial_id, {**result, **best}, error)


def startup_trials(trials: int) -> int:
    """Random trials before TPE proposes: a third of the search (2 to 10); an enqueued
    trial (the paper's configuration) counts among them."""
    return max(2, min(10, round(trials / 3)))


def _sign(direction) -> int:
    """+1 for a minimised objective, −1 for a maximised one: values times it are costs."""
    import optuna

    return 1 if direction == optuna.study.StudyDirection.MINIMIZE else -1


def equal_budget_trials(study) -> tuple[list, str]:
    """The trials whose values compare at one budget, and which they are: those that ran all
    their epochs when they are at least two and half of the trials; else every trial at the
    last epoch all of them reached (at least the grace period: none stops before it),
    with its value there as its own — its best epoch up to then by the first objective,
    every objective's value at that epoch. Empty when fewer than two trials reported."""
    import optuna

    states = optuna.trial.TrialState
    complete = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    ended = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED))
    if len(complete) >= max(2, len(ended) / 2):
        return complete, f"the {len(complete)} trials that ran all their epochs"
    names = study.metric_names or []
    curves = []  # (trial, {epoch: values})
    for trial in ended:
        if len(study.directions) == 1:
            curve = {epoch: [value] for epoch, value in trial.intermediate_values.items()}
        else:
            by_metric = {name: dict(pairs)
                         for name, pairs in trial.user_attrs.get("epochs", {}).items()}
            curve = {epoch: [by_metric[name][epoch] for name in names]
                     for epoch in by_metric.get(names[0], {})}
        if curve:
            curves.append((trial, curve))
    if len(curves) < 2:
        return [], ""
    budget = min(max(curve) for _, curve in curves)
    sign = _sign(study.directions[0])
    made = []
    for trial, curve in curves:
        best = min((epoch for epoch in curve if epoch <= budget),
                   key=lambda epoch: sign * curve[epoch][0])
        made.append(optuna.trial.create_trial(params=trial.params,
                                              distributions=_whole(trial.distributions),
                                              values=curve[best]))
    return made, f"all {len(made)} trials at epoch {budget}, which each of them reached"


def _whole(distributions: dict) -> dict:
    """Stepped integer ranges as whole ones: the paper's trial may lie between the points
    of one (``tuning.space``), which a trial made anew must hold."""
    import optuna

    return {name: (optuna.distributions.IntDistribution(d.low, d.high)
                   if isinstance(d, optuna.distributions.IntDistribution) and d.step != 1
                   else d)
            for name, d in distributions.items()}


def what_mattered(url: str, study_name: str, folder: Path) -> tuple[pd.DataFrame, str]:
    """From the stored study: the optimisation history of its first objective as
    ``history.png``, and Optuna's parameter importances (its default evaluator, PED-ANOVA)
    over the trials that compare at one budget (``equal_budget_trials``), as a table with a
    column per objective named after its metric and as ``importance.png``, in ``folder``.
    Returns the table (empty when fewer than two trials reported) and what it is over."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    study = optuna.load_study(study_name=study_name, storage=url)
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    importances = pd.DataFrame(columns=["parameter", *names])
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            figures["history.png"] = plots.plot_optimization_history(
                study, target=lambda trial: trial.values[0], target_name=names[0])
        trials, over = equal_budget_trials(study)
        if trials:
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
            compared = optuna.create_study(directions=study.directions)
            optuna.logging.set_verbosity(verbosity)
            compared.add_trials([optuna.trial.create_trial(
                params=trial.params, distributions=_whole(trial.distributions),
                values=trial.values) for trial in trials])
            compared.set_metric_names(names)
            # Optuna's default evaluator (PED-ANOVA) ranks what leads to low targets: a
            # maximised objective is turned round, as its warning asks.
            warnings.filterwarnings("ignore", message=".*importances of params to achieve")
            signs = [_sign(direction) for direction in study.directions]
            found = {name: optuna.importance.get_param_importances(
                         compared, target=lambda trial, i=i: signs[i] * trial.values[i])
                     for i, name in enumerate(names)}
            importances = pd.DataFrame(found).rename_axis("parameter").reset_index()
            importances = importances.sort_values(names[0], ascending=False, ignore_index=True)
            figures["importance.png"] = plots.plot_param_importances(compared)
        for name, axes in figures.items():
            figure = axes.figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            atomic_write(folder / name, lambda path, f=figure: f.savefig(path, dpi=120,
                                                                         format="png"))
            plt.close(figure)
    return importances, over

"""How the search chooses among its finalists, and how sure it says it is."""

from __future__ import annotations

import pytest

from tuning.finalists import (
    choose,
    decision_line,
    next_reruns,
    pooled_std,
    rerun_seeds,
    student_t_cdf,
)

PAPER = "paper0001xyz"
OTHER = "other0002xyz"


@pytest.mark.parametrize("t, freedom, probability", [
    (6.314, 1, 0.95), (2.920, 2, 0.95), (1.638, 3, 0.90), (2.132, 4, 0.95),
    (2.571, 5, 0.975), (1.943, 6, 0.95), (3.143, 6, 0.99), (1.372, 10, 0.90),
])
def test_the_t_distribution_matches_its_tables(t, freedom, probability):
    assert student_t_cdf(t, freedom) == pytest.approx(probability, abs=5e-4)
    assert student_t_cdf(-t, freedom) == pytest.approx(1 - probability, abs=5e-4)
    assert student_t_cdf(0.0, freedom) == 0.5


def test_the_seed_spread_is_pooled_over_the_finalists():
    spread, freedom = pooled_std([[1.0, 3.0], [2.0, 2.0, 2.0], [5.0]])
    assert freedom == 3 and spread == pytest.approx((2.0 / 3) ** 0.5)  # (1·2 + 2·0) / 3
    assert pooled_std([[1.0], [2.0]]) == (0.0, 0)


def test_a_lead_within_the_seed_noise_keeps_the_papers_configuration():
    scores = {PAPER: [0.90, 0.93, 0.91], OTHER: [0.89, 0.92, 0.90]}  # 0.01 better, std 0.015
    chosen, decision = choose(scores, PAPER, "min", 0.9)
    assert chosen == PAPER and decision["kept_paper"]
    assert decision["improvement"] == pytest.approx(0.01)
    assert 0.5 < decision["confidence"] < 0.9
    assert choose(scores, PAPER, "min", 0.0)[0] == OTHER  # 0: the best mean
    worse = {PAPER: scores[OTHER], OTHER: scores[PAPER]}
    assert choose(worse, PAPER, "min", 0.0)[0] == PAPER


def test_a_clear_lead_replaces_the_papers_configuration():
    scores = {PAPER: [0.90, 0.91, 0.92], OTHER: [0.86, 0.87, 0.875]}
    chosen, decision = choose(scores, PAPER, "min", 0.9)
    assert chosen == OTHER and not decision["kept_paper"] and decision["confidence"] > 0.99
    assert decision["degrees_of_freedom"] == 4
    line = decision_line({"chosen": {"mean": 0.868, "std": 0.008, "seeds": 3},
                          "decision": decision}, "valid_MAE")
    assert line.startswith("best.json takes other000 ") and "than the paper's" in line


def test_a_metric_to_maximise_is_judged_the_other_way():
    scores = {PAPER: [0.70, 0.71, 0.72], OTHER: [0.76, 0.77, 0.775]}
    assert choose(scores, PAPER, "max", 0.9)[0] == OTHER
    assert choose(scores, PAPER, "min", 0.9)[0] == PAPER  # lower accuracy is no gain


def test_without_the_papers_trial_the_best_mean_is_chosen():
    scores = {OTHER: [0.90, 0.91], "third0003xyz": [0.88, 0.95]}
    chosen, decision = choose(scores, None, "min", 0.9)
    assert chosen == OTHER and "challenger" not in decision


def test_finalists_without_spread_keep_the_papers_configuration():
    chosen, decision = choose({PAPER: [0.9], OTHER: [0.8]}, PAPER, "min", 0.9)
    assert chosen == PAPER and decision["confidence"] is None
    line = decision_line({"chosen": {"mean": 0.9, "std": 0.0, "seeds": 1},
                          "decision": decision}, "valid_MAE")
    assert "no spread" in line


def test_reruns_take_the_seeds_the_evaluator_runs_next():
    assert rerun_seeds(0, 3) == [1, 2]
    assert rerun_seeds(4, 2) == [5]
    assert rerun_seeds(0, 1) == []


def _searcher(tmp_path, finalists=1, stack=False, winner_seeds=1):
    from ray import tune

    from tuning.finalists import FinalistSearch

    searcher = FinalistSearch(
        url=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", metrics=["valid_MAE"],
        epochs=4, seed=0, concurrent=2, trials=3, points_to_evaluate=[{"lambda_m": 1.0}],
        finalists=finalists, finalist_seeds=3, confidence=0.9, stack=stack,
        winner_seeds=winner_seeds, paper={"lambda_m": 1.0},
        fixed={"dropout": 0.2})
    searcher.set_search_properties(None, None, {"lambda_m": tune.uniform(0.0, 2.0)})
    return searcher


def _end(searcher, trial, value, epochs):
    for epoch in range(1, epochs + 1):
        searcher.on_trial_result(trial, {"epoch": epoch, "training_iteration": epoch,
                                         "valid_MAE": value + (epochs - epoch) * 0.1})
    searcher.on_trial_complete(trial, {"epoch": epochs, "training_iteration": epochs,
                                       "valid_MAE": value})


def _trials_end(searcher, *values):
    """The search's trials t0, t1, … proposed, then ended with these scores after 4 epochs."""
    for i in range(len(values)):
        searcher.suggest(f"t{i}")
    for i, value in enumerate(values):
        _end(searcher, f"t{i}", value, 4)


def test_the_reruns_are_trials_of_the_search_once_its_trials_are_proposed(tmp_path):
    import optuna
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path)
    proposed = [searcher.suggest(f"t{i}") for i in range(3)]
    assert proposed[0] == {"lambda_m": 1.0}  # the paper's trial first
    assert searcher.suggest("r0") is None  # the paper's trial is still running
    _end(searcher, "t0", 0.9, 4)
    first = searcher.suggest("r0")
    # the paper's first rerun, as long as its trial ran, with the space's constants
    assert first["rerun"]["seeds"] == [1] and first["rerun"]["epochs"] == 4
    assert first["rerun"]["params"] == {"dropout": 0.2, "lambda_m": 1.0}
    assert first["lambda_m"] == 1.0
    assert searcher.suggest("r1") is None  # its next seed waits for the race's first round
    _end(searcher, "t1", 0.7, 2)  # the best other, stopped early at epoch 2
    searcher.on_trial_complete("t2", None, error=True)  # failed: never a finalist
    other = searcher.suggest("o0")
    assert other["rerun"]["trial"] == "t1" and other["rerun"]["seeds"] == [1]
    assert other["rerun"]["epochs"] == 2 and other["lambda_m"] == proposed[1]["lambda_m"]
    _end(searcher, "r0", 0.92, 4)  # reruns tell the study nothing
    # The round goes on until each of its runs ends; the slot it leaves idle trains the
    # leader's next seed, the challenger's (far ahead).
    ahead = searcher.suggest("a0")
    assert (ahead["rerun"]["trial"], ahead["rerun"]["seeds"]) == ("t1", [2])
    _end(searcher, "o0", 0.72, 2)
    # The challenger leads by far more than the seeds' spread: both go on to a third seed.
    second = [searcher.suggest(f"s{i}") for i in range(2)]
    assert (second[0]["rerun"]["trial"], second[0]["rerun"]["seeds"]) == ("t0", [2])
    assert second[1] is None  # both slots busy
    _end(searcher, "s0", 0.91, 4)
    _end(searcher, "a0", 0.71, 2)
    assert searcher.suggest("s3") == Searcher.FINISHED  # every seed ran
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 3
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL", "PRUNED"]


def test_a_challenger_the_first_seeds_rule_out_ends_the_race(tmp_path):
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path)
    _trials_end(searcher, 0.80, 0.95, 1.10)
    rounds = [searcher.suggest(f"r{i}") for i in range(3)]
    assert [r["rerun"]["trial"] for r in rounds[:2]] == ["t0", "t1"] and rounds[2] is None
    _end(searcher, "r0", 0.81, 4)
    _end(searcher, "r1", 0.96, 4)  # worse by 0.15 on a spread of 0.01
    assert searcher.suggest("r2") == Searcher.FINISHED  # neither needs a third seed


@pytest.mark.parametrize(("challenger", "wanted"), [
    ([0.95, 0.96], []),  # ruled out: at most 10 % likely to be better
    ([0.80, 0.83], [("p", 2), ("c", 2)]),  # better: a third seed each
    ([0.84, 0.90], [("p", 2), ("c", 2)]),  # worse, but within the noise
])
def test_the_race_drops_a_challenger_the_seeds_rule_out(challenger, wanted):
    scores = {"p": {0: 0.85, 1: 0.87}, "c": dict(enumerate(challenger))}
    assert next_reruns(scores, "p", ["c"], [1, 2], "min", 0.9, racing=True) == wanted


def test_a_race_round_waits_for_its_runs_and_no_race_asks_for_every_seed():
    first = {"p": {0: 0.85}, "c": {0: 0.95}}
    assert next_reruns(first, "p", ["c"], [1, 2], "min", 0.9, racing=True) == [
        ("p", 1), ("c", 1)]
    half = {"p": {0: 0.85, 1: 0.86}, "c": {0: 0.95}}
    assert next_reruns(half, "p", ["c"], [1, 2], "min", 0.9, racing=True) == [("c", 1)]
    every = [("p", 1), ("p", 2), ("c", 1), ("c", 2)]
    assert next_reruns(first, "p", ["c"], [1, 2], "min", 0.9, racing=False) == every
    assert next_reruns(first, "p", ["c"], [1, 2], "min", 0.0, racing=True) == every
    failed = {"p": {0: 0.85, 1: None}, "c": {0: 0.86, 1: 0.84}}  # a rerun without a score
    assert next_reruns(failed, "p", ["c"], [1, 2], "min", 0.9, racing=True) == [
        ("p", 2), ("c", 2)]


def test_once_the_race_ends_its_leader_is_trained_from_the_winners_seeds():
    race_over = {"p": {0: 0.85, 1: 0.87}, "c": {0: 0.95, 1: 0.96}}  # c is ruled out
    assert next_reruns(race_over, "p", ["c"], [1, 2, 3], "min", 0.9, racing=True,
                       raced=1) == [("p", 2), ("p", 3)]
    assert next_reruns(race_over, "p", ["c"], [1, 2, 3], "min", 0.9, racing=True) == []
    # The leader's own seeds do not reopen the race, and while they run none are added.
    topped = {"p": {0: 0.85, 1: 0.87, 2: 0.86, 3: 0.84}, "c": {0: 0.95, 1: 0.96}}
    assert next_reruns(topped, "p", ["c"], [1, 2, 3], "min", 0.9, racing=True, raced=1) == []
    # A challenger that won the race leads, unless the seeds behind it overtake it.
    won = {"p": {0: 0.95, 1: 0.96}, "c": {0: 0.80, 1: 0.81}}
    assert next_reruns(won, "p", ["c"], [1, 2], "min", 0.9, racing=True, raced=1) == [
        ("c", 2)]
    overtaken = {"p": {0: 0.95, 1: 0.96}, "c": {0: 0.80, 1: 0.81, 2: 1.40}}
    assert next_reruns(overtaken, "p", ["c"], [1, 2], "min", 0.9, racing=True,
                       raced=1) == [("p", 2)]


def test_a_seed_trained_ahead_of_its_round_does_not_change_the_race():
    # the paper's third seed (trained in an idle slot) is not the race's yet: on the first
    # two, the challenger is ruled out
    ahead = {"p": {0: 0.85, 1: 0.87, 2: 1.30}, "c": {0: 0.95, 1: 0.96}}
    assert next_reruns(ahead, "p", ["c"], [1, 2], "min", 0.9, racing=True) == []


def test_a_slot_the_race_leaves_idle_trains_the_leaders_next_seed(tmp_path):
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path, winner_seeds=4)  # seeds 1 and 2 race; 3 the leader's
    _trials_end(searcher, 0.85, 0.84, 1.10)
    first = [searcher.suggest(f"r{i}") for i in range(2)]
    assert [(r["rerun"]["trial"], r["rerun"]["seeds"]) for r in first] == [
        ("t0", [1]), ("t1", [1])]
    _end(searcher, "r0", 0.89, 4)  # the challenger's rerun goes on
    ahead = searcher.suggest("a0")  # the paper's configuration leads: its next seed
    assert (ahead["rerun"]["trial"], ahead["rerun"]["seeds"]) == ("t0", [2])
    assert searcher.suggest("a1") is None  # both slots busy
    _end(searcher, "a0", 0.86, 4)
    ahead = searcher.suggest("a1")  # still the leader: its seed beyond the race's
    assert (ahead["rerun"]["trial"], ahead["rerun"]["seeds"]) == ("t0", [3])
    _end(searcher, "r1", 0.86, 4)  # within the noise: the challenger's third seed
    third = searcher.suggest("s0")
    assert (third["rerun"]["trial"], third["rerun"]["seeds"]) == ("t1", [2])
    assert searcher.suggest("s1") is None
    _end(searcher, "a1", 0.87, 4)
    assert searcher.suggest("s1") is None  # nothing ahead of need: every seed handed out
    _end(searcher, "s0", 0.95, 4)  # the race is over: the paper's configuration stays
    assert searcher.suggest("s1") == Searcher.FINISHED  # no more reruns than without it


def test_the_search_trains_its_leader_from_the_winners_seeds_before_it_finishes(tmp_path):
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path, winner_seeds=4)
    _trials_end(searcher, 0.80, 0.95, 1.10)
    rounds = [searcher.suggest(f"r{i}") for i in range(2)]
    _end(searcher, "r0", 0.81, 4)
    _end(searcher, "r1", 0.96, 4)  # ruled out: the paper's configuration leads
    leader = [searcher.suggest(f"w{i}") for i in range(3)]
    assert [r["rerun"]["trial"] for r in rounds] == ["t0", "t1"]
    assert [(r["rerun"]["trial"], r["rerun"]["seeds"]) for r in leader[:2]] == [
        ("t0", [2]), ("t0", [3])]
    assert leader[2] is None  # finished only once the leader's runs have ended
    _end(searcher, "w0", 0.82, 4)
    _end(searcher, "w1", 0.79, 4)
    assert searcher.suggest("w2") == Searcher.FINISHED


def test_a_resumed_search_goes_on_with_its_reruns(tmp_path):
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path, stack=True)
    for i in range(3):
        searcher.suggest(f"t{i}")
    _end(searcher, "t0", 0.9, 4)
    first = searcher.suggest("r0")
    assert first["rerun"]["seeds"] == [1, 2]  # on a GPU, one stacked trial a finalist
    searcher.save(str(tmp_path / "searcher.pkl"))  # what Tune keeps of it
    (tmp_path / "new").mkdir()
    restored = _searcher(tmp_path / "new", stack=True)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("r1") is None  # the paper's reruns are out; the others wait
    _end(restored, "t1", 0.95, 4)
    _end(restored, "t2", 0.8, 4)
    assert restored.suggest("o0")["rerun"]["trial"] == "t2"
    assert restored.suggest("o1") == Searcher.FINISHED


def test_a_resumed_race_goes_on_from_its_round(tmp_path):
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path)
    for i in range(3):
        searcher.suggest(f"t{i}")
    for trial, value in (("t0", 0.85), ("t1", 0.84), ("t2", 1.0)):
        _end(searcher, trial, value, 4)
    searcher.suggest("r0")
    searcher.suggest("r1")
    _end(searcher, "r0", 0.86, 4)  # the paper's second seed ends; the challenger's runs on
    searcher.save(str(tmp_path / "searcher.pkl"))
    (tmp_path / "new").mkdir()
    restored = _searcher(tmp_path / "new")
    restored.restore(str(tmp_path / "searcher.pkl"))
    # The round waits for the challenger's rerun, which the restored state knows is
    # running: the one idle slot trains the leader's third seed, the paper's.
    ahead = restored.suggest("s0")
    assert (ahead["rerun"]["trial"], ahead["rerun"]["seeds"]) == ("t0", [2])
    assert restored.suggest("s1") is None
    _end(restored, "r1", 0.85, 4)  # as good as the paper's: a third seed each
    third = restored.suggest("s1")
    assert (third["rerun"]["trial"], third["rerun"]["seeds"]) == ("t1", [2])
    _end(restored, "s0", 0.86, 4)
    _end(restored, "s1", 0.85, 4)
    assert restored.suggest("s2") == Searcher.FINISHED


def test_no_finalists_no_reruns(tmp_path):
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path, finalists=0)
    for i in range(3):
        searcher.suggest(f"t{i}")
    _end(searcher, "t0", 0.9, 4)
    assert searcher.suggest("r0") is None  # nothing to do, but the trials still run
    _end(searcher, "t1", 0.9, 4)
    _end(searcher, "t2", 0.9, 4)
    assert searcher.suggest("r1") == Searcher.FINISHED

"""The one training loop: honest selection, determinism, early stopping, resume, tasks."""

import copy
import io

import pytest
import torch

from ucrn.config import Config, apply_overrides
from ucrn.data.layout import load_dataset
from ucrn.engine import evaluate, fit, load_run, prepare_config, save_run
from ucrn.errors import UcrnError
from ucrn.flat import FlatParameters
from ucrn.model import UCRN
from ucrn.robustness import score_conditions
from ucrn.state import TrainingState
from ucrn.tasks import metric_names

SMALL = {"urm_layers": 1, "crm_layers": 1, "width": 12, "batch_size": 16, "epochs": 3}


def _config(**overrides):
    return apply_overrides(Config(), {**SMALL, **overrides})


@pytest.fixture(scope="module")
def mosi(tiny_mosi):
    return load_dataset(tiny_mosi)


def test_same_seed_gives_identical_metrics(mosi):
    first = fit(_config(seed=3), mosi, device="cpu")
    second = fit(_config(seed=3), mosi, device="cpu")
    other = fit(_config(seed=4), mosi, device="cpu")
    assert first.history == second.history and first.test == second.test
    assert first.history != other.history


def test_the_test_split_is_scored_on_the_checkpoint_chosen_by_validation(mosi):
    result = fit(_config(epochs=4), mosi, device="cpu")
    best = result.history[result.best_epoch - 1]
    assert result.valid["MAE"] == best["valid_MAE"]
    assert min(h["valid_MAE"] for h in result.history) == best["valid_MAE"]
    rescored = evaluate(result.model, mosi.split("test"), mosi, result.config, device="cpu")
    assert rescored["MAE"] == pytest.approx(result.test["MAE"], abs=1e-6)


def test_no_test_score_unless_asked(mosi):
    assert fit(_config(epochs=1), mosi, device="cpu", score_test=False).test is None


def test_a_longer_budget_repeats_a_shorter_runs_epochs_so_its_selection_is_no_worse(mosi):
    # what lets a search's best.json train for the config's full budget: nothing in the
    # loop depends on the total epochs, so the search's trial is the start of that run
    short = fit(_config(epochs=2, patience=2), mosi, device="cpu", score_test=False)
    full = fit(_config(epochs=4, patience=10), mosi, device="cpu", score_test=False)
    assert full.history[:2] == short.history
    assert full.valid["MAE"] <= short.valid["MAE"]


def test_training_stops_after_patience_epochs_without_improvement(mosi):
    result = fit(_config(epochs=10, patience=1, learning_rate=1e-12), mosi, device="cpu")
    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 2


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(mosi):
    straight = fit(_config(epochs=4), mosi, device="cpu")
    saved = []
    fit(_config(epochs=2), mosi, device="cpu",
        on_epoch=lambda result, checkpoint: saved.append(checkpoint()))
    buffer = io.BytesIO()  # through the file format, as a checkpoint travels
    torch.save(saved[-1].to_dict(), buffer)
    buffer.seek(0)
    state = TrainingState.from_dict(torch.load(buffer, weights_only=True))
    assert state.epoch == 2 and state.stopped_early is False
    resumed = fit(_config(epochs=4), mosi, device="cpu", resume=state)
    assert resumed.history == straight.history
    assert resumed.test == straight.test
    assert not resumed.stopped_early


def test_a_training_state_gives_the_selected_model_and_its_validation_metrics(mosi):
    states = []
    result = fit(_config(epochs=3), mosi, device="cpu",
                 on_epoch=lambda _, checkpoint: states.append(checkpoint()))
    state = states[-1]
    assert state.best_epoch == result.best_epoch
    assert state.best_valid() == result.valid
    assert state.best_valid()["MAE"] == state.history[state.best_epoch - 1]["valid_MAE"]
    selected = state.selected_model()
    for key, value in result.model.state_dict().items():
        assert torch.equal(selected.state_dict()[key], value), key
    assert state.to_fit_result().best_epoch == result.best_epoch


def test_something_that_is_not_a_training_state_is_named():
    with pytest.raises(UcrnError, match="not a ucrn training state"):
        TrainingState.from_dict({"model": {}, "progress": {}})


def test_a_checkpoint_is_a_snapshot_not_a_live_view(mosi):
    saved = []
    fit(_config(epochs=2), mosi, device="cpu",
        on_epoch=lambda result, checkpoint: saved.append(checkpoint()))
    first, second = (s.weights for s in saved)
    assert any(not torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("task, metric", [("binary", "Acc_2"), ("seven_class", "Acc_7")])
def test_classification_tasks_train_and_report_their_metrics(mosi, task, metric):
    result = fit(_config(task=task, epochs=1), mosi, device="cpu")
    assert set(result.test) == set(metric_names(task))
    assert 0.0 <= result.test[metric] <= 1.0


def test_emotions_train_on_the_six_mosei_labels(tiny_mosei):
    dataset = load_dataset(tiny_mosei)
    result = fit(_config(task="emotions", epochs=1), dataset, device="cpu")
    assert set(result.test) == set(metric_names("emotions"))
    assert 0.0 <= result.test["mean_acc"] <= 1.0


def test_emotions_need_emotion_labels(mosi):
    with pytest.raises(UcrnError, match="needs label columns happy"):
        fit(_config(task="emotions"), mosi, device="cpu")


def test_a_selection_metric_of_another_task_is_refused(mosi):
    with pytest.raises(UcrnError, match="select_metric='mean_wa' is not a validation metric"):
        fit(_config(select_metric="mean_wa"), mosi, device="cpu")


def test_a_model_trained_on_fewer_modalities_ignores_the_others(mosi):
    result = fit(_config(modalities="l,v", epochs=1), mosi, device="cpu")
    assert set(result.model.urms) == {"l", "v"}


def test_a_saved_run_loads_back_to_the_same_predictions(mosi, tmp_path):
    result = fit(_config(epochs=1), mosi, device="cpu")
    save_run(tmp_path / "run", result)
    config, model = load_run(tmp_path / "run", device="cpu")
    assert config == result.config
    again = evaluate(model, mosi.split("test"), mosi, config, device="cpu")
    assert again["MAE"] == pytest.approx(result.test["MAE"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json", "metrics.json", "model.pt"]


def test_modality_dropout_trains_batches_on_proper_subsets(mosi):
    seen: list[tuple[str, ...]] = []

    class Spy(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, features, lengths):
            seen.append(tuple(features))
            return self.model(features, lengths)

    fit(_config(epochs=1, modality_dropout=1.0), mosi, device="cpu", wrap_model=Spy)
    assert seen and all(0 < len(keys) < 3 for keys in seen)
    assert len(set(seen)) > 1
    seen.clear()
    fit(_config(epochs=1), mosi, device="cpu", wrap_model=Spy)
    assert set(seen) == {("l", "a", "v")}


def test_robust_scores_average_table_4_on_the_validation_split(mosi):
    result = fit(_config(epochs=1, score_robust=True), mosi, device="cpu", score_test=False)
    scores = score_conditions(result.model, mosi, result.config, split="valid")
    table_4 = [scores[f"masked {kept}"] for kept in ("L+A", "L+V", "A+V")]  # one masked
    for name in ("MAE", "Non0_acc_2", "Corr", "loss"):
        expected = sum(score[name] for score in table_4) / 3
        assert result.valid[f"robust_{name}"] == pytest.approx(expected, abs=1e-6)
    assert result.valid["MAE"] == pytest.approx(scores["full"]["MAE"], abs=1e-6)
    assert result.valid["robust_MAE"] != pytest.approx(result.valid["MAE"])


def test_a_checkpoint_may_be_selected_on_a_robust_metric_that_is_scored(mosi):
    with pytest.raises(UcrnError, match="select_metric='robust_MAE' is not a validation"):
        fit(_config(select_metric="robust_MAE"), mosi, device="cpu")
    result = fit(_config(select_metric="robust_MAE", score_robust=True), mosi, device="cpu",
                 score_test=False)
    best = min(epoch["valid_robust_MAE"] for epoch in result.history)
    assert result.valid["robust_MAE"] == pytest.approx(best)
    with pytest.raises(UcrnError, match="need two or more modalities"):
        fit(_config(modalities="l", score_robust=True), mosi, device="cpu")


def test_a_step_over_flat_parameters_is_adam_and_clipping_on_each(mosi):
    config = prepare_config(_config(), mosi)
    model = UCRN(config.model).eval()  # no dropout: both see the same function
    twin, start = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    flat = FlatParameters(model).flat
    assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
               for p in model.parameters())
    split = mosi.split("train")
    features = {m: x[:16] for m, x in split.features.items()}
    lengths = {m: n[:16] for m, n in split.lengths.items()}
    steps = [(model, [flat], torch.optim.Adam([flat], lr=1e-2, fused=True)),
             (twin, list(twin.parameters()), torch.optim.Adam(twin.parameters(), lr=1e-2))]
    for _ in range(2):
        for network, parameters, adam in steps:
            adam.zero_grad(set_to_none=network is twin)
            output = network(features, lengths)
            loss = output.prediction.sub(1.0).abs().mean() + output.unimodal["a"].square().mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 0.05)  # small enough to clip
        # The model's gradients landed in the flat one, clipped alike (the norms differ in
        # their last bits: one sum over all, against a norm of norms) ...
        each = torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
        assert torch.allclose(flat.grad, each, rtol=1e-4, atol=1e-9)
        flat.grad.copy_(each)  # ... which Adam would magnify where a gradient is near 0
        for _, _, adam in steps:
            adam.step()
    for (name, value), twin_value in zip(model.state_dict().items(),
                                         twin.state_dict().values(), strict=True):
        assert torch.allclose(value, twin_value, atol=1e-6), name
    assert not torch.equal(model.urms["l"].projection.weight,
                           start["urms.l.projection.weight"])  # the steps moved it


def test_a_training_state_carries_the_gpus_random_state_and_reads_states_without_it():
    state = TrainingState(Config(), cuda_rng=[torch.tensor([1, 2, 3], dtype=torch.uint8)])
    again = TrainingState.from_dict(state.to_dict())
    assert torch.equal(again.cuda_rng[0], state.cuda_rng[0])
    older = state.to_dict()
    del older["cuda_rng"]  # written before the GPU's state was kept
    assert TrainingState.from_dict(older).cuda_rng is None


def test_the_device_footprint_counts_the_splits_a_run_moves_to_its_device(mosi):
    from ucrn.footprint import data_bytes, training_device_bytes

    config = prepare_config(_config(), mosi)

    def nbytes(name):
        split = mosi.split(name)
        tensors = [*split.features.values(), split.labels,
                   *(t for t in split.lengths.values() if t is not None)]
        return sum(t.numel() * t.element_size() for t in tensors)

    moved = nbytes("train") + nbytes("valid")
    assert data_bytes(config, mosi) == moved
    robust = apply_overrides(config, {"score_robust": True})
    assert data_bytes(robust, mosi) == moved + 3 * nbytes("valid")  # a masked copy each
    params = 1000
    on_cpu = training_device_bytes(config, mosi, params, on_gpu=False)
    assert training_device_bytes(config, mosi, params) > on_cpu > moved


def test_a_run_scored_where_it_trained_holds_every_condition_and_its_selection(mosi):
    from ucrn.robustness import scored_run

    result = fit(_config(epochs=1), mosi, score_test=False)
    record = scored_run(result, mosi, perturb=True, noise=0.5, noise_seed=3, device="cpu")
    expected = score_conditions(result.model, mosi, result.config, noise=0.5, noise_seed=3)
    assert record["conditions"] == expected and record["test"] == expected["full"]
    assert record["valid"] == result.valid and record["best_epoch"] == result.best_epoch
    only_test = scored_run(result, mosi, perturb=False, noise=0.5, noise_seed=3)
    assert list(only_test["conditions"]) == ["full"]

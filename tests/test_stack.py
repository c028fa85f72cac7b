"""Many models as one stacked computation: each model as it would train alone."""

import math

import pytest
import torch

from ucrn.config import Config, ModelConfig, apply_overrides
from ucrn.data.layout import load_dataset
from ucrn.engine import fit
from ucrn.errors import UcrnError
from ucrn.model import UCRN
from ucrn.stack import ModelStack, fit_stack

SMALL = {"urm_layers": 2, "crm_layers": 1, "width": 12, "epochs": 2, "dropout": 0.0}
DIMS = {"l": 300, "a": 5, "v": 20}


@pytest.fixture(scope="module")
def mosi(tiny_mosi):
    return load_dataset(tiny_mosi)


def _configs(*settings):
    return [apply_overrides(Config(), {**SMALL, **one}) for one in settings]


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _assert_same_run(stacked, alone, tolerance=1e-4):
    assert stacked.best_epoch == alone.best_epoch and stacked.epochs_run == alone.epochs_run
    assert len(stacked.history) == len(alone.history)
    for mine, theirs in zip(stacked.history, alone.history, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, rel=tolerance, abs=1e-7), key
    for split in ("valid", "test"):
        for key, value in getattr(alone, split).items():
            assert getattr(stacked, split)[key] == pytest.approx(value, rel=tolerance,
                                                                  abs=1e-7), (split, key)
    # the weights as a whole (Adam turns float noise in a gradient that is zero in exact
    # arithmetic, such as a key bias's, into steps of the learning rate's size)
    difference = (_weights(stacked.model) - _weights(alone.model)).norm()
    assert difference <= tolerance * _weights(alone.model).norm()


@pytest.mark.parametrize("shapes", ["aligned", "unaligned"])
def test_each_model_of_a_stack_trains_as_it_would_alone(mosi, shapes):
    configs = _configs(
        {"seed": 0}, {"seed": 1, "learning_rate": 2e-3, "lambda_m": 0.3},
        {"seed": 2, "lambda_c": 1.7, "grad_clip": 0.0},
        {"seed": 3, "learning_rate": 5e-4, "weight_decay": 1e-4})
    dataset = mosi
    if shapes == "unaligned":
        from ucrn.step_count import UNALIGNED, random_dataset

        dataset = random_dataset({m: (steps // 10, dims) for m, (steps, dims)
                                  in UNALIGNED.items()}, (48, 16, 16))
    stacked = fit_stack(configs, dataset, device="cpu")
    for config, result in zip(configs, stacked, strict=True):
        _assert_same_run(result, fit(config, dataset, device="cpu"))


def test_a_stack_of_one_is_a_plain_run(mosi):
    config = _configs({"seed": 5, "dropout": 0.1})[0]
    (stacked,) = fit_stack([config], mosi, device="cpu")
    alone = fit(config, mosi, device="cpu")
    assert stacked.history == alone.history and stacked.test == alone.test


def test_a_model_that_is_done_leaves_the_stack_and_nothing_moves_it(mosi):
    # one model has one epoch, one stops on patience, one trains on: each as alone
    configs = _configs({"seed": 0, "epochs": 1}, {"seed": 1, "epochs": 4, "patience": 1},
                       {"seed": 2, "epochs": 4})
    stack = ModelStack(configs, mosi, torch.device("cpu"))
    stack.run_epoch()
    assert [m.config.train.seed for m in stack.active] == [1, 2]
    finished = _weights(stack.members[0].model).clone()
    while stack.active:
        stack.run_epoch()
    assert torch.equal(_weights(stack.members[0].model), finished)
    for config, result in zip(configs, stack.results(mosi, score_test=True), strict=True):
        _assert_same_run(result, fit(config, mosi, device="cpu"))


def test_a_model_whose_loss_turns_non_finite_stops_alone(mosi):
    configs = _configs({"seed": 0}, {"seed": 1}, {"seed": 2})
    stack = ModelStack(configs, mosi, torch.device("cpu"))
    with torch.no_grad():
        stack.members[1].model.head[3].bias.fill_(math.nan)  # its loss is NaN at once
    while stack.active:
        stack.run_epoch()
    results = stack.results(mosi, score_test=True)
    assert isinstance(results[1], UcrnError) and "training diverged at epoch 1" in str(
        results[1])
    for index in (0, 2):
        _assert_same_run(results[index], fit(configs[index], mosi, device="cpu"))


def test_only_models_of_one_architecture_stack(mosi):
    with pytest.raises(UcrnError, match="need one architecture"):
        fit_stack(_configs({"seed": 0}, {"seed": 1, "width": 24}), mosi, device="cpu")
    with pytest.raises(UcrnError, match="differ in batch_size"):
        fit_stack(_configs({"seed": 0}, {"seed": 1, "batch_size": 32}), mosi, device="cpu")


def test_the_models_of_a_stack_run_as_one_computation_each_as_alone():
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(UCRN(ModelConfig(input_dims=DIMS, urm_layers=2, crm_layers=2,
                                       width=12)).eval())
    generator = torch.Generator().manual_seed(0)
    for steps in ({"l": 10, "a": 10, "v": 10}, {"l": 10, "a": 14, "v": 7}):
        features = {m: torch.randn(3, 6, steps[m], d, generator=generator)
                    for m, d in DIMS.items()}
        lengths = {m: torch.randint(1, steps[m] + 1, (3, 6), generator=generator)
                   for m in DIMS}
        together = UCRN.together(models, features, lengths)
        for k, model in enumerate(models):
            alone = model({m: x[k] for m, x in features.items()},
                          {m: n[k] for m, n in lengths.items()})
            assert torch.allclose(together.prediction[k], alone.prediction, atol=1e-6)
            for m in DIMS:
                assert torch.allclose(together.unimodal[m][k], alone.unimodal[m], atol=1e-6)


@pytest.mark.slow
def test_with_dropout_ten_stacked_seeds_score_as_ten_seeds_apart(tmp_path):
    # dropout's masks differ between a stack and its runs apart: their means over ten seeds
    # agree within the standard error of their difference (on a quarter of MOSI's size: the
    # tiny set's 29 test samples move a mean by whole samples)
    from ucrn.data.synthetic import synthesize

    dataset = load_dataset(synthesize("mosi", tmp_path / "mosi.h5", scale=0.25, seed=1))
    configs = _configs(*({"seed": seed, "dropout": 0.1, "epochs": 4} for seed in range(10)))
    stacked = [r.test for r in fit_stack(configs, dataset, device="cpu")]
    apart = [fit(config, dataset, device="cpu").test for config in configs]
    for metric in ("MAE", "Corr", "Non0_acc_2"):
        ours, theirs = (torch.tensor([run[metric] for run in runs]) for runs in (stacked,
                                                                               apart))
        error = math.sqrt((ours.var() + theirs.var()) / len(ours))
        assert abs(ours.mean() - theirs.mean()) <= error, metric

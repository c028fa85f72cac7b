"""One flat tensor for all parameters: a step's views of it, stacks laid side by side."""

import copy

import pytest
import torch

from ucrn.config import ModelConfig
from ucrn.engine import fit
from ucrn.flat import FlatParameters
from ucrn.losses import ucrn_loss
from ucrn.model import UCRN, stacked
from ucrn.step_count import DispatchCounter

DIMS = {"l": 300, "a": 5, "v": 20}


def _model():
    torch.manual_seed(0)
    return UCRN(ModelConfig(input_dims=DIMS, urm_layers=2, crm_layers=2, width=12)).eval()


def _batch(steps=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    steps = steps or {m: 10 for m in DIMS}
    features = {m: torch.randn(6, steps[m], d, generator=generator) for m, d in DIMS.items()}
    lengths = {m: torch.randint(1, steps[m] + 1, (6,), generator=generator) for m in DIMS}
    return features, lengths, torch.randn(6, generator=generator)


def _loss(model, features, lengths, targets):
    output = model(features, lengths)
    return ucrn_loss(output.prediction, targets, output.unimodal, "regression", 1.0, 1.0).total


def _flat(model):
    return FlatParameters(model, stacks=model.parameter_stacks(),
                          together=model.runs_stacks_together)


@pytest.mark.parametrize("steps", [None, {"l": 10, "a": 14, "v": 7}], ids=["aligned",
                                                                        "unaligned"])
def test_a_step_through_the_views_gives_each_parameter_its_own_gradient(steps):
    model = _model()
    twin = copy.deepcopy(model)
    flat = _flat(model)
    features, lengths, targets = _batch(steps)
    assert model.runs_stacks_together(features) == (steps is None)
    with flat.step_views(features):
        loss = _loss(model, features, lengths, targets)
    loss.backward()
    _loss(twin, features, lengths, targets).backward()
    expected = dict(twin.named_parameters())
    gathered = flat.flat.grad.split(flat.sizes)
    for name, grad in zip(flat.names, gathered, strict=True):
        assert torch.allclose(grad, expected[name].grad.reshape(-1), atol=1e-6), name
    # the parameters are the module's own again, views of the flat tensor
    for name, parameter in model.named_parameters():
        assert isinstance(parameter, torch.nn.Parameter), name
        assert parameter.untyped_storage().data_ptr() == flat.flat.untyped_storage().data_ptr()


def test_a_stack_lies_side_by_side_and_a_step_that_runs_it_together_stacks_nothing():
    model = _model()
    flat = _flat(model)
    assert flat.names[:3] == ["urms.l.layers.0.attention.qkv_weight",
                              "urms.l.layers.0.attention.qkv_bias", "urms.l.layers.0.fc1.weight"]
    assert sorted(flat.names) == sorted(n for n, _ in model.named_parameters())
    features, lengths, targets = _batch()
    with flat.step_views(features), DispatchCounter() as counter:
        layers = model.parameter_stacks()[1]
        whole = stacked([layer.fc2.weight for layer in layers])
        assert whole.shape == (3, *layers[0].fc2.weight.shape)
        assert counter.kernel_ops == 0  # a view, no stack
        assert torch.equal(whole[2], model.urms["v"].layers[1].fc2.weight)
        partial = stacked([layer.fc2.weight for layer in layers[:2]])  # not the whole stack
        assert counter.ops["aten.stack"] == 1 and partial.shape[0] == 2


def test_an_optimizer_state_saved_in_another_layout_is_laid_out_as_this_one():
    model = _model()
    flat = _flat(model)
    order = flat.model_order
    sizes = dict(zip(flat.names, flat.sizes, strict=True))
    # each parameter's moments hold its position in the model's own order
    in_model_order = torch.cat([torch.full((sizes[n],), float(i)) for i, n in enumerate(order)])
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": in_model_order,
                           "exp_avg_sq": in_model_order * 2}}, "param_groups": [{}]}
    moved = flat.optimizer_state(state, None)["state"][0]
    expected = torch.cat([torch.full((sizes[n],), float(order.index(n))) for n in flat.names])
    assert torch.equal(moved["exp_avg"], expected)
    assert torch.equal(moved["exp_avg_sq"], expected * 2)
    assert moved["step"] == 3.0
    assert flat.optimizer_state(state, flat.names) is state


def test_training_through_the_views_is_training_the_parameters_themselves(tiny_mosi):
    from ucrn.config import Config, apply_overrides
    from ucrn.data.layout import load_dataset

    dataset = load_dataset(tiny_mosi)
    config = apply_overrides(Config(), {"urm_layers": 2, "crm_layers": 1, "width": 12,
                                        "epochs": 2, "static_shapes": "true"})
    views = fit(config, dataset, device="cpu", score_test=False)  # the static step's
    # a wrapper turns the step's views off: the parameters' own gradients are taken
    own = fit(config, dataset, device="cpu", score_test=False, wrap_model=lambda m: m)
    for mine, theirs in zip(views.history, own.history, strict=True):
        for key, value in mine.items():
            if key.startswith(("train_", "valid_")):
                assert theirs[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

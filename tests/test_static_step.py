"""The static training step (``static_shapes``): the dynamic step's results, no host syncs."""

import pytest
import torch

from ucrn.config import Config, apply_overrides
from ucrn.data.batches import iterate_batches
from ucrn.engine import fit, static_shapes
from ucrn.errors import UcrnError
from ucrn.losses import ucrn_loss
from ucrn.model import ByteDropout
from ucrn.step_count import ALIGNED, UNALIGNED, count_step, random_dataset, training_for

SMALL = {"urm_layers": 2, "crm_layers": 1, "width": 12, "heads": 3, "dropout": 0.0,
         "epochs": 1}
SHAPES = {"aligned": ALIGNED, "unaligned": UNALIGNED}


def _training(shapes, static: str, samples: int = 48):
    dataset = random_dataset(shapes, (samples, 24, 24))
    config = apply_overrides(Config(), {**SMALL, "static_shapes": static})
    return training_for(config, dataset, "cpu")


def _loss_and_gradients(training):
    batch = next(iterate_batches(training.train.split, training.train.targets,
                                 training.train.labels, 16))
    output = training.model(batch.features, batch.lengths)
    loss = ucrn_loss(output.prediction, batch.targets, output.unimodal, "regression",
                     1.0, 1.0).total
    training.parameters.flat.grad.zero_()
    loss.backward()
    return loss.detach(), training.parameters.flat.grad.clone()


@pytest.mark.parametrize("shapes", SHAPES)
def test_the_static_step_gives_the_dynamic_steps_loss_and_gradients(shapes):
    dynamic = _loss_and_gradients(_training(SHAPES[shapes], "false"))
    static = _loss_and_gradients(_training(SHAPES[shapes], "true"))
    assert static[0] == pytest.approx(dynamic[0].item(), abs=1e-6)
    assert torch.allclose(static[1], dynamic[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("shapes", SHAPES)
def test_the_static_step_waits_for_the_device_never_and_the_dynamic_one_does(shapes):
    # the dispatch counter sees the syncs a GPU would wait for: scalar reads, copies to host
    assert count_step(_training(SHAPES[shapes], "true"), 1)["syncs"] == 0
    assert count_step(_training(SHAPES[shapes], "false"), 1)["syncs"] > 0


@pytest.mark.parametrize(("shapes", "most"), [("aligned", 600), ("unaligned", 1200)])
def test_the_papers_static_step_launches_few_kernels(shapes, most):
    # forward, L, backward, clipping and Adam of the paper's model, batch 16, as a GPU
    # would dispatch them (the device's own dropout kernel; stacks read as views)
    dataset = random_dataset(SHAPES[shapes], (64, 8, 8))
    config = apply_overrides(Config(), {"static_shapes": "true", "epochs": 1})
    training = training_for(config, dataset, "cpu")
    assert all(module.native for module in training.model.modules()
               if isinstance(module, ByteDropout))
    counted = count_step(training)
    assert counted["syncs"] == 0
    assert counted["kernel_ops"] <= most


def test_an_epoch_on_the_static_path_scores_as_the_dynamic_one(tiny_mosi):
    from ucrn.data.layout import load_dataset

    dataset = load_dataset(tiny_mosi)
    runs = {setting: fit(apply_overrides(Config(), {**SMALL, "static_shapes": setting}),
                         dataset, device="cpu", score_test=False)
            for setting in ("false", "true")}
    dynamic, static = runs["false"].history[0], runs["true"].history[0]
    for key, value in dynamic.items():
        if key.startswith(("train_", "valid_")):
            assert static[key] == pytest.approx(value, abs=1e-6), key


def test_static_shapes_is_on_for_cuda_unless_told_and_checked():
    auto = Config()
    assert auto.train.static_shapes == "auto"
    assert static_shapes(auto, torch.device("cuda")) and not static_shapes(auto, "cpu")
    assert static_shapes(apply_overrides(auto, {"static_shapes": "true"}), "cpu")
    assert not static_shapes(apply_overrides(auto, {"static_shapes": "false"}), "cuda")
    with pytest.raises(UcrnError, match="static_shapes='sometimes': choose one of auto"):
        apply_overrides(auto, {"static_shapes": "sometimes"})


def test_the_graphed_step_run_eagerly_trains_as_the_plain_loop(tiny_mosi):
    # what a CUDA graph replays: λm and the summed losses as buffers set once per epoch;
    # on the CPU the same steps run eagerly through them (the capture is the GPU's part)
    from ucrn.data.layout import load_dataset
    from ucrn.graphed import GraphedSteps

    dataset = load_dataset(tiny_mosi)
    histories = []
    for graphed in (False, True):
        config = apply_overrides(Config(), {**SMALL, "epochs": 2, "static_shapes": "true",
                                            "dropout": 0.1})
        training = training_for(config, dataset, "cpu")
        assert training.graphs is None  # no CUDA graph on the CPU
        if graphed:
            training.graphs = GraphedSteps(training._graph_step, torch.device("cpu"),
                                           capture=False)
        results = [training.run_epoch(epoch, 0, 1) for epoch in (1, 2)]
        histories.append([(r.train_loss, r.train_task_loss, r.train_js, r.valid)
                          for r in results])
    assert histories[0] == histories[1]


def test_a_graph_buffer_takes_each_batch_in_place():
    from ucrn.graphed import _clone, _copy_into

    first = ({"l": torch.zeros(2, 3)}, {"l": torch.tensor([1, 3]), "a": None}, torch.zeros(2))
    second = ({"l": torch.ones(2, 3)}, {"l": torch.tensor([2, 2]), "a": None}, torch.ones(2))
    buffers = _clone(first)
    pointer = buffers[0]["l"].data_ptr()
    _copy_into(buffers, second)
    assert buffers[0]["l"].data_ptr() == pointer and torch.equal(buffers[0]["l"], second[0]["l"])
    assert torch.equal(buffers[1]["l"], second[1]["l"]) and buffers[1]["a"] is None
    assert torch.equal(buffers[2], second[2])

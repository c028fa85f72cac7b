"""The task table: each task's record agrees with itself, from output layer to report."""

import numpy as np
import pytest
import torch

from ucrn.config import ModelConfig
from ucrn.errors import UcrnError
from ucrn.model import UCRN
from ucrn.tasks import TASKS, get_task


@pytest.mark.parametrize("name", list(TASKS))
def test_a_tasks_record_agrees_with_its_model_loss_and_metrics(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    labels = torch.tensor(np.c_[rng.uniform(-3, 3, 40), rng.uniform(0, 3, (40, 6))],
                          dtype=torch.float32)[:, : len(task.label_names)]
    model = UCRN(ModelConfig(modalities=("l",), input_dims={"l": 4}, width=6, heads=1,
                             urm_layers=1, crm_layers=1, task=name)).eval()
    output = model({"l": torch.randn(40, 3, 4)}).prediction
    assert output.shape == ((40,) if task.scalar_output else (40, task.output_size))
    loss = task.loss(output, task.targets(labels))
    assert loss.ndim == 0 and torch.isfinite(loss)
    scores = task.metrics(output.detach().double().numpy(), labels.double().numpy())
    assert set(scores) == set(task.metric_names)
    assert task.select_metric in task.metric_names
    assert set(task.headline) <= set(task.metric_names)


def test_an_unknown_task_is_named_with_the_choices():
    with pytest.raises(UcrnError, match="task='sarcasm': choose one of regression, binary"):
        get_task("sarcasm")

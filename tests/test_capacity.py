"""Planning trials with what a cluster has and what its autoscaler can add (no Ray here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tuning.capacity import Capacity, NodeType, NodeWait, read_node_types
from tuning.progress import user_error_in
from tuning.trials import check_packing, resources_for
from ucrn.errors import UcrnError
from ucrn.footprint import packing_problem

A10G = NodeType("ucrn.gpu", {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}, 4)
NEW_AWS_CLUSTER = Capacity(cpus=4.0, gpus=0.0, node_types=(A10G,), max_workers=4)
CPU_ONLY = Capacity(cpus=4.0, gpus=0.0)


def options(**given):
    defaults = {"gpus_per_worker": None, "cpus_per_worker": None, "max_concurrent": None,
                "workers_per_trial": 1, "max_failures": 2}
    return SimpleNamespace(**{**defaults, **given})


def test_a_new_cluster_with_no_gpu_node_yet_plans_with_the_gpus_it_can_add():
    resources = resources_for(options(), NEW_AWS_CLUSTER)
    assert resources.gpus_per_worker == 0.25
    assert resources.concurrent == 16  # 4 nodes × 1 GPU × 4 trials: the GPUs filled
    assert resources.cpus_per_worker == 1.0  # a GPU node's 4 CPUs over its 4 trials


def test_the_gpu_flag_on_a_cluster_that_can_add_gpus_is_not_refused():
    resources = resources_for(options(gpus_per_worker=0.25), NEW_AWS_CLUSTER)
    assert resources.gpus_per_worker == 0.25 and resources.trials_per_gpu == 4


def test_a_fixed_cluster_that_can_never_give_a_gpu_refuses_the_gpu_flag():
    with pytest.raises(UcrnError, match="no GPU and no autoscaler"):
        resources_for(options(gpus_per_worker=0.25), CPU_ONLY)


def test_without_gpus_trials_share_the_cpus_up_now():
    resources = resources_for(options(), CPU_ONLY)
    assert resources.gpus_per_worker == 0.0 and resources.concurrent == 2
    assert resources.cpus_per_worker == 2.0


def test_data_parallel_workers_get_whole_gpus_and_one_trial_per_gpu_pair():
    resources = resources_for(options(workers_per_trial=2), NEW_AWS_CLUSTER)
    assert resources.gpus_per_worker == 1.0 and resources.concurrent == 2
    assert resources.cpus_per_worker == pytest.approx(3.9)  # the trial's own process aside


def test_the_clusters_max_workers_caps_the_gpus_it_can_reach():
    capped = Capacity(cpus=4.0, gpus=0.0, node_types=(A10G,), max_workers=2)
    assert capped.reachable_gpus() == 2.0
    assert resources_for(options(), capped).concurrent == 8


def test_more_gpus_than_the_cluster_can_ever_have_is_refused():
    with pytest.raises(UcrnError, match="can have 4 GPUs at most"):
        resources_for(options(gpus_per_worker=4.0, workers_per_trial=2), NEW_AWS_CLUSTER)


def test_more_cpus_than_a_gpu_node_has_is_refused():
    with pytest.raises(UcrnError, match="a GPU node has 4 CPUs"):
        resources_for(options(gpus_per_worker=0.25, cpus_per_worker=8.0), NEW_AWS_CLUSTER)


def test_node_types_are_read_from_an_autoscaling_config():
    config = {"head_node_type": "head", "max_workers": 3, "available_node_types": {
        "head": {"resources": {"CPU": 4}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 8, "GPU": 2, "accelerator_type:T4": 1},
                "min_workers": 0, "max_workers": 5}}}
    types, cap, head = read_node_types(config)
    assert head == "head" and cap == 3
    assert [(t.name, t.gpus, t.cpus, t.max_workers, t.accelerator) for t in types] == \
        [("gpu", 2.0, 8.0, 5, "T4")]
    capacity = Capacity(cpus=4.0, gpus=0.0, node_types=types, max_workers=cap)
    assert capacity.reachable_gpus() == 6.0 and capacity.gpu_memory_gib() == 15.0


def test_the_wait_for_nodes_says_when_the_gpus_change_and_stops_once_a_trial_starts():
    lines, now = [], [0.0]
    wait = NodeWait(0.25, lines.append, every_s=60.0, clock=lambda: now[0])
    gpus = [0.0]
    wait.step(lambda: gpus[0])
    assert len(lines) == 1 and "0 GPU(s) up" in lines[0]
    now[0] = 30.0
    wait.step(lambda: gpus[0])
    assert len(lines) == 1  # nothing new to say
    now[0], gpus[0] = 40.0, 1.0
    wait.step(lambda: gpus[0])
    assert len(lines) == 2 and "1 GPU(s) up" in lines[1]
    wait.trial_started = True
    now[0] = 500.0
    wait.step(lambda: gpus[0])
    assert len(lines) == 2


def test_packed_trials_that_do_not_fit_the_gpus_are_refused_with_the_share_that_fits():
    check_packing(5 * 2**30, 4, 22.0)  # 20 GiB on 22: fits
    with pytest.raises(UcrnError, match=r"4 trial\(s\) per GPU .* --gpus-per-worker 0.5 "):
        check_packing(10 * 2**30, 4, 22.0)
    with pytest.raises(UcrnError, match=r"--gpus-per-worker 0.3333 "):  # 3 fit
        check_packing(7 * 2**30, 4, 22.0)
    check_packing(100 * 2**30, 4, None)  # unknown memory: each trial checks its own GPU
    assert "not even one fits" in packing_problem(30 * 2**30, 1, 22 * 2**30)


def test_a_user_error_is_found_inside_rays_wrapping():
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("traceback text\nmore")
            self.cause = cause

    assert user_error_in(Wrapped(UcrnError("node x: the fix"))) == "node x: the fix"
    assert user_error_in(Wrapped(ValueError("bug"))) is None
    assert user_error_in(None) is None


def test_a_gpu_that_torch_cannot_use_is_one_line_with_versions_and_fix(monkeypatch):
    from ucrn import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "driver_version", lambda: "550.54")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(UcrnError) as raised:
        gpu.check_gpu_usable("node 10.0.0.5 (id abc)")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("node 10.0.0.5 (id abc) was given a GPU that torch cannot use")
    assert "CUDA 13.0" in message and "driver 550.54" in message and "whl/cu" in message


def test_trials_that_overfill_their_gpu_fail_in_the_trial_with_one_line(monkeypatch):
    from ucrn import gpu

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 8 * 2**30))
    gpu.check_fits_gpu(2 * 2**30, 4, "node n")
    with pytest.raises(UcrnError, match=r"node n, its GPU: 4 trial\(s\) per GPU"):
        gpu.check_fits_gpu(3 * 2**30, 4, "node n")

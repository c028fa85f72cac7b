"""K models trained as one stacked computation (``ucrn.stack``) against K runs apart.

    python benchmarks/stacked_models.py [--device cpu|cuda] [--quick] [--json]

On MOSI's aligned shapes, batch 16, the paper's model:

- kernel-launching ATen operations per model per training step (forward, the summed loss,
  backward, per-model clipping and Adam; the static step, as a GPU runs it; counted with
  ``ucrn.step_count``) at K = 1, 4 and 10;
- model-steps per second at K = 10 stacked against 10 models trained one after another
  (the device's default step), and the memory a step holds at its peak, per model, at
  K = 1 and 10 (on a GPU the peak torch allocated; on the CPU the tensors: weights,
  gradients, Adam's moments and what the forward saves for backward);
- the largest relative deviation of a K = 4 stack with dropout 0 from the same four runs
  trained apart, over 2 epochs of the tiny synthetic MOSI: losses and metrics (relative,
  absolute below 1 in size, as a correlation near 0 would inflate it), and the weights as
  a whole (‖Δw‖ / ‖w‖).

``--quick`` takes a small model and few steps (for CI); ``--json`` prints one object with
``ops_per_model_step`` (``{"1": N, "4": N, "10": N}``), ``cpu_speedup_k10`` (model-steps
per second stacked over apart, on the device measured), ``peak_mib_per_model`` and
``max_relative_deviation``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ucrn.config import Config, apply_overrides
from ucrn.engine import fit
from ucrn.stack import ModelStack, fit_stack
from ucrn.step_count import (
    ALIGNED,
    DispatchCounter,
    count_step,
    random_dataset,
    stack_steps,
    step_benchmark_arguments,
    train_steps,
    training_for,
)

COUNTS = (1, 4, 10)


def _config(quick: bool, seed: int = 0, **settings) -> Config:
    small = {"urm_layers": 1, "crm_layers": 1} if quick else {}
    return apply_overrides(Config(), {**small, "seed": seed, "epochs": 1, **settings})


def _dataset(quick: bool):
    return random_dataset(ALIGNED, ((96 if quick else 640), 32, 32))


def _stack(k: int, quick: bool, device: torch.device, **settings) -> ModelStack:
    configs = [_config(quick, seed, **settings) for seed in range(k)]
    return ModelStack(configs, _dataset(quick), device)


def ops_per_model_step(k: int, quick: bool, device: torch.device) -> float:
    """Kernel-launching operations per model per step of the static step."""
    if k == 1:
        training = training_for(_config(quick, static_shapes="true"), _dataset(quick), device)
        return count_step(training)["kernel_ops"]
    stack = _stack(k, quick, device, static_shapes="true")
    counters = []
    for steps in (2, 4):
        with DispatchCounter() as counter:
            stack_steps(stack, steps)
        counters.append(counter.kernel_ops)
    return (counters[1] - counters[0]) / 2 / k


def model_steps_per_second(quick: bool, device: torch.device, k: int = 10) -> dict:
    """``k`` models stacked against the same ``k`` trained one after another."""
    steps = 2 if quick else 10
    stack = _stack(k, quick, device)
    runs = [training_for(_config(quick, seed), _dataset(quick), device) for seed in range(k)]
    stack_steps(stack, 2)  # warm-up, every run
    for training in runs:
        train_steps(training, 2)
    rates: dict[str, list[float]] = {"stacked": [], "apart": []}
    for _ in range(3):  # alternated: this machine's speed drifts
        started = time.perf_counter()
        stack_steps(stack, steps)
        _synchronize(device)
        rates["stacked"].append(k * steps / (time.perf_counter() - started))
        started = time.perf_counter()
        for training in runs:
            train_steps(training, steps)
        _synchronize(device)
        rates["apart"].append(k * steps / (time.perf_counter() - started))
    stacked, apart = (statistics.median(rates[way]) for way in ("stacked", "apart"))
    return {"stacked": round(stacked, 1), "apart": round(apart, 1),
            "speedup": round(stacked / apart, 3)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib_per_model(quick: bool, device: torch.device) -> dict[str, float]:
    """Per model, the memory a training step holds at its peak, in MiB, at K = 1 and 10: on
    a GPU the peak torch allocated, over K; on the CPU the tensors themselves — weights,
    gradients and Adam's two moments, and what the forward saves for backward — over K."""
    dataset = _dataset(quick)
    report = {}
    for k in (1, 10):
        if k == 1:
            training = training_for(_config(quick), dataset, device)
            flat, step = training.parameters.flat, lambda t=training: train_steps(t, 1)
        else:
            stack = ModelStack([_config(quick, seed) for seed in range(k)], dataset, device)
            flat, step = stack.flat.flat, lambda s=stack: stack_steps(s, 1)
        step()  # warm-up: the optimizer's state exists
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            report[str(k)] = round(torch.cuda.max_memory_allocated(device) / 2**20 / k, 2)
            continue
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor, saved=saved, flat=flat) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() != flat.untyped_storage().data_ptr():  # not a weight
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()
        state = 4 * flat.numel() * flat.element_size()  # weights, gradients, two moments
        report[str(k)] = round((state + sum(saved.values())) / 2**20 / k, 2)
    return report


def max_relative_deviation(device: torch.device) -> float:
    """A K = 4 stack with dropout 0 against the four runs apart (2 epochs, tiny MOSI)."""
    from ucrn.data.layout import load_dataset
    from ucrn.data.synthetic import synthesize

    with tempfile.TemporaryDirectory() as folder:
        dataset = load_dataset(synthesize("mosi", Path(folder) / "mosi.h5", scale=0.05, seed=1))
    settings = {"urm_layers": 2, "crm_layers": 1, "width": 12, "epochs": 2, "dropout": 0.0}
    configs = [apply_overrides(Config(), {**settings, "seed": seed, "learning_rate": rate})
               for seed, rate in enumerate((1e-3, 2e-3, 1e-3, 5e-4))]
    worst = 0.0
    for stacked, config in zip(fit_stack(configs, dataset, device=device), configs,
                               strict=True):
        alone = fit(config, dataset, device=device)
        values = [(a, b) for mine, theirs in zip(stacked.history, alone.history, strict=True)
                  for a, b in ((mine[key], theirs[key]) for key in theirs)
                  if isinstance(b, float)]
        values += [(stacked.test[key], alone.test[key]) for key in alone.test]
        for a, b in values:  # relative, and absolute below 1 (a correlation near 0)
            worst = max(worst, abs(a - b) / max(abs(b), 1.0))
        weights = [torch.cat([p.detach().reshape(-1) for p in run.model.parameters()])
                   for run in (stacked, alone)]
        worst = max(worst, float((weights[0] - weights[1]).norm() / weights[1].norm()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = step_benchmark_arguments(__doc__.splitlines()[0], "a small model, few steps")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(2)
    ops = {str(k): ops_per_model_step(k, args.quick, device) for k in COUNTS}
    speed = model_steps_per_second(args.quick, device)
    report = {"device": str(device), "ops_per_model_step": ops,
              "cpu_speedup_k10": speed["speedup"], "model_steps_per_s_k10": speed,
              "peak_mib_per_model": peak_mib_per_model(args.quick, device),
              "max_relative_deviation": max_relative_deviation(device)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"K models as one stacked computation, batch 16, on {device}"
          f"{' (--quick: a small model)' if args.quick else ''}")
    for k, count in ops.items():
        print(f"  K = {k:>2}: {count:7.1f} kernel-launching operations per model per step "
              f"({count / ops['1']:.3f} of K = 1's)")
    print(f"  K = 10: {speed['stacked']} model-steps/s stacked, {speed['apart']} apart: "
          f"{speed['speedup']}×")
    for k, mib in report["peak_mib_per_model"].items():
        print(f"  peak memory per model, K = {k:>2}: {mib} MiB")
    print(f"  K = 4, dropout 0, 2 epochs: largest relative deviation from the runs apart "
          f"{report['max_relative_deviation']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

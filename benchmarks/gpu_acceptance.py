"""The GPU path, proved on one GPU in one run: what the CPU cannot show.

    PYTHONPATH=. python benchmarks/gpu_acceptance.py --out DIR [--seconds 15]
    PYTHONPATH=. python benchmarks/gpu_acceptance.py --out DIR --dry-run   # CPU, < 1 min

Uses only PyTorch and this package (the lent GPU machine has no Ray and no Optuna) and
writes ``DIR/gpu_acceptance.json`` with:

- ``environment``: torch, its CUDA, the NVIDIA driver, the GPU and its memory;
- ``parity``: the same 2-epoch run (dropout 0, one seed) on the CPU and on the GPU, the
  largest difference in training loss and validation MAE per epoch;
- ``step_aligned``, ``step_unaligned`` (the static step, ``static_shapes``, CUDA's default)
  and ``…_dynamic`` (the dynamic one, its A/B): ms per training step and samples/s at batch
  16, aligned and unaligned MOSI shapes; ATen operations and host syncs per step (a
  dispatch counter, ``ucrn.step_count``; on CUDA also ``torch.cuda.set_sync_debug_mode``);
  CUDA kernels per step and the GPU's busy share (the profiler); peak memory;
- ``graphed``: the static step captured as CUDA graphs (``ucrn.graphed``) against the same
  step eager: ms per step, speed-up, kernels per step and the GPU's busy share, the graphs
  captured (batch sizes) or a failed capture, and one epoch of each from one seed with
  dropout 0 (their largest difference in any loss or validation metric);
- ``stacked``: K = 1, 4, 16, 64 models as one stacked computation (``ucrn.stack``), the
  static step eager: model-steps/s, speed-up over K = 1 (goal ≥ 10× at 16), MiB per model;
- ``footprint``: one MOSEI-size run's peak GPU memory against ``ucrn.footprint``'s estimate;
- ``packing``: k = 1, 2, 4, 8 processes, each training one fixed configuration on
  MOSEI-size data for ``--seconds``: total steps/s, speed-up over k = 1, MiB per process;
- ``ddp``: a one-rank NCCL process group through a file store (gloo on the CPU), one epoch,
  against the same epoch without DDP;
- ``resume``: 2 epochs with dropout straight, and 1 + resume + 1, compared exactly.

Each part catches its own failure (recorded under ``error``), so one broken part still
leaves the others' figures. ``--dry-run`` runs every part on the CPU with small data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ucrn import step_count
from ucrn.config import Config, apply_overrides
from ucrn.data.layout import Dataset, load_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import _Training, fit, prepare_config
from ucrn.footprint import training_device_bytes
from ucrn.gpu import driver_version
from ucrn.model import UCRN, count_parameters
from ucrn.step_count import ALIGNED, UNALIGNED, random_dataset, train_steps

MOSEI = {"l": (50, 300), "a": (50, 74), "v": (50, 35)}
MOSI_COUNTS, MOSEI_COUNTS = (1284, 229, 686), (16326, 1871, 4659)
PACKING = (1, 2, 4, 8)
STACKS = (1, 4, 16, 64)  # models trained as one stacked computation


# ------------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part(results: dict, name: str, run: Callable[[], dict]) -> None:
    """Run one part, keep its figures or its error, and say how long it took."""
    started = time.perf_counter()
    try:
        results[name] = run()
    except Exception as error:  # noqa: BLE001 - a broken part must not hide the others
        results[name] = {"error": f"{type(error).__name__}: {error}",
                         "traceback": traceback.format_exc(limit=6)}
    results[name]["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {json.dumps(results[name], default=str)[:400]}", flush=True)


MODEL = {}  # the paper's model on a GPU; a small one for the dry run


def base_config(**overrides) -> Config:
    return apply_overrides(Config(), {"epochs": 2, "patience": 2, **MODEL, **overrides})


# --------------------------------------------------------------------------------- parts


def environment(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
             "driver": driver_version(), "python": platform.python_version()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                     capability=f"{properties.major}.{properties.minor}")
    return facts


def parity(data: Path, device: torch.device) -> dict:
    """CPU and ``device`` from one seed, dropout 0: the per-epoch differences."""
    config = base_config(dropout=0.0, seed=3)
    dataset = load_dataset(data)
    on_cpu = fit(config, dataset, device="cpu", score_test=False).history
    on_device = fit(config, dataset, device=device, score_test=False).history
    pairs = list(zip(on_cpu, on_device, strict=True))
    loss = max(abs(a["train_loss"] - b["train_loss"]) for a, b in pairs)
    mae = max(abs(a["valid_MAE"] - b["valid_MAE"]) for a, b in pairs)
    return {"epochs": len(on_cpu), "max_train_loss_difference": loss,
            "max_valid_MAE_difference": mae,
            "valid_MAE": [round(e["valid_MAE"], 6) for e in on_device]}


def training_for(dataset: Dataset, device: torch.device, **overrides) -> _Training:
    return step_count.training_for(base_config(**overrides), dataset, device)


def step_figures(dataset: Dataset, device: torch.device, count: int,
                 static_shapes: str, cuda_graph: bool = False) -> dict:
    """ms per step, operations and syncs per step, kernels and busy share on a GPU."""
    training = training_for(dataset, device, static_shapes=static_shapes,
                            cuda_graph=cuda_graph)
    batch = training.config.train.batch_size
    train_steps(training, 5)  # warm-up: kernels chosen, memory pooled
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        train_steps(training, count)
        synchronize(device)
        timings.append((time.perf_counter() - started) / count)
    per_step = statistics.median(timings)
    # a replayed graph dispatches only the batch's copies: count the eager step
    counted = step_count.count_step(training) if training.graphs is None else {
        "ops": None, "kernel_ops": None, "syncs": None}
    figures = {"static_shapes": training.model.static_shapes,
               "graphs": sorted(training.graphs.graphs) if training.graphs else [],
               "capture_failed": bool(training.graphs and training.graphs.failed),
               "ms_per_step": round(per_step * 1e3, 3),
               "samples_per_s": round(batch / per_step, 1),
               "aten_ops_per_step": counted["ops"],
               "non_view_ops_per_step": counted["kernel_ops"],
               "host_syncs_per_step": counted["syncs"]}
    if device.type == "cuda":
        figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_steps(training, 2)
            synchronize(device)
        torch.cuda.set_sync_debug_mode("default")
        figures["sync_debug_warnings_per_step"] = len(caught) / 2
        figures.update(profiled(training, device, count))
    return figures


def graphed(dataset: Dataset, device: torch.device, count: int) -> dict:
    """The static step as a CUDA graph against the same step eager (goal: ≤ 1.5 ms per
    aligned batch-16 step, ≥ 4× the eager one), and one epoch of each from one seed with
    dropout 0 (their largest differences)."""
    figures = {"graphed": step_figures(dataset, device, count, "true", cuda_graph=True)}
    eager = step_figures(dataset, device, count, "true", cuda_graph=False)
    figures["eager_ms_per_step"] = eager["ms_per_step"]
    figures["speedup"] = round(eager["ms_per_step"] / figures["graphed"]["ms_per_step"], 2)
    epochs = {setting: fit(base_config(dropout=0.0, seed=3, epochs=1, static_shapes="true",
                                       cuda_graph=setting), dataset, device=device,
                           score_test=False).history[0] for setting in (False, True)}
    figures["max_epoch_difference"] = max(
        abs(epochs[False][key] - epochs[True][key]) for key in epochs[False]
        if key.startswith(("train_", "valid_")))
    return figures


def profiled(training: _Training, device: torch.device, count: int) -> dict:
    """CUDA kernels per step and the share of the wall time the GPU computed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        started = time.perf_counter()
        train_steps(training, count)
        synchronize(device)
        wall = time.perf_counter() - started
    kernels = [e for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6  # microseconds → seconds
    return {"kernels_per_step": len(kernels) / count,
            "gpu_busy_percent": round(100 * busy / wall, 1)}


def stacked(dataset: Dataset, device: torch.device, count: int, levels: tuple[int, ...]
            ) -> dict:
    """K models as one stacked computation (``ucrn.stack``), the static step eager:
    model-steps/s at each K, speed-up over K = 1 (goal: ≥ 10× at 16), peak MiB per model."""
    from ucrn.stack import ModelStack

    rows = []
    for k in levels:
        if k == 1:
            training = training_for(dataset, device, static_shapes="true", cuda_graph=False)
            step = lambda steps, t=training: train_steps(t, steps)  # noqa: E731
        else:
            configs = [base_config(static_shapes="true", seed=seed) for seed in range(k)]
            stack = ModelStack(configs, dataset, device)
            step = lambda steps, s=stack: step_count.stack_steps(s, steps)  # noqa: E731
        step(3)  # warm-up: kernels chosen, memory pooled
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        step(count)
        synchronize(device)
        row = {"k": k, "model_steps_per_s": round(k * count / (time.perf_counter() - started),
                                                   1)}
        if device.type == "cuda":
            row["peak_mib_per_model"] = round(
                torch.cuda.max_memory_allocated(device) / 2**20 / k, 1)
        rows.append(row)
    for row in rows:
        row["speedup_over_k1"] = round(row["model_steps_per_s"] / rows[0]["model_steps_per_s"],
                                       2)
    return {"levels": rows}


def footprint(dataset: Dataset, device: torch.device) -> dict:
    """A MOSEI-size run's peak memory on its device against the estimate."""
    config = prepare_config(base_config(), dataset)
    estimate = training_device_bytes(config, dataset, count_parameters(UCRN(config.model)),
                                     on_gpu=device.type == "cuda")
    figures = {"estimate_mib": round(estimate / 2**20, 1)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        free_before, total = torch.cuda.mem_get_info(device)
        training = _Training(config, dataset, device, None, None)
        train_steps(training, 20)
        synchronize(device)
        figures.update(peak_allocated_mib=round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                       peak_reserved_mib=round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
                       process_used_mib=round((total - torch.cuda.mem_get_info(device)[0]) / 2**20,
                                              1),
                       free_before_mib=round(free_before / 2**20, 1))
        del training
        torch.cuda.empty_cache()
    return figures


def _packed_worker(rank: int, seconds: float, counts: tuple, device_name: str, model: dict,
                   queue) -> None:
    """One packed process: MOSEI-size data on the device, training for ``seconds``."""
    torch.set_num_threads(1)
    MODEL.update(model)
    device = torch.device(device_name)
    dataset = random_dataset(MOSEI, counts, seed=rank, lengths=False)
    training = training_for(dataset, device, seed=rank)
    train_steps(training, 3)  # warm-up
    synchronize(device)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        train_steps(training, 10)
        done += 10
    synchronize(device)
    elapsed = time.perf_counter() - started
    used = None
    if device.type == "cuda":
        used = torch.cuda.max_memory_reserved(device) / 2**20
    queue.put({"rank": rank, "steps": done, "seconds": elapsed, "reserved_mib": used})


def packing(seconds: float, levels: tuple[int, ...], counts: tuple, device: torch.device) -> dict:
    """k processes training at once: total steps/s and the speed-up over one."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for k in levels:
        queue = context.Queue()
        processes = [context.Process(target=_packed_worker,
                                     args=(rank, seconds, counts, str(device), MODEL, queue))
                     for rank in range(k)]
        for process in processes:
            process.start()
        reports = [queue.get(timeout=seconds * 4 + 300) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        total = sum(r["steps"] / r["seconds"] for r in reports)
        reserved = [r["reserved_mib"] for r in reports if r["reserved_mib"] is not None]
        rows.append({"k": k, "steps_per_s": round(total, 2),
                     "reserved_mib_per_process": round(max(reserved), 1) if reserved else None})
    for row in rows:
        row["speedup_over_k1"] = round(row["steps_per_s"] / rows[0]["steps_per_s"], 2)
    return {"seconds_each": seconds, "levels": rows,
            "note": "reserved MiB is torch's pool; each process adds its CUDA context"}


def ddp(data: Path, device: torch.device, folder: Path) -> dict:
    """One rank of DDP through a file store, one epoch, against the same epoch alone."""
    import torch.distributed as distributed
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if device.type == "cuda" else "gloo"
    config = base_config(dropout=0.0, epochs=1)
    dataset = load_dataset(data)
    alone = fit(config, dataset, device=device, score_test=False).history[-1]
    distributed.init_process_group(backend, init_method=f"file://{folder / 'rendezvous'}",
                                   rank=0, world_size=1)
    try:
        ids = [device.index or 0] if device.type == "cuda" else None
        wrapped = fit(config, dataset, device=device, score_test=False, rank=0, world_size=1,
                      wrap_model=lambda model: DistributedDataParallel(
                          model, device_ids=ids)).history[-1]
    finally:
        distributed.destroy_process_group()
    return {"backend": backend, "loss_alone": alone["train_loss"],
            "loss_ddp": wrapped["train_loss"],
            "loss_difference": abs(alone["train_loss"] - wrapped["train_loss"])}


def resume(data: Path, device: torch.device) -> dict:
    """2 epochs straight, and 1 + resume + 1, with dropout (the device's random state)."""
    config = base_config(dropout=0.1, seed=5)
    dataset = load_dataset(data)
    straight = fit(config, dataset, device=device, score_test=False)
    saved = []
    fit(apply_overrides(config, {"epochs": 1}), dataset, device=device, score_test=False,
        on_epoch=lambda result, checkpoint: saved.append(checkpoint()))
    resumed = fit(config, dataset, device=device, score_test=False, resume=saved[-1])
    weights = max(float((a - b).abs().max()) for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True))
    losses = [abs(a["train_loss"] - b["train_loss"])
              for a, b in zip(straight.history, resumed.history, strict=True)]
    return {"max_weight_difference": weights, "max_loss_difference": max(losses),
            "exact": weights == 0.0 and max(losses) == 0.0}


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_acceptance.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="every part on the CPU with small data (checks the script)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="training time of each packing level (default 15)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        device, scale, count, seconds = torch.device("cpu"), 0.05, 3, 1.0
        levels, mosei_counts, stack_levels = (1, 2), (256, 32, 32), (1, 2, 4)
        MODEL.update(urm_layers=1, crm_layers=1)
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_acceptance: torch sees no GPU here (use --dry-run to check the "
                     "script on a CPU)")
        device, scale, count, seconds = torch.device("cuda:0"), 0.25, 50, args.seconds
        levels, mosei_counts, stack_levels = PACKING, MOSEI_COUNTS, STACKS
    started = time.perf_counter()
    results: dict = {"dry_run": args.dry_run}
    part(results, "environment", lambda: environment(device))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = synthesize("mosi", folder / "mosi.h5", scale=scale, seed=0)
        part(results, "parity", lambda: parity(data, device))
        aligned = random_dataset(ALIGNED, (max(64, round(MOSI_COUNTS[0] * scale)), 32, 32))
        unaligned = random_dataset(UNALIGNED, (max(64, round(MOSI_COUNTS[0] * scale)), 32, 32))
        for name, shapes in (("aligned", aligned), ("unaligned", unaligned)):
            # the static step (CUDA's default), and the dynamic one as its A/B
            part(results, f"step_{name}",
                 lambda shapes=shapes: step_figures(shapes, device, count, "true"))
            part(results, f"step_{name}_dynamic",
                 lambda shapes=shapes: step_figures(shapes, device, count, "false"))
        part(results, "graphed", lambda: graphed(aligned, device, count))
        part(results, "stacked", lambda: stacked(aligned, device, count, stack_levels))
        part(results, "footprint", lambda: footprint(
            random_dataset(MOSEI, mosei_counts, lengths=False), device))
        part(results, "packing", lambda: packing(seconds, levels, mosei_counts, device))
        part(results, "ddp", lambda: ddp(data, device, folder))
        part(results, "resume", lambda: resume(data, device))
    results["seconds"] = round(time.perf_counter() - started, 1)
    target = out / "gpu_acceptance.json"
    target.write_text(json.dumps(results, indent=1, default=str) + "\n")
    failed = [name for name, value in results.items()
              if isinstance(value, dict) and "error" in value]
    print(f"wrote {target} in {results['seconds']} s; "
          + (f"failed parts: {', '.join(failed)}" if failed else "every part ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

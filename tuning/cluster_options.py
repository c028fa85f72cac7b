"""Command-line options shared by the search and the evaluator: where trials run, on what.

No Ray import here: options are parsed and checked before Ray starts.
"""

from __future__ import annotations

import argparse
import math

from ucrn.errors import UcrnError


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--address``, ``--max-concurrent``, per-worker resources and ``--max-failures``."""
    cluster = parser.add_argument_group("cluster and storage")
    cluster.add_argument("--address", help="a running Ray cluster (default: $RAY_ADDRESS, "
                         "else a local Ray on 127.0.0.1)")
    cluster.add_argument("--max-concurrent", type=int,
                         help="trials at once (default: as many as the cluster's GPUs hold, "
                         "those its autoscaler can add included, at --gpus-per-worker each; "
                         "2 without GPUs)")
    cluster.add_argument("--workers-per-trial", type=int, default=1,
                         help="Ray Train workers (DDP) per trial")
    cluster.add_argument("--cpus-per-worker", type=float,
                         help="default: the cluster's CPUs shared by the concurrent trials")
    cluster.add_argument("--gpus-per-worker", type=float,
                         help="e.g. 0.25 packs four trials on a GPU (default when the cluster "
                         "has GPUs or its autoscaler can add some: 0.25 for one worker per "
                         "trial, 1 for data parallelism; else 0)")
    cluster.add_argument("--max-failures", type=int, default=2,
                         help="restarts of a failed trial from its last checkpoint")
    cluster.add_argument("--stall-minutes", type=float, default=30.0,
                         help="stop, with an error, when no trial has reported an epoch for "
                         "this long (default 30)")
    return cluster


def check_cluster_arguments(args: argparse.Namespace) -> None:
    """Refuse, before Ray starts, resources no trial can use."""
    for name in ("max_concurrent", "workers_per_trial"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UcrnError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if args.max_failures < 0:
        raise UcrnError(f"--max-failures {args.max_failures}: give 0 or more")
    if not (math.isfinite(args.stall_minutes) and args.stall_minutes > 0):
        raise UcrnError(f"--stall-minutes {args.stall_minutes:g}: give a number of minutes > 0")
    for name in ("cpus_per_worker", "gpus_per_worker"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UcrnError(f"--{name.replace('_', '-')} {value}: give a number ≥ 0")
    if args.cpus_per_worker == 0:
        raise UcrnError("--cpus-per-worker 0: a worker needs some CPU, e.g. 0.5")
    gpus = args.gpus_per_worker
    if args.workers_per_trial > 1 and gpus and not float(gpus).is_integer():
        raise UcrnError(
            f"--workers-per-trial {args.workers_per_trial} with --gpus-per-worker {gpus:g}: "
            "two workers of one trial could share a GPU, which NCCL refuses (\"Duplicate GPU "
            "detected\"); give each worker whole GPUs (--gpus-per-worker 1) or use one worker "
            "per trial"
        )

"""Command-line options shared by the search and the evaluator: where trials run, on what.

No Ray import here: options are parsed and checked before Ray starts.
"""

from __future__ import annotations

import argparse


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--address``, ``--max-concurrent``, per-worker resources and ``--max-failures``."""
    cluster = parser.add_argument_group("cluster and storage")
    cluster.add_argument("--address", help="a running Ray cluster (default: $RAY_ADDRESS, "
                         "else a local Ray on 127.0.0.1)")
    cluster.add_argument("--max-concurrent", type=int, default=2,
                         help="trials at once (default 2)")
    cluster.add_argument("--workers-per-trial", type=int, default=1,
                         help="Ray Train workers (DDP) per trial")
    cluster.add_argument("--cpus-per-worker", type=float,
                         help="default: the cluster's CPUs shared by the concurrent trials")
    cluster.add_argument("--gpus-per-worker", type=float,
                         help="e.g. 0.25 packs four trials on a GPU (default: 0.25 when the "
                         "cluster has GPUs, else 0)")
    cluster.add_argument("--max-failures", type=int, default=2,
                         help="restarts of a failed trial from its last checkpoint")
    return cluster

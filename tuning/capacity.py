"""What a Ray cluster can give trials: what is up now, and what its autoscaler can add.

A new cluster from ``cluster.yaml`` has a CPU head and no GPU node: its GPU nodes start
when trials wait for GPUs. So the search and the evaluator plan with the node types of the
autoscaling config that the head runs, not with ``ray.cluster_resources()`` alone. That
config is read on the head, by a task pinned there: from the GCS when the autoscaler
publishes it (autoscaler v2), else from the file the head's autoscaler was started with
(its ``--autoscaling-config``: ``~/ray_bootstrap_config.yaml`` on a ``ray up`` cluster),
found as the head's autoscaler process that names this cluster's GCS address.
On AWS ``ray up`` has already filled in each node type's CPUs, GPUs and accelerator type.
A cluster without an autoscaler has no node types: what is up is all it will ever have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

HEAD_RESOURCE = "node:__internal_head__"
ACCELERATOR_PREFIX = "accelerator_type:"
# GPU memory by Ray's accelerator type (GiB, the smaller model where there are two), for
# the check before any node is up; a trial checks the real figure on its own GPU.
GPU_MEMORY_GIB = {
    "T4": 15.0, "A10G": 22.0, "L4": 22.0, "V100": 16.0, "A100": 40.0, "H100": 80.0,
    "H200": 141.0, "L40S": 45.0, "K80": 12.0, "M60": 8.0,
}


@dataclass(frozen=True)
class NodeType:
    """A kind of worker node the autoscaler may start, up to ``max_workers`` of them."""

    name: str
    resources: dict[str, float]
    max_workers: int

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0.0))

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0.0))

    @property
    def accelerator(self) -> str | None:
        return next((key.removeprefix(ACCELERATOR_PREFIX) for key in self.resources
                     if key.startswith(ACCELERATOR_PREFIX)), None)

    @property
    def gpu_memory_gib(self) -> float | None:
        return GPU_MEMORY_GIB.get(self.accelerator or "")


@dataclass(frozen=True)
class Capacity:
    """Resources up now, and the worker node types an autoscaler may add."""

    cpus: float
    gpus: float
    node_types: tuple[NodeType, ...] = ()
    max_workers: int | None = None  # the cluster's cap on worker nodes of all types
    head_gpus: float = 0.0  # GPUs of the head node type (autoscaling clusters)
    gpu_hosts_up: tuple[tuple[float, float], ...] = ()  # (CPUs, GPUs) of each GPU node up

    @property
    def autoscaling(self) -> bool:
        return any(t.max_workers > 0 for t in self.node_types)

    def gpu_node_types(self) -> list[NodeType]:
        return [t for t in self.node_types if t.gpus > 0 and t.max_workers > 0]

    def reachable_gpus(self) -> float:
        """The most GPUs the cluster can have at once: those up, or what the autoscaler can
        start (the node types with the most GPUs per node first, within ``max_workers``)."""
        nodes_left = math.inf if self.max_workers is None else self.max_workers
        addable = 0.0
        for node_type in sorted(self.gpu_node_types(), key=lambda t: -t.gpus):
            count = min(node_type.max_workers, nodes_left)
            addable += count * node_type.gpus
            nodes_left -= count
        return max(self.gpus, addable + self.head_gpus)

    def gpu_hosts(self) -> list[tuple[float, float]]:
        """(CPUs, GPUs) of every kind of GPU node there is or may be."""
        return [*self.gpu_hosts_up, *((t.cpus, t.gpus) for t in self.gpu_node_types())]

    def gpu_memory_gib(self) -> float | None:
        """The smallest GPU memory among the GPU node types, where their accelerator is
        known (nodes up are checked by the trials themselves)."""
        known = [t.gpu_memory_gib for t in self.gpu_node_types() if t.gpu_memory_gib]
        return min(known) if known else None

    def describe_autoscaling(self) -> str:
        types = ", ".join(f"{t.name} ≤ {t.max_workers} × {t.gpus:g} GPU"
                          + (f" ({t.accelerator})" if t.accelerator else "")
                          for t in self.gpu_node_types())
        return types or "no GPU node type"


def read_node_types(config: dict[str, Any]) -> tuple[tuple[NodeType, ...], int | None, str]:
    """The worker node types of an autoscaling (cluster-launcher) config, the cluster's
    ``max_workers`` and the head's node type."""
    head = config.get("head_node_type", "")
    types = []
    for name, entry in (config.get("available_node_types") or {}).items():
        if name == head or not isinstance(entry, dict):
            continue
        resources = {str(k): float(v) for k, v in (entry.get("resources") or {}).items()
                     if isinstance(v, (int, float))}
        types.append(NodeType(name, resources, int(entry.get("max_workers", 0) or 0)))
    cap = config.get("max_workers")
    return tuple(types), (int(cap) if cap is not None else None), head


def _config_on_this_machine(gcs_address: str) -> dict[str, Any] | None:
    """The autoscaling config that the autoscaler of the cluster at ``gcs_address`` runs,
    when it runs on this machine (another cluster's autoscaler here is not ours)."""
    import psutil
    import yaml

    for process in psutil.process_iter(["cmdline"]):
        arguments = process.info.get("cmdline") or []
        if not any(a.endswith("monitor.py") for a in arguments) \
                or f"--gcs-address={gcs_address}" not in arguments:
            continue
        for path in (a.split("=", 1)[1] for a in arguments
                     if a.startswith("--autoscaling-config=")):
            try:
                loaded = yaml.safe_load(Path(path).expanduser().read_text())  # JSON is YAML
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(loaded, dict) and "available_node_types" in loaded:
                return loaded
    return None


def _published_node_types() -> tuple[tuple[NodeType, ...], int | None] | None:
    """The node types an autoscaler v2 publishes in the GCS, when it does."""
    from ray._private.state import state

    try:
        published = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older or newer GCS without it
        return None
    if published is None or not published.node_group_configs:
        return None
    types = tuple(NodeType(group.name, dict(group.resources), int(group.max_count))
                  for group in published.node_group_configs if group.max_count != 0)
    return types, None


def autoscaling_config_on_head(timeout_s: float = 30.0) -> dict[str, Any] | None:
    """The head node's autoscaling config, read by a task pinned to the head."""
    import ray

    address = ray.get_runtime_context().gcs_address
    reader = ray.remote(num_cpus=0, resources={HEAD_RESOURCE: 0.001})(_config_on_this_machine)
    try:
        return ray.get(reader.remote(address), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - no head resource (an old cluster), or a timeout
        return None


def cluster_capacity(autoscaled: bool = True) -> Capacity:
    """The joined cluster's capacity: resources up now and what its autoscaler can add
    (``autoscaled=False``: a local Ray this process started, which has no autoscaler)."""
    import ray

    resources = ray.cluster_resources()
    node_types: tuple[NodeType, ...] = ()
    max_workers = None
    head_gpus = 0.0
    published = _published_node_types() if autoscaled else None
    if published is not None:
        node_types, max_workers = published
    elif autoscaled:
        config = autoscaling_config_on_head()
        if config is not None:
            node_types, max_workers, head = read_node_types(config)
            head_entry = (config.get("available_node_types") or {}).get(head) or {}
            head_gpus = float((head_entry.get("resources") or {}).get("GPU", 0.0))
    hosts = tuple((float(node["Resources"].get("CPU", 0.0)), float(node["Resources"]["GPU"]))
                  for node in ray.nodes()
                  if node.get("Alive") and node["Resources"].get("GPU", 0.0) > 0)
    return Capacity(
        cpus=float(resources.get("CPU", 0.0)), gpus=float(resources.get("GPU", 0.0)),
        node_types=node_types, max_workers=max_workers, head_gpus=head_gpus,
        gpu_hosts_up=hosts,
    )


class NodeWait:
    """Says, while trials wait for GPU nodes the autoscaler is adding, what is up.

    Called from a Tune callback on every step of Tune's loop; prints a line when the GPUs up
    change and otherwise once every ``every_s`` while no trial has started. The stall watch
    (``--stall-minutes``) counts the wait, so a node that never comes ends the run.
    """

    def __init__(self, wanted_gpus: float, say: Callable[[str], None], every_s: float = 60.0,
                 clock=time.monotonic):
        self.wanted, self.say, self.every_s, self.clock = wanted_gpus, say, every_s, clock
        self.started = clock()
        self.last_said: float | None = None
        self.last_gpus: float | None = None
        self.trial_started = False

    def step(self, gpus_up: Callable[[], float]) -> None:
        if self.trial_started or self.wanted <= 0:
            return
        now = self.clock()
        if self.last_said is not None and now - self.last_said < min(5.0, self.every_s):
            return
        gpus = gpus_up()
        if gpus != self.last_gpus or now - (self.last_said or self.started) >= self.every_s:
            waited = now - self.started
            self.say(f"waiting for GPU nodes: {gpus:g} GPU(s) up, trials ask for "
                     f"{self.wanted:g} ({waited / 60:.1f} min so far; the autoscaler starts "
                     "them, a new cloud node takes minutes)")
            self.last_said, self.last_gpus = now, gpus


class WaitForNodes(Callback):
    """The Tune callback around ``NodeWait``."""

    def __init__(self, wait: NodeWait):
        self.wait = wait

    def __getstate__(self) -> dict:  # not part of the experiment's state
        return {"wait": None}

    def on_step_begin(self, iteration, trials, **info):
        if self.wait is not None:
            import ray

            self.wait.step(lambda: float(ray.cluster_resources().get("GPU", 0.0)))

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.wait is not None:
            self.wait.trial_started = True

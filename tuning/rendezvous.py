"""How the workers of a data-parallel trial find each other without listening beyond loopback.

Ray Train sets a process group up through torch's TCP store, whose server listens on every
interface with no authentication. When all workers of a trial sit on one node (any local
run), ours rendezvous through a file instead (torch's ``FileStore``) and keep gloo's and
NCCL's own sockets on the loopback interface: nothing listens beyond 127.0.0.1. Workers on
several nodes must reach each other over the cluster's private network: then Ray's TCP
rendezvous is used (cluster/README.md says which ports that opens).

This leans on Ray 2.60's private ``_TorchBackend``: the version is pinned in pyproject.toml.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import (
    _set_torch_distributed_env_vars,
    _setup_torch_process_group,
    _TorchBackend,
)

LOOPBACK_INTERFACE = "lo"


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _keep_sockets_on_loopback() -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK_INTERFACE
    os.environ["NCCL_SOCKET_IFNAME"] = LOOPBACK_INTERFACE


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _release_store(path: str) -> None:
    """Once every rank has joined, gloo needs the store no more: rank 0 removes its file."""
    import torch.distributed as dist

    dist.barrier()
    if dist.get_rank() == 0:
        _remove_file(path)


class _LoopbackTorchBackend(_TorchBackend):
    """One per Train run; a restarted worker group gets a new store file.

    The file outlives the process group, and a trial stopped early by the scheduler kills its
    workers before any shutdown hook runs. Gloo
    is done with the store once the group is up, so its file goes at once; NCCL reads it
    again at its first collective, so its file goes at shutdown, when there is one.
    """

    store: str | None = None  # the current group's file, on its workers' node

    def _remove_store(self, worker_group) -> None:
        if self.store is not None:
            worker_group.execute_single(0, _remove_file, self.store)
            self.store = None

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        if len(set(worker_group.execute(_node_id))) > 1:
            super().on_start(worker_group, backend_config)  # peers on other nodes
            return
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
        self._remove_store(worker_group)  # a restarted group's predecessor's, if any
        store = os.path.join(tempfile.gettempdir(), f"ucrn-rendezvous-{uuid.uuid4().hex}")
        self.store = store
        worker_group.execute(_set_torch_distributed_env_vars)
        worker_group.execute(_keep_sockets_on_loopback)
        ray.get([
            worker_group.execute_single_async(
                rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                world_size=len(worker_group), init_method=f"file://{store}",
                timeout_s=backend_config.timeout_s,
            )
            for rank in range(len(worker_group))
        ])
        if backend == "gloo":
            worker_group.execute(_release_store, store)
            self.store = None

    def on_shutdown(self, worker_group, backend_config: TorchConfig) -> None:
        super().on_shutdown(worker_group, backend_config)
        self._remove_store(worker_group)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose single-node process groups rendezvous through a file."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend

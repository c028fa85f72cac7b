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


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        if len(set(worker_group.execute(_node_id))) > 1:
            super().on_start(worker_group, backend_config)  # peers on other nodes
            return
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
        store = os.path.join(tempfile.gettempdir(), f"ucrn-rendezvous-{uuid.uuid4().hex}")
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


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose single-node process groups rendezvous through a file."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend

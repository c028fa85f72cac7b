"""An autoscaling Ray cluster on one machine, all on 127.0.0.1: the GPU cluster's first
contact without a cloud.

    python cluster/fake_autoscaler.py start [--head-cpus 1] [--gpu-nodes 1] [--node-cpus 1]
                                            [--node-gpus 1]
    python cluster/fake_autoscaler.py stop

A head of no GPU whose autoscaler may add ``--gpu-nodes`` worker nodes of ``--node-gpus``
GPUs each (node type ``gpu.node``, ``min_workers: 0``), as ``cluster.yaml`` starts on AWS.
Ray's fake multi-node provider starts those nodes as processes of the head's autoscaler
(``RAY_FAKE_CLUSTER=1``); they declare GPUs they do not have (Ray schedules GPU trials there
and sets ``CUDA_VISIBLE_DEVICES``, torch sees no CUDA). It is the mechanism of Ray's
``AutoscalingCluster`` test helper without its ``ray stop --force``, which would stop every
Ray of the user: everything here runs under a private ``RAY_TMPDIR`` and is stopped by PID,
found by that folder in each process's command line. The head and its autoscaler keep
every address on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and the provider's
``gcs_address``), so the nodes it adds do too. Clients join with ``--address
127.0.0.1:6392``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

STATE = Path(os.environ.get("UCRN_FAKE_AUTOSCALER_STATE", "/tmp/ucrn-fake-autoscaler.json"))
PORT, DASHBOARD_PORT = 6392, 8269
ADDRESS = f"127.0.0.1:{PORT}"
GPU_NODE_TYPE = "gpu.node"
NODE_MEMORY = 1536 * 2**20
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # Ray's own
OBJECT_STORE = 150 * 2**20


def autoscaling_config(gpu_nodes: int, node_cpus: float, node_gpus: float) -> dict:
    """A whole fake_multinode config (Ray's example.yaml is not in the wheel)."""
    return {
        "cluster_name": "ucrn-fake", "max_workers": gpu_nodes, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        # As Ray's own example config: the fake nodes share one address, so the autoscaler
        # tells them (and the head's load) apart by node id; no SSH updater runs on them.
        "provider": {"type": "fake_multinode", "gcs_address": ADDRESS,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            GPU_NODE_TYPE: {
                "resources": {"CPU": node_cpus, "GPU": node_gpus,
                              "object_store_memory": OBJECT_STORE,
                              "accelerator_type:A10G": 1},
                "node_config": {}, "min_workers": 0, "max_workers": gpu_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def start(head_cpus: float, gpu_nodes: int, node_cpus: float, node_gpus: float) -> str:
    """Start the head (its autoscaler adds the GPU nodes); return the address to join."""
    if STATE.exists():
        raise SystemExit(f"{STATE} exists: a fake cluster is up already (stop it first)")
    folder = tempfile.mkdtemp(prefix="ucrn-fa-", dir="/tmp")  # short: Ray's socket paths
    config = Path(folder) / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(gpu_nodes, node_cpus, node_gpus)))
    STATE.write_text(json.dumps({"folder": folder}))
    environment = {**os.environ, "RAY_FAKE_CLUSTER": "1", "RAY_TMPDIR": folder,
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                   "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                   # the head under the id the fake provider knows it by
                   "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
    environment.pop("RAY_ADDRESS", None)
    subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
         "--node-ip-address=127.0.0.1", f"--port={PORT}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={DASHBOARD_PORT}", f"--num-cpus={head_cpus}", "--num-gpus=0",
         f"--autoscaling-config={config}", f"--object-store-memory={OBJECT_STORE}",
         f"--memory={NODE_MEMORY}", "--disable-usage-stats"],
        env=environment, check=True, stdout=subprocess.DEVNULL)
    return ADDRESS


def _processes_of(folder: str) -> list[psutil.Process]:
    """Every process whose command line names ``folder``, and every process they started."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        if folder in " ".join(process.info.get("cmdline") or []):
            found[process.pid] = process
            try:
                found.update({child.pid: child for child in process.children(recursive=True)})
            except psutil.Error:
                pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop() -> None:
    """Stop every process of the fake cluster by PID, then remove its folder."""
    if not STATE.exists():
        return
    folder = json.loads(STATE.read_text())["folder"]
    processes = _processes_of(folder)
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive + _processes_of(folder):
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(folder, ignore_errors=True)
    STATE.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start")
    start_parser.add_argument("--head-cpus", type=float, default=1)
    start_parser.add_argument("--gpu-nodes", type=int, default=1)
    start_parser.add_argument("--node-cpus", type=float, default=1)
    start_parser.add_argument("--node-gpus", type=float, default=1)
    commands.add_parser("stop")
    args = parser.parse_args()
    if args.command == "start":
        print(start(args.head_cpus, args.gpu_nodes, args.node_cpus, args.node_gpus))
    else:
        stop()


if __name__ == "__main__":
    main()

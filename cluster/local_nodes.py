"""Several Ray nodes on one machine, all on 127.0.0.1: a head and N small worker nodes.

    python cluster/local_nodes.py start --workers 1 [--cpus 1] [--head-cpus 1]
    python cluster/local_nodes.py status
    python cluster/local_nodes.py kill worker-1     # one node, by the PIDs it started
    python cluster/local_nodes.py stop              # every node started here, by PID

The search and the evaluator join with ``--address 127.0.0.1:6390``. Ray rewrites
127.0.0.1 to the machine's address when a worker node starts; Ray's CLI is run here with
``ray._private.services.resolve_ip_for_localhost`` replaced by the identity, which keeps
every node on 127.0.0.1. Each node claims little memory (``--object-store-memory``,
``--memory``) so that several fit. The PIDs each ``ray start`` creates are recorded in
``STATE``, so that one node can be killed (the failure tests) and all stopped without
touching any other Ray on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

STATE = Path(os.environ.get("UCRN_NODES_STATE", "/tmp/ucrn-nodes.json"))
PORT, DASHBOARD_PORT = 6390, 8267
NODE_MEMORY = {"--object-store-memory": str(200 * 2**20), "--memory": str(1 * 2**30)}


def run_ray_cli(arguments: list[str]) -> None:
    """Ray's own CLI, with 127.0.0.1 left as it is."""
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *arguments]
    ray_main()


def _processes() -> set[int]:
    return {p.pid for p in psutil.process_iter()}


def _ours(pid: int) -> bool:
    """A process of this cluster: it names this cluster's GCS port."""
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return f":{PORT}" in command or f"port={PORT}" in command


def _start_node(name: str, arguments: list[str], state: dict) -> None:
    before = _processes()
    environment = {**os.environ, "RAY_AUTH_MODE": "token"}
    command = [sys.executable, __file__, "ray", "start", "--node-ip-address=127.0.0.1",
               "--disable-usage-stats", *[f"{k}={v}" for k, v in NODE_MEMORY.items()],
               *arguments]
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # let the daemons settle before telling them apart
    started = sorted(pid for pid in _processes() - before if _ours(pid))
    state[name] = started
    STATE.write_text(json.dumps(state, indent=1))


def start(workers: int, cpus: float, head_cpus: float) -> str:
    """Start the head and ``workers`` worker nodes; return the address to join."""
    if STATE.exists():
        raise SystemExit(f"{STATE} exists: nodes are up already (stop them first)")
    state: dict[str, list[int]] = {}
    _start_node("head", ["--head", f"--port={PORT}", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={DASHBOARD_PORT}", f"--num-cpus={head_cpus}"],
                state)
    for index in range(1, workers + 1):
        _start_node(f"worker-{index}", [f"--address=127.0.0.1:{PORT}",
                                        f"--num-cpus={cpus}"], state)
    return f"127.0.0.1:{PORT}"


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process they started since (the node's Ray workers among them)."""
    found = list(pids)
    for pid in filter(_ours, pids):  # a recorded PID may since belong to another process
        try:
            found += [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return sorted(set(found))


def kill(name: str, sig: int = signal.SIGKILL) -> list[int]:
    """Kill one node as a machine dies: its daemons and the workers they started, at once
    (SIGKILL by default). Workers left alive would go on training until Ray notices."""
    state = json.loads(STATE.read_text())
    pids = _with_descendants(state.pop(name))
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    STATE.write_text(json.dumps(state, indent=1))
    return pids


def stop() -> None:
    """Stop every node started here, workers first, by PID."""
    if not STATE.exists():
        return
    state = json.loads(STATE.read_text())
    state = {name: _with_descendants(pids) for name, pids in state.items()}
    for name in sorted(state, key=lambda n: n == "head"):
        for pid in state[name]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    time.sleep(2.0)
    for pids in state.values():
        for pid in pids:
            if psutil.pid_exists(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    STATE.unlink()
    _forget_as_latest_cluster()


def _forget_as_latest_cluster() -> None:
    """Remove Ray's note that this cluster is the machine's latest, as ``ray stop`` does:
    a plain ``ray.init()`` elsewhere would otherwise dial the stopped head."""
    from ray._private.utils import get_ray_address_file

    note = Path(get_ray_address_file(None))
    if note.exists() and note.read_text().strip() == f"127.0.0.1:{PORT}":
        note.unlink()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "ray":
        run_ray_cli(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start")
    start_parser.add_argument("--workers", type=int, default=1)
    start_parser.add_argument("--cpus", type=float, default=1)
    start_parser.add_argument("--head-cpus", type=float, default=1)
    commands.add_parser("status")
    kill_parser = commands.add_parser("kill")
    kill_parser.add_argument("node")
    commands.add_parser("stop")
    args = parser.parse_args()
    if args.command == "start":
        print(start(args.workers, args.cpus, args.head_cpus))
    elif args.command == "status":
        print(STATE.read_text() if STATE.exists() else "no nodes")
    elif args.command == "kill":
        print(kill(args.node))
    else:
        stop()


if __name__ == "__main__":
    main()

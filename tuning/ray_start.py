"""Starting Ray, or connecting to a running cluster, the way these machines need it.

Facts measured on Ray 2.60 (RAY_NOTES.md): Ray rewrites 127.0.0.1 to the machine's address
unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set and the node address and dashboard host
are given as 127.0.0.1; the dashboard must run, or Train's reserved CPUs leak when a trial is
stopped early. Token authentication is left to Ray's default, which is on: a new local Ray
writes ``~/.ray/auth_token`` and a client that finds the token uses it (setting
``RAY_AUTH_MODE`` here would come too late for a process that imported Ray already).
Ray Train's controller polls its workers every 2 s by default, which kept each finished
trial alive for 5–7 s more; 0.5 s cuts that to 2 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field

from ucrn.errors import UcrnError

LOCALHOST = "127.0.0.1"
DASHBOARD_PORT = 8265  # or the next free port, when another Ray holds it
DASHBOARD_ATTEMPTS = 5
# Set before Ray starts; the Train ones are passed on to the controller and the workers.
RAY_ENVIRONMENT = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's own console output; the search draws its own table
    # Ctrl-C is tuning.progress.Interruption's: Tune's handler made fit() return as if done.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Tune snapshots the experiment after each trial checkpoint when it keeps one per trial
    # (cheap on local storage) and would warn about it every few seconds.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@dataclass
class RaySession:
    address: str  # the GCS address
    dashboard_url: str
    started_here: bool  # True: a local Ray this process started (and stops)
    cpus: float
    gpus: float
    # GCS addresses of other Ray instances on this machine when a local Ray was started:
    # each claims all the CPUs.
    other_local_rays: list[str] = field(default_factory=list)


def prepare_environment() -> None:
    """The environment variables Ray must see before it starts (user settings win)."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def _free_port(preferred: int, attempts: int = 50) -> int:
    """``preferred`` if nothing listens there on 127.0.0.1, else the next free port."""
    for port in range(preferred, preferred + attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {preferred}–{preferred + attempts - 1}")


def _keep_on_localhost() -> None:
    """Stop Ray from replacing 127.0.0.1 by the machine's address (local start only).

    Ray reads this switch when it is imported, so the imported constant is set too; the
    environment variable carries it to the processes Ray starts.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _state_api_named(dashboard_port: int):
    """Tell the processes a local Ray starts in this block where its state API answers.

    Ray Train's placement-group cleaner asks the state API, without an address, whether a
    trial's Train controller still lives. Unnamed, the API is looked up on the machine: in
    the last ``ray start`` cluster's note (stale, or another live cluster) or among the
    running Ray instances (two are too many). The question then fails, the cleaner gives
    up, and a data-parallel trial's workers can keep their CPUs after the trial: the next
    trial waits for ever. Ray's processes inherit the variable when they start; this process
    gets its environment back, so that nothing it starts later (another cluster's nodes)
    inherits an address that is not theirs.
    """
    before = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{LOCALHOST}:{dashboard_port}"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RAY_API_SERVER_ADDRESS"]
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = before


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail with one line, within ``timeout_s``, when nothing answers at a HOST:PORT address
    (Ray itself retries for minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or str(error) or "no answer"
        raise UcrnError(f"--address {address}: no Ray cluster answers there ({reason}); start "
                        "one (ray start --head, or ray up) or leave --address out for a local "
                        "Ray") from None


def start_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
) -> RaySession:
    """Connect to ``address`` (or ``$RAY_ADDRESS``); else start a local Ray on 127.0.0.1 only.

    Reuses a Ray that this process already started or joined.
    """
    prepare_environment()
    import ray
    from ray._private.services import find_gcs_addresses

    others: list[str] = []
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            check_reachable(address)
            if address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
                _keep_on_localhost()  # or Ray dials the machine's address instead
            ray.init(address=address, log_to_driver=False)
        else:
            others = sorted(find_gcs_addresses())
            _start_local_ray(num_cpus, object_store_bytes)
    context = ray.get_runtime_context()
    resources = ray.cluster_resources()
    dashboard = ray._private.worker.get_dashboard_url()
    return RaySession(
        address=context.gcs_address,
        dashboard_url=f"http://{dashboard}" if dashboard else "",
        started_here=not (address or os.environ.get("RAY_ADDRESS")),
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
        other_local_rays=others,
    )


def _start_local_ray(num_cpus: int | None, object_store_bytes: int | None) -> None:
    """A new Ray on 127.0.0.1 with its dashboard on the first free port from 8265.

    Another command starting at the same moment can take the port between the probe and
    Ray's bind; then the next free port is tried.
    """
    import ray

    _keep_on_localhost()
    preferred = DASHBOARD_PORT
    for attempt in range(DASHBOARD_ATTEMPTS):
        dashboard_port = _free_port(preferred)
        try:
            # "local": without it, Ray dials the last `ray start` cluster of this machine
            # (/tmp/ray/ray_current_cluster), even one that has since stopped.
            with _state_api_named(dashboard_port):
                ray.init(
                    address="local", _node_ip_address=LOCALHOST, dashboard_host=LOCALHOST,
                    dashboard_port=dashboard_port, include_dashboard=True,
                    num_cpus=num_cpus,
                    object_store_memory=object_store_bytes, log_to_driver=False,
                )
            return
        except Exception as error:  # noqa: BLE001 - Ray says "occupied" in more than one way
            taken = str(dashboard_port) in str(error) or "dashboard" in str(error).lower()
            if not taken or attempt == DASHBOARD_ATTEMPTS - 1:
                raise
            ray.shutdown()
            preferred = dashboard_port + 1


def sharing_note(session: RaySession) -> str | None:
    """A line for the user when the local Ray just started shares the machine with others."""
    if not session.other_local_rays:
        return None
    others = ", ".join(session.other_local_rays)
    return (f"note: another Ray runs on this machine ({others}); each counts all "
            f"{session.cpus:g} CPUs as its own, so both run slower than planned (give fewer "
            "--max-concurrent, or join it with --address)")

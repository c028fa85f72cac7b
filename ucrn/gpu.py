"""Whether this machine's GPU can run a training run: torch's CUDA, the driver, the memory.

The two failures a GPU node meets first get one line each, naming the node, torch's CUDA
version, the driver's and the fix: a torch that cannot use the GPU (a CPU build, or a CUDA
build newer than the driver), and runs packed on one GPU that cannot fit its memory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch

from ucrn.errors import UcrnError
from ucrn.footprint import packing_problem

DRIVER_FILE = Path("/proc/driver/nvidia/version")
WHEEL_INDEX = "https://download.pytorch.org/whl/"


def driver_version() -> str | None:
    """The NVIDIA driver's version on this machine, or None when there is none."""
    if shutil.which("nvidia-smi"):
        try:
            found = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False).stdout.split()
        except (OSError, subprocess.SubprocessError):
            found = []
        if found:
            return found[0]
    try:
        words = DRIVER_FILE.read_text().split()
    except OSError:
        return None
    numbers = [w for w in words if w.count(".") >= 1 and w.replace(".", "").isdigit()]
    return numbers[0] if numbers else None


def check_gpu_usable(where: str) -> None:
    """Raise ``UcrnError`` in one line unless torch can use a GPU here (``where``: the node)."""
    if torch.cuda.is_available():
        return
    cuda = torch.version.cuda
    driver = driver_version()
    built = f"torch {torch.__version__} built for CUDA {cuda}" if cuda else \
        f"torch {torch.__version__} is a CPU-only build"
    seen = f"NVIDIA driver {driver}" if driver else "no NVIDIA driver found"
    if not cuda:
        fix = ("install torch's CUDA build on the GPU nodes (cluster.yaml's "
               f"worker_setup_commands: pip install torch --index-url {WHEEL_INDEX}cuXYZ)")
    elif driver:
        fix = (f"install a torch built for a CUDA this driver supports ({WHEEL_INDEX}cuXYZ, "
               "see nvidia-smi's 'CUDA Version'), or use an AMI with a newer driver")
    else:
        fix = "use a GPU image with the NVIDIA driver (cluster.yaml's ImageId)"
    raise UcrnError(f"{where} was given a GPU that torch cannot use: {built}, {seen}; {fix}")


def check_fits_gpu(need_bytes: int, sharing: int, where: str,
                   device: torch.device | None = None) -> None:
    """Raise ``UcrnError`` in one line unless ``sharing`` runs of ``need_bytes`` each fit
    this GPU's memory."""
    _, total = torch.cuda.mem_get_info(device)
    problem = packing_problem(need_bytes, sharing, total)
    if problem:
        raise UcrnError(f"{where}, its GPU: {problem}")

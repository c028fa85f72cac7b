"""Wall time and peak memory of converting a MOSEI-size MulT pickle to our HDF5 layout.

    python benchmarks/convert_speed.py [--scale 1.0] [--keep DIR]

Writes a pickle in MulT's layout with CMU-MOSEI's sizes (16,326 / 1,871 / 4,659 segments,
T = 50, dims 300 / 74 / 35, float32, some audio -inf), then converts it in a fresh process
(``ucrn data convert mult-pkl``) and reports that process's wall time and peak resident
memory next to the size of the data.
"""

from __future__ import annotations

import argparse
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COUNTS = {"train": 16326, "valid": 1871, "test": 4659}
DIMS = {"text": 300, "audio": 74, "vision": 35}
STEPS = 50


def make_pickle(path: Path, scale: float) -> int:
    """Write the pickle; return the bytes of feature data it holds."""
    rng = np.random.default_rng(0)
    data, total = {}, 0
    for split, count in COUNTS.items():
        count = max(1, round(count * scale))
        arrays = {key: rng.standard_normal((count, STEPS, dim), dtype=np.float32)
                  for key, dim in DIMS.items()}
        arrays["audio"][rng.random(arrays["audio"].shape) < 1e-3] = -np.inf
        arrays["labels"] = rng.uniform(-3, 3, (count, 1, 1)).astype(np.float32)
        arrays["id"] = np.array([[f"v{i}".encode(), b"0.0", b"1.0"] for i in range(count)])
        total += sum(arrays[key].nbytes for key in DIMS)
        data[split] = arrays
    with path.open("wb") as file:
        pickle.dump(data, file, protocol=4)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source, output = Path(folder) / "mosei_senti_data.pkl", Path(folder) / "mosei.h5"
        data_bytes = make_pickle(source, args.scale)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ucrn.cli", "data", "convert", "mult-pkl",
                        str(source), "-o", str(output)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        pickle_size, output_size = source.stat().st_size, output.stat().st_size
    gib = 2**30
    print(f"MOSEI-size MulT pickle ({sum(COUNTS.values()) * args.scale:,.0f} segments, T=50, "
          f"300/74/35): features {data_bytes / gib:.2f} GiB, pickle {pickle_size / gib:.2f} "
          f"GiB, output {output_size / gib:.2f} GiB")
    print(f"conversion: {wall:.1f} s wall, peak RSS {peak / gib:.2f} GiB "
          f"({peak / data_bytes:.2f}× the feature data)")


if __name__ == "__main__":
    main()

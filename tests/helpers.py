"""Helpers the test files share (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def small_arrays(count: int = 6, steps: int = 4, dims=(3, 2, 2), seed: int = 0) -> dict:
    """One split's arrays in our layout, small enough to write by hand."""
    rng = np.random.default_rng(seed)
    arrays = {
        m: rng.normal(size=(count, steps, d)).astype(np.float32)
        for m, d in zip("lav", dims, strict=True)
    }
    arrays["labels"] = rng.uniform(-3, 3, size=count).astype(np.float32)
    arrays["ids"] = np.array([f"video{i}[1]" for i in range(count)], dtype=object)
    return arrays


def one_error_line(capsys, program: str) -> str:
    """The command's stderr: one line, ``PROGRAM: error: …``, and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{program}: error: "), lines[0]
    return lines[0]


def fails_before_ray(capsys, main: Callable[[list[str]], int], program: str, *args: str) -> str:
    """Run a command's ``main``; it must exit 2 with one line, starting no Ray."""
    import ray

    was_running = ray.is_initialized()
    assert main(list(args)) == 2
    assert ray.is_initialized() == was_running  # no Ray was started for a bad input
    return one_error_line(capsys, program)

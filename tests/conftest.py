"""Shared fixtures: tiny data files made in the test session, never large or downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import small_arrays

from ucrn.data.layout import write_dataset
from ucrn.data.synthetic import synthesize

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The folder of reference files: ``../shared/data`` beside the checkout, else the
    byte-identical copies in ``tests/fixtures``."""
    if (SHARED_DATA / "metric_vectors.json").exists():
        return SHARED_DATA
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_mosi(tmp_path_factory) -> Path:
    """Synthetic MOSI at 5 % size: 64 / 11 / 34 samples."""
    return synthesize("mosi", tmp_path_factory.mktemp("data") / "mosi.h5", scale=0.05, seed=1)


@pytest.fixture(scope="session")
def tiny_mosei(tmp_path_factory) -> Path:
    """Synthetic MOSEI (sentiment and six emotions) at 0.4 % size."""
    return synthesize("mosei", tmp_path_factory.mktemp("data") / "mosei.h5", scale=0.004, seed=1)


@pytest.fixture
def write_small(tmp_path):
    """Write a small file in our layout, after letting the test spoil its arrays."""

    def write(spoil=None, name: str = "small.h5", **attrs) -> Path:
        splits = {split: small_arrays(seed=i) for i, split in enumerate(("train", "valid", "test"))}
        if spoil is not None:
            spoil(splits)
        return write_dataset(tmp_path / name, splits, name="small", **attrs)

    return write


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, started the way the commands start it."""
    import ray

    from tuning.ray_start import start_ray

    session = start_ray(num_cpus=2, object_store_bytes=400 * 2**20)
    yield session
    ray.shutdown()
